package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// browser is a headless Chromium driving the console of a cluster, with every
// JavaScript error and exception it saw.
type browser struct {
	t      *testing.T
	c      *cluster
	ctx    context.Context
	shots  string
	mu     sync.Mutex
	errors []string
}

// newBrowser starts Chromium (Debian package chromium) for the test, bounded to
// limit; it is closed when the test ends.
func newBrowser(t *testing.T, c *cluster, limit time.Duration) *browser {
	t.Helper()
	exe := testutil.RequireCommand(t, "chromium", "chromium")
	bound, cancelBound := context.WithTimeout(context.Background(), limit)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe),
		chromedp.NoSandbox, // root in CI
		// The control plane's certificate comes from its own CA, which this throwaway
		// profile does not trust; the console's cookies still need HTTPS.
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1366, 900), chromedp.UserDataDir(t.TempDir()))
	alloc, cancelAlloc := chromedp.NewExecAllocator(bound, opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc, chromedp.WithLogf(t.Logf))
	b := &browser{t: t, c: c, ctx: ctx, shots: os.Getenv("LIFEBOAT_TEST_SCREENSHOTS")}
	if b.shots == "" {
		b.shots = t.ArtifactDir()
	}
	t.Cleanup(func() {
		closeCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
		if err := chromedp.Cancel(closeCtx); err != nil {
			t.Logf("closing Chromium: %v", err)
		}
		cancel()
		cancelCtx()
		cancelAlloc()
		cancelBound()
	})
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				b.mu.Lock()
				b.errors = append(b.errors, fmt.Sprintf("%s (%s:%d)", m.Text, m.URL, m.Line))
				b.mu.Unlock()
			}
		}
	}()
	t.Logf("screenshots of the console go to %s", b.shots)
	return b
}

// do runs actions within timeout.
func (b *browser) do(timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v\n%s", err, b.c.logs())
	}
}

// eval evaluates a JavaScript expression in the page.
func evalIn[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// open goes to a console page and waits for an element of it.
func (b *browser) open(path, waitFor string) {
	b.t.Helper()
	b.do(30*time.Second, chromedp.Navigate(b.c.url+path), chromedp.WaitVisible(chromedp.CSS(waitFor)))
}

// waitText waits, without reloading (the page updates itself), until the text of sel
// satisfies ok.
func (b *browser) waitText(sel string, timeout time.Duration, ok func(string) bool) string {
	b.t.Helper()
	var text string
	for deadline := time.Now().Add(timeout); ; time.Sleep(300 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		got, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		cancel()
		if err == nil {
			text = strings.TrimSpace(got)
			if ok(text) {
				return text
			}
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s still says %q after %s (%v)\n%s", sel, text, timeout, err, b.c.logs())
		}
	}
}

// waitJob waits until the job of the job page the browser shows has completed (by the
// API), then until the page, without a reload, says so.
func (b *browser) waitJob(timeout time.Duration) {
	b.t.Helper()
	id := strings.TrimPrefix(evalIn[string](b, `document.querySelector('main h1').textContent`), "Job ")
	var job api.Job
	var err error
	for deadline := time.Now().Add(timeout); ; time.Sleep(250 * time.Millisecond) {
		if job, err = b.c.admin.Job(context.Background(), id); err == nil && job.Status == api.JobCompleted {
			break
		}
		if time.Now().After(deadline) {
			log, _ := b.c.admin.JobLog(context.Background(), id, 0, "")
			b.t.Fatalf("job %s is %s after %s (%v): %+v\nlog: %+v", id, job.Status, timeout, err, job.Servers, log.Items)
		}
	}
	b.waitText("#job-state", 15*time.Second, func(s string) bool { return s == api.JobCompleted })
}

// shot writes a screenshot of the whole page as NAME.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

// signIn signs in with an API token through the sign-in form.
func (b *browser) signIn(token string) {
	b.t.Helper()
	b.open("/console/", "#token")
	b.do(30*time.Second, chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("form.signin button")),
		chromedp.WaitVisible(chromedp.CSS("#servers")))
}

// session is the browser's console session cookie and the page's CSRF token.
func (b *browser) session() (cookie, csrf string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{b.c.url + "/console/"}})
	if err != nil {
		b.t.Fatal(err)
	}
	for _, ck := range res.Cookies {
		if ck.Name == "__Host-lifeboat-session" {
			if !ck.HTTPOnly || !ck.Secure || string(ck.SameSite) != "Strict" {
				b.t.Fatalf("the session cookie is not HttpOnly, Secure and SameSite=Strict: %+v", ck)
			}
			cookie = ck.Value
		}
	}
	if cookie == "" {
		b.t.Fatal("the browser holds no console session cookie")
	}
	return cookie, evalIn[string](b, `document.querySelector('input[name="csrf"]').value`)
}

// post sends a form to the console from outside the browser, with a session's cookie.
func (c *cluster) consolePost(path, cookie string, form url.Values) (int, string) {
	c.t.Helper()
	ca, err := os.ReadFile(filepath.Join(c.dir, "cp", "pki", "ca.crt"))
	if err != nil {
		c.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequest("POST", c.url+path, strings.NewReader(form.Encode()))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "__Host-lifeboat-session", Value: cookie})
	resp, err := hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (c *cluster) adminToken() string {
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, "LIFEBOAT_TOKEN="); ok {
			return v
		}
	}
	c.t.Fatal("the cluster has no admin token")
	return ""
}

func (c *cluster) auditCount(action string) int {
	c.t.Helper()
	list, err := c.admin.Audit(context.Background(), api.AuditFilter{Action: action, Limit: 1000})
	if err != nil {
		c.t.Fatal(err)
	}
	return len(list.Items)
}

// TestConsoleInABrowser drives the console with a real headless Chromium: sign in,
// watch a replicating server become ready, set its launch settings, take a snapshot
// and see it appear, lock it, start a drill and watch its log complete, terminate it; a viewer
// sees no action and a forged POST with its session is refused, as is a POST without
// the CSRF token; no page logs a JavaScript error. Each page's screenshot is written
// to the test's artifact directory (go test -artifacts), or $LIFEBOAT_TEST_SCREENSHOTS.
func TestConsoleInABrowser(t *testing.T) {
	testutil.RequireCommand(t, "chromium", "chromium")
	dev, _ := testutil.LoopDevice(t, 64<<20)
	testutil.MkfsExt4(t, dev)
	c := newCluster(t)
	c.installAgent(dev)
	b := newBrowser(t, c, 8*time.Minute)
	page := "/console/servers/" + c.agentID

	b.signIn(c.adminToken())
	b.shot("01-servers")
	b.open(page, "#ready")
	c.startAgent()
	b.waitText("#ready", 2*time.Minute, func(s string) bool { return s == "ready for recovery" })
	b.waitText("#state", 30*time.Second, func(s string) bool { return s == api.StateContinuous })
	b.shot("02-server-ready")

	consoleSnapshotAndDrill(t, c, b)
	for i, p := range []struct{ path, wait string }{{"/console/servers", "#servers"}, {"/console/jobs", "#jobs"},
		{"/console/plans", "#plans"}, {"/console/groups", "#groups"}, {"/console/replicators", "#replicator-table"},
		{"/console/tokens", "#tokens"}, {"/console/audit", "#audit"}} {
		b.open(p.path, p.wait)
		b.shot(fmt.Sprintf("%02d-%s", 6+i, strings.TrimPrefix(p.path, "/console/")))
	}
	consoleRefusals(t, c, b, page)

	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errors) > 0 {
		t.Fatalf("the console's pages logged JavaScript errors:\n%s", strings.Join(b.errors, "\n"))
	}
}

// consoleSnapshotAndDrill, on the server page: sets the launch settings through the
// form, takes a snapshot and sees it appear, starts a drill and follows its job to the
// end, then terminates the drill's instance from the recovery instances page.
func consoleSnapshotAndDrill(t *testing.T, c *cluster, b *browser) {
	// The image provider keeps the drill cheap.
	b.do(30*time.Second, chromedp.SetValue(chromedp.CSS("#ls-prov"), api.ProviderImage), chromedp.SetValue(chromedp.CSS("#ls-cpus"), "1"),
		chromedp.SetValue(chromedp.CSS("#ls-mem"), "512"), chromedp.Click(chromedp.CSS("#save-launch-settings")))
	b.waitText(".flash", 30*time.Second, func(s string) bool { return strings.Contains(s, "Launch settings saved") })
	ls, err := c.admin.LaunchSettings(context.Background(), c.agentID)
	if err != nil || ls.Settings.Provider != api.ProviderImage || ls.Settings.MemoryMiB != 512 {
		t.Fatalf("launch settings after the form: %+v (%v)", ls.Settings, err)
	}

	// Snapshot now: the request is the admin's, and a PIT taken after it appears
	// without a reload.
	asked := time.Now().UTC().Truncate(time.Second)
	b.do(30*time.Second, chromedp.Click(chromedp.CSS("#snapshot-now")))
	b.waitText(".flash", 30*time.Second, func(s string) bool { return strings.Contains(s, "consistency point was asked for") })
	if n := c.auditCount("source-server.snapshot-request"); n != 1 {
		t.Fatalf("%d snapshot requests audited after the click, want 1", n)
	}
	b.waitText("#pit-table tbody tr td", time.Minute, func(s string) bool {
		at, err := time.Parse("2006-01-02 15:04:05 UTC", s)
		return err == nil && !at.Before(asked)
	})
	b.shot("03-server-snapshot")

	// Lock that point for a week from the timeline's form.
	pit := evalIn[string](b, `document.querySelector('#lk-pit').value`)
	b.do(30*time.Second, chromedp.SetValue(chromedp.CSS("#lk-days"), "7"), chromedp.Click(chromedp.CSS("#lock-pit")))
	b.waitText(".flash", 30*time.Second, func(s string) bool { return strings.Contains(s, pit+" is locked until") })
	if snap, err := c.admin.RecoverySnapshot(context.Background(), pit); err != nil || snap.LockUntil == nil || time.Until(*snap.LockUntil) < 6*24*time.Hour {
		t.Fatalf("PIT %s after the lock form: %+v (%v)", pit, snap.LockUntil, err)
	}

	// A drill from the page; its job page follows the log until the job completes.
	b.do(30*time.Second, chromedp.Click(chromedp.CSS("#start-launch")), chromedp.WaitVisible(chromedp.CSS("#job-state")))
	b.waitJob(3 * time.Minute)
	logText := b.waitText("#log", 30*time.Second, func(s string) bool { return strings.Contains(s, api.EventJobEnd) })
	if !strings.Contains(logText, api.EventLaunchEnd) {
		t.Fatalf("the drill's log shows no %s:\n%s", api.EventLaunchEnd, logText)
	}
	b.waitText("#job-status tbody", 10*time.Second, func(s string) bool { return strings.Contains(s, api.LaunchLaunched) })
	b.shot("04-drill-job")

	b.open("/console/instances", "button.terminate")
	b.shot("05-instances")
	b.do(30*time.Second, chromedp.Click(chromedp.CSS("button.terminate")), chromedp.WaitVisible(chromedp.CSS("#job-state")))
	b.waitJob(2 * time.Minute)
	b.open("/console/instances", "#instance-table")
	if n := evalIn[int](b, `document.querySelectorAll('tr[data-instance]').length`); n != 0 {
		t.Fatalf("%d recovery instances still listed after the terminate job", n)
	}
}

// consoleRefusals: a POST without the CSRF token (the admin's own session) is
// refused; a viewer's pages offer no action, and its forged POST is refused by the API.
func consoleRefusals(t *testing.T, c *cluster, b *browser, page string) {
	b.open(page, "#snapshot-now")
	adminCookie, _ := b.session()
	before := c.auditCount("source-server.snapshot-request")
	if code, body := c.consolePost(page+"/snapshot", adminCookie, url.Values{}); code != http.StatusForbidden || !strings.Contains(body, "CSRF") {
		t.Fatalf("a POST without the CSRF token answered %d:\n%.300s", code, body)
	}

	viewer, err := c.admin.CreateToken(context.Background(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
	if err != nil {
		t.Fatal(err)
	}
	b.do(30*time.Second, chromedp.Click(chromedp.CSS("form.signout button")), chromedp.WaitVisible(chromedp.CSS("#token")))
	b.signIn(viewer.Secret)
	for _, p := range []string{page, "/console/instances?all=true", "/console/jobs", "/console/plans"} {
		b.open(p, "main h1")
		if n := evalIn[int](b, `document.querySelectorAll('main button, main form[method="post"]').length`); n != 0 {
			t.Fatalf("the viewer's page %s offers %d buttons or forms", p, n)
		}
	}
	b.open(page, "#pit-table")
	b.shot("13-viewer-server")
	viewerCookie, csrf := b.session()
	if code, body := c.consolePost(page+"/snapshot", viewerCookie, url.Values{"csrf": {csrf}}); code != http.StatusForbidden || !strings.Contains(body, "operator role") {
		t.Fatalf("the viewer's forged snapshot POST answered %d:\n%.300s", code, body)
	}
	if n := c.auditCount("source-server.snapshot-request"); n != before {
		t.Fatalf("refused POSTs were carried out: %d snapshot requests audited, %d before", n, before)
	}
}
