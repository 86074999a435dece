// Package console is Lifeboat's web console: server-rendered pages over the control
// plane's API, embedded in the binary and working without internet access.
//
// Security design (docs/security.md, "The console"):
//   - A user signs in with an API token. The console checks it by calling the API's
//     whoami in-process, keeps it server-side in a session held in memory (bounded,
//     with an idle and an absolute expiry) and gives the browser only a random session
//     id in a __Host- cookie (HttpOnly, Secure, SameSite=Strict).
//   - Every page and action calls the control plane's own API handler in-process with
//     the session's token (api.Client over an in-process transport), so the console
//     has exactly the API's authorization: a viewer's forged POST is refused by the
//     API with 403, whatever the page showed.
//   - Every form carries the session's CSRF token, checked on every POST (the sign-in
//     form a pre-session one); POSTs from another origin are refused.
//   - Pages are html/template (contextual escaping) under a strict Content Security
//     Policy: scripts and styles only from the console's own embedded files.
package console

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

//go:embed templates/*.html static/*
var files embed.FS

// Prefix is the path the console is served under.
const Prefix = "/console/"

// Config configures a console.
type Config struct {
	// API is the control plane's HTTP handler; the console calls it in-process.
	API http.Handler
	// Logger receives the console's logs; nil: discard.
	Logger *slog.Logger
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Version is shown in the page footer.
	Version string
	// MaxSessions bounds the sessions held at once (default 1024); past it, signing
	// in ends the least recently used session.
	MaxSessions int
	// IdleTimeout ends a session unused this long (default 1 hour); SessionLifetime
	// ends any session this long after sign-in (default 12 hours).
	IdleTimeout, SessionLifetime time.Duration
}

// Console serves the console's pages. It is an http.Handler for Prefix.
type Console struct {
	cfg      Config
	log      *slog.Logger
	api      http.Handler
	sessions *sessions
	pages    map[string]*page
	static   map[string]staticFile
	mux      *http.ServeMux
}

type staticFile struct {
	data        []byte
	contentType string
	etag        string
}

// New builds a console.
func New(cfg Config) (*Console, error) {
	if cfg.API == nil {
		return nil, fmt.Errorf("the console needs the control plane's API handler")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 1024
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = time.Hour
	}
	if cfg.SessionLifetime <= 0 {
		cfg.SessionLifetime = 12 * time.Hour
	}
	c := &Console{cfg: cfg, log: cfg.Logger, api: cfg.API,
		sessions: newSessions(cfg.MaxSessions, cfg.IdleTimeout, cfg.SessionLifetime, cfg.Now)}
	var err error
	if c.pages, err = loadPages(); err != nil {
		return nil, err
	}
	if c.static, err = loadStatic(); err != nil {
		return nil, err
	}
	c.mux = c.routes()
	return c, nil
}

func loadStatic() (map[string]staticFile, error) {
	out := map[string]staticFile{}
	entries, err := fs.ReadDir(files, "static")
	if err != nil {
		return nil, fmt.Errorf("read the console's static files: %w", err)
	}
	types := map[string]string{".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
	for _, e := range entries {
		data, err := files.ReadFile("static/" + e.Name())
		if err != nil {
			return nil, fmt.Errorf("read the console's static file %s: %w", e.Name(), err)
		}
		ct := "application/octet-stream"
		if i := strings.LastIndexByte(e.Name(), '.'); i >= 0 && types[e.Name()[i:]] != "" {
			ct = types[e.Name()[i:]]
		}
		sum := sha256.Sum256(data)
		out[e.Name()] = staticFile{data: data, contentType: ct, etag: hex.EncodeToString(sum[:8])}
	}
	return out, nil
}

// staticURL is the path of a static file, with its content's hash so that browsers
// may keep it for long and still get a new version at once.
func (c *Console) staticURL(name string) string {
	return Prefix + "static/" + name + "?v=" + c.static[name].etag
}

// routes is every page and action of the console.
func (c *Console) routes() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /console/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix+"servers", http.StatusSeeOther)
	})
	m.HandleFunc("GET /console/static/{name}", c.serveStatic)
	m.HandleFunc("GET /console/sign-in", c.signInPage)
	m.HandleFunc("POST /console/sign-in", c.signIn)
	m.HandleFunc("POST /console/sign-out", c.signedIn(c.signOut))
	m.HandleFunc("GET /console/events", c.signedIn(c.events))

	m.HandleFunc("GET /console/servers", c.signedIn(c.serversPage))
	m.HandleFunc("GET /console/servers/{id}", c.signedIn(c.serverPage))
	m.HandleFunc("POST /console/servers/{id}/replication/{action}", c.signedIn(c.replicationAction))
	m.HandleFunc("POST /console/servers/{id}/snapshot", c.signedIn(c.snapshotNow))
	m.HandleFunc("POST /console/servers/{id}/launch", c.signedIn(c.launch))
	m.HandleFunc("POST /console/servers/{id}/disconnect", c.signedIn(c.disconnect))
	m.HandleFunc("POST /console/servers/{id}/lock", c.signedIn(c.lockPIT))
	m.HandleFunc("POST /console/servers/{id}/replication-settings", c.signedIn(c.saveReplicationSettings))
	m.HandleFunc("POST /console/servers/{id}/launch-settings", c.signedIn(c.saveLaunchSettings))

	m.HandleFunc("GET /console/jobs", c.signedIn(c.jobsPage))
	m.HandleFunc("GET /console/jobs/{id}", c.signedIn(c.jobPage))

	m.HandleFunc("GET /console/instances", c.signedIn(c.instancesPage))
	m.HandleFunc("POST /console/instances/{id}/{action}", c.signedIn(c.instanceAction))

	m.HandleFunc("GET /console/plans", c.signedIn(c.plansPage))
	m.HandleFunc("GET /console/plans/{name}", c.signedIn(c.planPage))
	m.HandleFunc("POST /console/plans/{name}/drill", c.signedIn(c.planDrill))
	m.HandleFunc("GET /console/plan-runs/{id}", c.signedIn(c.planRunPage))
	m.HandleFunc("GET /console/plan-runs/{id}/report", c.signedIn(c.planRunReport))

	m.HandleFunc("GET /console/groups", c.signedIn(c.groupsPage))
	m.HandleFunc("GET /console/groups/{id}", c.signedIn(c.groupPage))
	m.HandleFunc("GET /console/replicators", c.signedIn(c.replicatorsPage))
	m.HandleFunc("GET /console/tokens", c.signedIn(c.tokensPage))
	m.HandleFunc("POST /console/tokens", c.signedIn(c.createToken))
	m.HandleFunc("POST /console/tokens/{id}/revoke", c.signedIn(c.revokeToken))
	m.HandleFunc("GET /console/audit", c.signedIn(c.auditPage))
	return m
}

// ServeHTTP serves the console under Prefix, with its security headers.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "+
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	if r.Method == http.MethodPost && !sameOrigin(r) {
		c.fail(w, r, nil, http.StatusForbidden, "this form was sent from another site: open the console and send it from there")
		return
	}
	if _, pattern := c.mux.Handler(r); pattern == "" {
		h, _ := c.mux.Handler(r)
		rec := &statusOnly{header: http.Header{}}
		h.ServeHTTP(rec, r)
		if rec.status == http.StatusMethodNotAllowed {
			c.fail(w, r, nil, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed on %s", r.Method, r.URL.Path))
			return
		}
		c.fail(w, r, nil, http.StatusNotFound, "there is no console page "+r.URL.Path)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// sameOrigin refuses cross-site POSTs by the headers browsers send: Sec-Fetch-Site
// when present, else Origin (the CSRF token is checked as well).
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin" || s == "none"
	}
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		return strings.TrimPrefix(strings.TrimPrefix(o, "https://"), "http://") == r.Host
	}
	return true
}

// statusOnly captures what the mux would answer for an unmatched request.
type statusOnly struct {
	header http.Header
	status int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusOnly) WriteHeader(code int)        { s.status = code }

func (c *Console) serveStatic(w http.ResponseWriter, r *http.Request) {
	f, ok := c.static[r.PathValue("name")]
	if !ok {
		c.fail(w, r, nil, http.StatusNotFound, "there is no console file "+r.URL.Path)
		return
	}
	w.Header().Set("Content-Type", f.contentType)
	w.Header().Set("ETag", `"`+f.etag+`"`)
	w.Header().Set("Cache-Control", "public, max-age=86400")
	if r.Header.Get("If-None-Match") == `"`+f.etag+`"` {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(f.data)
}

// remoteKey carries the browser's address to the in-process API calls, so that they
// count against it as the browser's own calls would.
type remoteKey struct{}

func withRemote(r *http.Request) context.Context {
	return context.WithValue(r.Context(), remoteKey{}, r.RemoteAddr)
}
