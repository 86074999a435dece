package controlplane

import (
	_ "embed"
	"net/http"
)

// consoleHTML is a minimal read-only console: one page that lists the source servers
// and their replication states through the API, with the token the user pastes. The
// real console comes later.
//
//go:embed console.html
var consoleHTML []byte

func (cp *ControlPlane) console(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(consoleHTML)
}
