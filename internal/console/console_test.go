package console_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// env is a control plane serving the console on 127.0.0.1 over TLS, on SQLite.
type env struct {
	t     *testing.T
	cp    *controlplane.ControlPlane
	admin *api.Client
	url   string
}

func startCP(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	cp, err := controlplane.Open(ctx, controlplane.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cp.Serve(sctx) }()
	t.Cleanup(func() {
		stop()
		<-done
		cp.Close()
	})
	e := &env{t: t, cp: cp, url: cp.LocalURL()}
	e.admin = e.apiClient(e.token(api.RoleAdmin))
	return e
}

// token creates an API token of role in the system account.
func (e *env) token(role api.Role) string {
	e.t.Helper()
	tok, err := e.cp.CreateToken(context.Background(), e.cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: role})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok.Secret
}

func (e *env) apiClient(token string) *api.Client {
	e.t.Helper()
	c, err := api.NewClient(api.ClientConfig{Server: e.url, Token: token, CAPEM: e.cp.CACertPEM()})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// browser is an HTTP client with a cookie jar that does not follow redirects, as the
// tests look at them.
type browser struct {
	t    *testing.T
	e    *env
	hc   *http.Client
	csrf string
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.cp.CAPool(), MinVersion: tls.VersionTLS13}}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &browser{t: e.t, e: e, hc: &http.Client{Jar: jar, Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(method, path string, form url.Values, header map[string]string) answer {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.url+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(data)}
	if m := csrfRE.FindStringSubmatch(a.body); m != nil {
		b.csrf = m[1]
	}
	return a
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) get(path string) answer { return b.do("GET", path, nil, nil) }

// post sends a form with the CSRF token of the last page seen.
func (b *browser) post(path string, form url.Values) answer {
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok {
		form.Set("csrf", b.csrf)
	}
	return b.do("POST", path, form, nil)
}

// signIn signs in with token and checks the redirect.
func (b *browser) signIn(token string) {
	b.t.Helper()
	b.get("/console/sign-in")
	a := b.post("/console/sign-in", url.Values{"token": {token}, "next": {"/console/servers"}})
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/servers" {
		b.t.Fatalf("sign-in answered %d (location %q): %.300s", a.status, a.header.Get("Location"), a.body)
	}
	if a := b.get("/console/servers"); a.status != http.StatusOK {
		b.t.Fatalf("the servers page after sign-in: %d %.300s", a.status, a.body)
	}
}

// addServers records n source servers, as the benchmark does, and returns their ids.
func (e *env) addServers(n int, state string) []string {
	e.t.Helper()
	now := time.Now().UTC().Truncate(time.Millisecond)
	var ids []string
	err := e.cp.DB().Update(context.Background(), func(tx *db.Tx) error {
		for i := range n {
			st := api.NewReplicationState(now)
			st.DataReplicationState = state
			st.LastConsistencyPoint = &api.ConsistencyPointInfo{Time: now, Level: consistency.Filesystem}
			id := api.NewID(api.PrefixSourceServer)
			ids = append(ids, id)
			s := db.SourceServer{SourceServer: api.SourceServer{ID: id, AccountID: e.cp.SystemAccountID(),
				MachineID: id, Hostname: fmt.Sprintf("web-%05d.example.com", i), SiteID: api.DefaultSite,
				Replication: st, CertificateExpiresAt: now.AddDate(1, 0, 0), CreatedAt: now, UpdatedAt: now,
				Volumes: []api.Volume{{Name: "vda", Path: "/dev/vda", SizeBytes: 1 << 30}}}, CertSerial: fmt.Sprintf("%x", i+1)}
			if err := tx.CreateSourceServer(s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

func cookieOf(h http.Header, name string) string {
	for _, c := range h.Values("Set-Cookie") {
		if strings.HasPrefix(c, name+"=") {
			return c
		}
	}
	return ""
}

func TestSignInSetsAStrictSessionCookieAndSignOutEndsIt(t *testing.T) {
	e := startCP(t)
	b := e.browser()
	a := b.get("/")
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/" {
		t.Fatalf("GET / answered %d to %q, want a redirect to the console", a.status, a.header.Get("Location"))
	}
	a = b.get("/console/servers?state=CONTINUOUS")
	if a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/console/sign-in?next=") {
		t.Fatalf("a page without a session answered %d to %q, want the sign-in page", a.status, a.header.Get("Location"))
	}
	a = b.get("/console/sign-in")
	csp := a.header.Get("Content-Security-Policy")
	if a.status != 200 || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") ||
		!strings.Contains(a.body, `<label for="token">`) {
		t.Fatalf("sign-in page: %d, CSP %q\n%.400s", a.status, csp, a.body)
	}
	if a = b.post("/console/sign-in", url.Values{"token": {"lbt_nothing_nothing"}}); a.status != http.StatusUnauthorized ||
		!strings.Contains(a.body, "token") {
		t.Fatalf("an unknown token: %d %.300s", a.status, a.body)
	}
	if a = b.post("/console/sign-in", url.Values{"token": {e.token(api.RoleAdmin)}, "csrf": {"forged"}}); a.status != http.StatusForbidden {
		t.Fatalf("a sign-in without the form's CSRF token: %d, want 403", a.status)
	}
	b.get("/console/sign-in")
	a = b.post("/console/sign-in", url.Values{"token": {e.token(api.RoleAdmin)}, "next": {"https://evil.example/"}})
	ck := cookieOf(a.header, "__Host-lifeboat-session")
	for _, want := range []string{"HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age="} {
		if !strings.Contains(ck, want) {
			t.Fatalf("session cookie %q lacks %s", ck, want)
		}
	}
	if a.header.Get("Location") != "/console/servers" {
		t.Fatalf("sign-in with next=https://evil.example/ redirected to %q", a.header.Get("Location"))
	}
	if strings.Contains(ck, "lbt_") {
		t.Fatalf("the session cookie carries the token: %s", ck)
	}
	if a = b.get("/console/servers"); a.status != 200 || !strings.Contains(a.body, "Sign out") {
		t.Fatalf("servers page: %d %.300s", a.status, a.body)
	}
	if a = b.post("/console/sign-out", nil); a.status != http.StatusSeeOther {
		t.Fatalf("sign-out: %d", a.status)
	}
	if a = b.get("/console/servers"); a.status != http.StatusSeeOther {
		t.Fatalf("after sign-out the servers page answered %d, want a redirect to sign in", a.status)
	}
}

func TestViewerSeesNoActionsAndTheAPIRefusesThem(t *testing.T) {
	e := startCP(t)
	id := e.addServers(1, api.StateContinuous)[0]
	page := "/console/servers/" + id

	admin := e.browser()
	admin.signIn(e.token(api.RoleAdmin))
	a := admin.get(page)
	for _, want := range []string{`id="snapshot-now"`, "Pause replication", `id="start-launch"`, "Disconnect", "Save launch settings"} {
		if !strings.Contains(a.body, want) {
			t.Fatalf("the admin's server page lacks %s", want)
		}
	}
	viewer := e.browser()
	viewer.signIn(e.token(api.RoleViewer))
	a = viewer.get(page)
	if a.status != 200 || !strings.Contains(a.body, "web-00000.example.com") {
		t.Fatalf("viewer's server page: %d %.300s", a.status, a.body)
	}
	for _, never := range []string{"<button", "Snapshot now", "Pause replication", "Save launch settings"} {
		if strings.Contains(strings.ReplaceAll(a.body, `<button type="submit">Sign out</button>`, ""), never) {
			t.Fatalf("the viewer's server page offers %q", never)
		}
	}
	// A forged POST with the viewer's session and valid CSRF token: the API refuses it.
	a = viewer.post(page+"/snapshot", nil)
	if a.status != http.StatusForbidden || !strings.Contains(a.body, "operator role") {
		t.Fatalf("the viewer's snapshot request: %d %.400s", a.status, a.body)
	}
	if a = viewer.get("/console/tokens"); a.status != http.StatusForbidden {
		t.Fatalf("a viewer's tokens page: %d, want 403", a.status)
	}
	// The admin's POST without the CSRF token is refused before anything is done.
	if a = admin.post(page+"/snapshot", url.Values{"csrf": {""}}); a.status != http.StatusForbidden || !strings.Contains(a.body, "CSRF") {
		t.Fatalf("a POST without the CSRF token: %d %.300s", a.status, a.body)
	}
	if a = admin.do("POST", page+"/snapshot", url.Values{"csrf": {admin.csrf}}, map[string]string{"Origin": "https://evil.example"}); a.status != http.StatusForbidden {
		t.Fatalf("a POST from another origin: %d, want 403", a.status)
	}
	audit, err := e.admin.Audit(context.Background(), api.AuditFilter{Action: "source-server.snapshot-request"})
	if err != nil || len(audit.Items) != 0 {
		t.Fatalf("refused requests were carried out: %+v (%v)", audit.Items, err)
	}
	if a = admin.post(page+"/snapshot", nil); a.status != http.StatusSeeOther {
		t.Fatalf("the admin's snapshot request: %d %.300s", a.status, a.body)
	}
	audit, err = e.admin.Audit(context.Background(), api.AuditFilter{Action: "source-server.snapshot-request"})
	if err != nil || len(audit.Items) != 1 || !strings.HasPrefix(audit.Items[0].ActorID, "token:") {
		t.Fatalf("the admin's snapshot request was not audited as the admin's token: %+v (%v)", audit.Items, err)
	}
	if a = admin.get(page); !strings.Contains(a.body, "A consistency point was asked for") {
		t.Fatalf("the page after the action shows no message:\n%.500s", a.body)
	}
}

func TestEveryPageRendersForAnAdmin(t *testing.T) {
	e := startCP(t)
	id := e.addServers(3, api.StateContinuous)[0]
	b := e.browser()
	b.signIn(e.token(api.RoleAdmin))
	pages := map[string]string{
		"/console/servers": "Source servers", "/console/servers/" + id: "Point-in-time timeline", "/console/jobs": "<h1>Jobs</h1>",
		"/console/instances": "Recovery instances", "/console/plans": "Recovery plans", "/console/groups": "Consistency groups",
		"/console/replicators": "Replicators", "/console/tokens": "Create an API token", "/console/audit": "Audit log",
	}
	for path, want := range pages {
		a := b.get(path)
		if a.status != 200 || !strings.Contains(a.body, want) || !strings.Contains(a.body, `<main id="main"`) {
			t.Errorf("%s: %d, want 200 with %q\n%.300s", path, a.status, want, a.body)
		}
		if a.header.Get("Cache-Control") != "no-store" || a.header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: Cache-Control %q, X-Frame-Options %q", path, a.header.Get("Cache-Control"), a.header.Get("X-Frame-Options"))
		}
	}
	if a := b.get("/console/servers/s-doesnotexist0000"); a.status != http.StatusNotFound {
		t.Errorf("an unknown server: %d, want 404", a.status)
	}
	if a := b.get("/console/plan-runs/prun-nothing/report"); a.status != http.StatusNotFound || !strings.Contains(a.body, "prun-nothing") {
		t.Errorf("the report of an unknown plan run: %d, want the API's 404\n%.300s", a.status, a.body)
	}
	if a := b.get("/console/nothing"); a.status != http.StatusNotFound {
		t.Errorf("an unknown page: %d, want 404", a.status)
	}
	if a := b.get("/console/static/console.js"); a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/javascript") {
		t.Errorf("console.js: %d %s", a.status, a.header.Get("Content-Type"))
	}
}

func TestServersPagePagesAndFilters(t *testing.T) {
	e := startCP(t)
	e.addServers(120, api.StateContinuous)
	e.addServers(1, api.StatePaused)
	b := e.browser()
	b.signIn(e.token(api.RoleViewer))
	rows := regexp.MustCompile(`<th scope="row"><a href="/console/servers/s-`)
	a := b.get("/console/servers?limit=50")
	if n := len(rows.FindAllString(a.body, -1)); n != 50 {
		t.Fatalf("page 1 shows %d servers, want 50", n)
	}
	next := regexp.MustCompile(`<a href="([^"]+)" rel="next">`).FindStringSubmatch(a.body)
	if next == nil {
		t.Fatal("page 1 has no next page link")
	}
	a = b.get(strings.ReplaceAll(next[1], "&amp;", "&"))
	if n := len(rows.FindAllString(a.body, -1)); n != 50 || !strings.Contains(a.body, "First page") {
		t.Fatalf("page 2 shows %d servers, want 50 and a first page link", n)
	}
	if a = b.get("/console/servers?q=web-00042"); len(rows.FindAllString(a.body, -1)) != 1 || !strings.Contains(a.body, "web-00042.example.com") {
		t.Fatalf("the search for web-00042 shows:\n%.600s", a.body)
	}
	if a = b.get("/console/servers?state=PAUSED"); len(rows.FindAllString(a.body, -1)) != 1 {
		t.Fatalf("the PAUSED filter shows %d servers, want 1", len(rows.FindAllString(a.body, -1)))
	}
	if a = b.get("/console/servers?tag=notatag"); a.status != http.StatusOK || !strings.Contains(a.body, "KEY=VALUE") {
		t.Fatalf("a bad tag filter: %d, want the page with the reason\n%.600s", a.status, a.body)
	}
}

func TestRevokedTokenEndsTheSession(t *testing.T) {
	e := startCP(t)
	tok, err := e.admin.CreateToken(context.Background(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleOperator})
	if err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	b.signIn(tok.Secret)
	if err := e.admin.RevokeToken(context.Background(), tok.Token.ID); err != nil {
		t.Fatal(err)
	}
	if a := b.get("/console/jobs"); a.status != http.StatusUnauthorized || !strings.Contains(a.body, "revoked") {
		t.Fatalf("a page of a revoked token's session: %d %.300s", a.status, a.body)
	}
	if a := b.get("/console/jobs"); a.status != http.StatusSeeOther {
		t.Fatalf("the session of a revoked token lives on: %d", a.status)
	}
}

func TestEventsReachThePageAsMessages(t *testing.T) {
	e := startCP(t)
	id := e.addServers(1, api.StateContinuous)[0]
	b := e.browser()
	b.signIn(e.token(api.RoleOperator))
	req, err := http.NewRequest("GET", e.url+"/console/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	got := make(chan string, 1)
	go func() {
		var sb strings.Builder
		buf := make([]byte, 4096)
		for !strings.Contains(sb.String(), "snapshot-request") {
			n, err := resp.Body.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				break
			}
		}
		got <- sb.String()
	}()
	if _, err := e.apiClient(e.token(api.RoleOperator)).RequestSnapshot(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if !strings.Contains(s, `"type":"source-server.snapshot-request"`) || !strings.Contains(s, "data: ") || strings.Contains(s, "event:") {
			t.Fatalf("the relayed stream:\n%s", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event reached the console's stream within 10 s")
	}
}

func TestTokensAreShownOnceAndRevokedFromTheConsole(t *testing.T) {
	e := startCP(t)
	admin := e.browser()
	admin.signIn(e.token(api.RoleAdmin))
	admin.get("/console/tokens")
	a := admin.post("/console/tokens", url.Values{"role": {"operator"}, "description": {"night shift <b>"}})
	m := regexp.MustCompile(`id="new-secret" readonly value="(lbt_[^"]+)"`).FindStringSubmatch(a.body)
	if a.status != http.StatusOK || m == nil || !strings.Contains(a.body, "night shift &lt;b&gt;") {
		t.Fatalf("creating a token: %d, secret shown: %v\n%.600s", a.status, m != nil, a.body)
	}
	if again := admin.get("/console/tokens"); strings.Contains(again.body, m[1]) {
		t.Fatal("the token's secret is shown again on the tokens page")
	}
	op := e.browser()
	op.signIn(m[1])
	if a := op.post("/console/tokens", url.Values{"role": {"admin"}}); a.status != http.StatusForbidden {
		t.Fatalf("an operator creating an admin token through the console: %d, want 403", a.status)
	}
	who, err := e.apiClient(m[1]).Whoami(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	admin.get("/console/tokens")
	if a := admin.post("/console/tokens/"+who.ID+"/revoke", nil); a.status != http.StatusSeeOther {
		t.Fatalf("revoking: %d %.300s", a.status, a.body)
	}
	if a := op.get("/console/servers"); a.status != http.StatusUnauthorized {
		t.Fatalf("the revoked token's session still shows pages: %d", a.status)
	}
}

func TestSettingsPlansAndGroupsThroughTheConsole(t *testing.T) {
	e := startCP(t)
	ids := e.addServers(2, api.StateContinuous)
	ctx := context.Background()
	if _, err := e.admin.UpdateSourceServerTags(ctx, ids[0], api.UpdateSourceServerTagsRequest{Set: map[string]string{"app": "web"}}); err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	b.signIn(e.token(api.RoleAdmin))
	page := "/console/servers/" + ids[0]

	// Replication settings: the form's fields change, the other overrides stay.
	ivl := 5
	if _, err := e.admin.SetServerReplicationSettings(ctx, ids[0], api.ReplicationSettingsOverrides{ConsistencyPointIntervalSeconds: &ivl}); err != nil {
		t.Fatal(err)
	}
	b.get(page)
	if a := b.post(page+"/replication-settings", url.Values{"bandwidthMbps": {"100"}, "consistencyPointIntervalSeconds": {"5"}, "compression": {"zstd"}}); a.status != http.StatusSeeOther {
		t.Fatalf("saving replication settings: %d %.300s", a.status, a.body)
	}
	got, err := e.admin.ServerReplicationSettings(ctx, ids[0])
	if err != nil || got.Effective.BandwidthMbps != 100 || got.Effective.Compression != "zstd" || got.Effective.ConsistencyPointIntervalSeconds != 5 {
		t.Fatalf("after the form: %+v (%v)", got.Effective, err)
	}
	if a := b.post(page+"/replication-settings", url.Values{"bandwidthMbps": {"fast"}}); a.status != http.StatusBadRequest {
		t.Fatalf("a bandwidth of \"fast\": %d, want 400", a.status)
	}
	if a := b.post(page+"/launch-settings", url.Values{"provider": {"image"}, "cpus": {"0"}, "memoryMiB": {"512"}, "network": {"isolated"}, "bootMode": {"bios"}}); a.status != http.StatusBadRequest {
		t.Fatalf("launch settings with 0 CPUs: %d, want the API's 400\n%.300s", a.status, a.body)
	}

	// A plan, its page, and a dry run of a drill from the console.
	if _, err := e.admin.ApplyPlan(ctx, api.ApplyPlanRequest{Source: "name: shop\nwaves:\n  - name: web\n    servers:\n      - tags: {app: web}\n"}); err != nil {
		t.Fatal(err)
	}
	if a := b.get("/console/plans"); !strings.Contains(a.body, `href="/console/plans/shop"`) {
		t.Fatalf("the plans page does not list the plan:\n%.600s", a.body)
	}
	if a := b.get("/console/plans/shop"); a.status != 200 || !strings.Contains(a.body, "tags: {app: web}") {
		t.Fatalf("the plan's page: %d\n%.600s", a.status, a.body)
	}
	if a := b.post("/console/plans/shop/drill", url.Values{"dryRun": {"on"}}); a.status != 200 || !strings.Contains(a.body, "Preconditions") {
		t.Fatalf("a dry run from the console: %d\n%.800s", a.status, a.body)
	}

	// A consistency group and its page.
	g, err := e.admin.CreateConsistencyGroup(ctx, api.CreateConsistencyGroupRequest{Name: "app", SourceServerIDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	if a := b.get("/console/groups"); !strings.Contains(a.body, `href="/console/groups/`+g.ID+`"`) {
		t.Fatalf("the groups page does not list the group:\n%.600s", a.body)
	}
	if a := b.get("/console/groups/" + g.ID); a.status != 200 || !strings.Contains(a.body, ids[1]) {
		t.Fatalf("the group's page: %d\n%.600s", a.status, a.body)
	}
	if a := b.get("/console/audit?action=plan.apply"); !strings.Contains(a.body, "plan.apply") || strings.Contains(a.body, "consistency-group.create") {
		t.Fatalf("the audit log filtered by action:\n%.800s", a.body)
	}
}

func fmtUTC(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") }

func TestPITTimelineShowsLevelsAndLocks(t *testing.T) {
	e := startCP(t)
	id := e.addServers(1, api.StateContinuous)[0]
	now := time.Now().UTC().Truncate(time.Second)
	var pits []string
	err := e.cp.DB().Update(context.Background(), func(tx *db.Tx) error {
		for i, l := range []consistency.Level{consistency.Filesystem, consistency.None, consistency.Crash} {
			pid := api.NewID(api.PrefixSnapshot)
			pits = append(pits, pid)
			s := db.Snapshot{AccountID: e.cp.SystemAccountID(), RecoverySnapshot: api.RecoverySnapshot{ID: pid, SourceServerID: id,
				Time: now.Add(time.Duration(i) * time.Second), Level: l, SizeBytes: int64(i+1) << 20, CreatedAt: now,
				Volumes: []api.SnapshotVolume{{Name: "vda", SizeBytes: 1 << 30}}}}
			if l == consistency.Crash {
				until := now.Add(72 * time.Hour)
				s.LockUntil = &until
			}
			if err := tx.CreateSnapshot(s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	page := "/console/servers/" + id
	viewer := e.browser()
	viewer.signIn(e.token(api.RoleViewer))
	a := viewer.get(page)
	for _, want := range []string{pits[0], pits[1], pits[2], ">filesystem<", ">none<", ">crash<", "Data added per point", "<polyline"} {
		if !strings.Contains(a.body, want) {
			t.Fatalf("the timeline lacks %s:\n%.2000s", want, a.body)
		}
	}
	if strings.Contains(a.body, `id="lock-pit"`) {
		t.Fatal("a viewer is offered to lock a point")
	}
	admin := e.browser()
	admin.signIn(e.token(api.RoleAdmin))
	if a = admin.get(page); !strings.Contains(a.body, `id="lock-pit"`) || strings.Contains(a.body, `<option value="`+pits[1]+`">`) {
		t.Fatalf("the admin's lock form is missing or offers the fuzzy point:\n%.2000s", a.body)
	}
	if !strings.Contains(a.body, "🔒 "+fmtUTC(now.Add(72*time.Hour))) {
		t.Fatalf("the timeline shows no lock until %s:\n%.3000s", fmtUTC(now.Add(72*time.Hour)), a.body)
	}
	// Locking needs the PIT in the staging store (TestConsoleInABrowser locks a real
	// one); here, the API's refusal of a viewer and the form's bounds.
	viewer.get(page)
	if a = viewer.post(page+"/lock", url.Values{"pit": {pits[0]}, "days": {"3"}}); a.status != http.StatusForbidden || !strings.Contains(a.body, "admin role") {
		t.Fatalf("a viewer's lock: %d, want the API's 403\n%.300s", a.status, a.body)
	}
	if a = admin.post(page+"/lock", url.Values{"pit": {pits[0]}, "days": {"0"}}); a.status != http.StatusBadRequest {
		t.Fatalf("a lock of 0 days: %d, want 400", a.status)
	}
}
