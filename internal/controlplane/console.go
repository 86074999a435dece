package controlplane

import (
	"fmt"
	"net/http"

	"github.com/lifeboat-dr/lifeboat/internal/console"
)

// mountConsole serves the web console (internal/console) under /console/, and sends
// the root there. The console calls this control plane's own handler in-process with
// the signed-in user's token, so it has exactly the API's authorization.
func (cp *ControlPlane) mountConsole(mux *http.ServeMux) error {
	con, err := console.New(console.Config{
		API:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { cp.handler.ServeHTTP(w, r) }),
		Logger:  cp.log.With("part", "console"),
		Now:     cp.cfg.Now,
		Version: cp.cfg.Version,
	})
	if err != nil {
		return fmt.Errorf("build the console: %w", err)
	}
	mux.Handle(console.Prefix, con)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, console.Prefix, http.StatusSeeOther)
	})
	return nil
}
