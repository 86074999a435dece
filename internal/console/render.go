package console

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// page is one page's templates: the layout and the page's own content.
type page struct{ t *template.Template }

// pageData is what every page's template gets.
type pageData struct {
	Title   string
	Nav     string // the section the page belongs to
	User    *userView
	CSRF    string
	Flash   string
	Watch   string // ids whose events refresh the page's live parts
	CSS, JS string
	Icon    string
	Version string
	Data    any
}

type userView struct {
	TokenID, Role, AccountID string
}

// Can reports whether the signed-in user's role includes role: what the page offers.
// The API decides what is done.
func (p pageData) Can(role string) bool {
	return p.User != nil && api.Role(p.User.Role).Level() >= api.Role(role).Level()
}

func loadPages() (map[string]*page, error) {
	names, err := fs.Glob(files, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("list the console's templates: %w", err)
	}
	out := map[string]*page{}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(files, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("parse the console template %s: %w", n, err)
		}
		out[base] = &page{t: t}
	}
	return out, nil
}

// render writes a page. It renders into a buffer first, so a template error becomes a
// clean 500 instead of half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, s *session, status int, name, title string, data any) {
	p, ok := c.pages[name]
	if !ok {
		c.log.Error("console page has no template", "page", name)
		http.Error(w, "the console has no page "+name, http.StatusInternalServerError)
		return
	}
	d := pageData{Title: title, Nav: navOf(name), CSS: c.staticURL("console.css"), JS: c.staticURL("console.js"),
		Icon:    c.staticURL("favicon.svg"),
		Version: c.cfg.Version, Data: data}
	if s != nil {
		d.User = &userView{TokenID: s.who.ID, Role: string(s.who.Role), AccountID: s.who.AccountID}
		d.CSRF = s.csrf
		d.Flash = s.takeFlash()
	}
	if wd, ok := data.(interface{ watch() string }); ok {
		d.Watch = wd.watch()
	}
	var buf bytes.Buffer
	if err := p.t.ExecuteTemplate(&buf, "layout", d); err != nil {
		c.log.Error("console page failed to render", "page", name, "path", r.URL.Path, "err", err)
		http.Error(w, "the console failed to render this page; the control plane's log has the details", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

func navOf(page string) string {
	switch {
	case strings.HasPrefix(page, "server"):
		return "servers"
	case strings.HasPrefix(page, "job"):
		return "jobs"
	case strings.HasPrefix(page, "plan"):
		return "plans"
	case strings.HasPrefix(page, "group"):
		return "groups"
	}
	return page
}

type errorData struct {
	Status  int
	Message string
}

// fail shows an error page with the status.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, s *session, status int, msg string) {
	c.render(w, r, s, status, "error", http.StatusText(status), errorData{Status: status, Message: msg})
}

// apiFailed shows what the API answered: its status and its message, worded for
// operators. A refused token (revoked, expired) ends the session.
func (c *Console) apiFailed(w http.ResponseWriter, r *http.Request, s *session, err error) {
	var ae *api.Error
	if errors.As(err, &ae) {
		if ae.Status == http.StatusUnauthorized && s != nil {
			c.sessions.remove(s)
			clearCookie(w, sessionCookie)
			c.fail(w, r, nil, http.StatusUnauthorized, ae.Message+" (you were signed out)")
			return
		}
		c.fail(w, r, s, ae.Status, ae.Message)
		return
	}
	c.log.Error("console call to the API failed", "path", r.URL.Path, "err", err)
	c.fail(w, r, s, http.StatusInternalServerError, "the console could not get an answer from the API; the control plane's log has the details")
}

// done ends an action: a message for the next page, and back to a page.
func done(w http.ResponseWriter, r *http.Request, s *session, to, msg string) {
	s.setFlash(msg)
	http.Redirect(w, r, to, http.StatusSeeOther)
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

var funcs = template.FuncMap{
	"bytes":    fmtBytes,
	"when":     fmtTime,
	"whenp":    func(t *time.Time) string { return fmtTimePtr(t) },
	"secs":     fmtSecs,
	"pct":      func(p *float64) string { return fmtPct(p) },
	"rate":     func(b int64) string { return fmtBytes(b) + "/s" },
	"lower":    strings.ToLower,
	"stateCls": stateClass,
	"tags":     fmtTags,
	"path":     url.PathEscape,
	"query":    url.QueryEscape,
	"inc":      func(i int) int { return i + 1 },
	"deref":    func(p *float64) float64 { return derefF(p) },
	"int":      strconv.Itoa,
	"states":   func() []string { return api.DataReplicationStates },
	"short":    func(s string, n int) string { return shorten(s, n) },
	"list":     func(s ...string) []string { return s },
	"deref2":   func(p *string) string { return derefS(p) },
}

func fmtBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	v := float64(n) / 1024
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return "—"
	}
	return fmtTime(*t)
}

func fmtSecs(p *float64) string {
	if p == nil {
		return "—"
	}
	v := *p
	switch {
	case v < 10:
		return fmt.Sprintf("%.1f s", v)
	case v < 120:
		return fmt.Sprintf("%.0f s", v)
	case v < 7200:
		return fmt.Sprintf("%.0f min", v/60)
	}
	return fmt.Sprintf("%.1f h", v/3600)
}

func fmtPct(p *float64) string {
	if p == nil {
		return ""
	}
	return fmt.Sprintf("%.0f%%", *p)
}

func derefF(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

func fmtTags(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, " ")
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// stateClass is the CSS class of a state's badge: good, busy, warn or bad.
func stateClass(state string) string {
	switch state {
	case api.StateContinuous, api.InstanceRunning, api.LaunchLaunched, api.JobCompleted, api.ReplicatorLive,
		api.PlanRunSucceeded, api.PlanStepDone, "COMPLETE":
		return "good"
	case api.StateStalled, api.StateDisconnected, api.LaunchFailed, api.ReplicatorLost: // FAILED: launches, steps, runs, points
		return "bad"
	case api.StatePaused, api.StateStopped, api.InstanceTerminated, api.StateBacklog, api.StateRescan, api.PlanStepSkipped:
		return "warn"
	}
	return "busy"
}

// spark is a sparkline: an inline SVG polyline of recent values, oldest first.
type spark struct {
	Label   string
	Points  string // the polyline's points, in a 120×28 box
	Last    string
	Max     string
	Samples int
}

const sparkW, sparkH = 120.0, 28.0

// newSpark scales values (oldest first) into the box; format says how to print them.
func newSpark(label string, values []float64, format func(float64) string) spark {
	sp := spark{Label: label, Samples: len(values)}
	if len(values) == 0 {
		return sp
	}
	hi := 0.0
	for _, v := range values {
		hi = math.Max(hi, v)
	}
	var b strings.Builder
	for i, v := range values {
		x := sparkW
		if len(values) > 1 {
			x = sparkW * float64(i) / float64(len(values)-1)
		}
		y := sparkH - 1
		if hi > 0 {
			y = (sparkH - 2) * (1 - v/hi)
			y++
		}
		fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
	}
	sp.Points = strings.TrimSpace(b.String())
	sp.Last, sp.Max = format(values[len(values)-1]), format(hi)
	return sp
}

func derefS(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
