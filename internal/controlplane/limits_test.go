package controlplane_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// startLimited starts a control plane on SQLite with the limits lim (the rest default).
func startLimited(t *testing.T, lim controlplane.Limits) *env {
	return startWith(t, db.SQLite, func(c *controlplane.Config) { c.Limits = lim })
}

// dialTLS opens a raw TLS connection to the API, trusting its CA.
func dialTLS(t *testing.T, e *env) (*tls.Conn, error) {
	t.Helper()
	d := &tls.Dialer{Config: &tls.Config{RootCAs: e.cp.CAPool(), MinVersion: tls.VersionTLS13}}
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", strings.TrimPrefix(e.cp.URL(), "https://"))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c.(*tls.Conn), nil
}

// trickle sends a POST's headers announcing a 1000-byte body, then one byte of it a
// second, and returns how long after the headers the server closed the connection and
// the status line it answered with ("" if none), or fails after limit.
func trickle(t *testing.T, e *env, path, token string, limit time.Duration) (time.Duration, string) {
	t.Helper()
	c, err := dialTLS(t, e)
	if err != nil {
		t.Fatal(err)
	}
	head := "POST " + path + " HTTP/1.1\r\nHost: lifeboat\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
	if token != "" {
		head += "Authorization: Bearer " + token + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n{"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	_ = c.SetReadDeadline(start.Add(limit))
	r := bufio.NewReader(c)
	status, _ := r.ReadString('\n')
	if _, err = io.Copy(io.Discard, r); isTimeout(err) {
		t.Fatalf("POST %s with a body trickled at a byte a second is still open after %s", path, limit)
	}
	return time.Since(start), strings.TrimSpace(status)
}

// TestSlowBodyIsCutAfterTheReadTimeout: a client that sends its headers, then its body
// a byte a second, is disconnected once the read timeout has passed — authenticated or
// not — instead of holding a connection and a goroutine for as long as it likes.
func TestSlowBodyIsCutAfterTheReadTimeout(t *testing.T) {
	const readTimeout = time.Second
	e := startLimited(t, controlplane.Limits{ReadTimeout: readTimeout})
	admin := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
	for _, tc := range []struct {
		name, token, status string
	}{
		{"unauthenticated", "", "401"},
		{"admin", admin, "408"},
	} {
		took, status := trickle(t, e, "/api/v1/sites", tc.token, 8*time.Second)
		if took < readTimeout-100*time.Millisecond || took > readTimeout+2*time.Second {
			t.Errorf("%s: the connection closed %s after the headers, want about %s", tc.name, took, readTimeout)
		}
		if !strings.Contains(status, tc.status) {
			t.Errorf("%s: answered %q, want %s", tc.name, status, tc.status)
		}
	}
}

// TestLongPollAndEventStreamOutliveTheWriteTimeout: the agents' long-poll and the event
// stream last longer than the write (and read) timeout of ordinary requests and still
// complete.
func TestLongPollAndEventStreamOutliveTheWriteTimeout(t *testing.T) {
	const timeout = time.Second
	e := startLimited(t, controlplane.Limits{ReadTimeout: timeout, WriteTimeout: timeout})
	agent, reg := e.agent("m")
	id := reg.SourceServer.ID
	cfg, err := agent.ReplicationConfig(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	viewer := e.userClient(api.RoleViewer)
	events := make(chan api.Event, 16)
	go func() { _ = viewer.Events(ctx, 0, func(ev api.Event) error { events <- ev; return nil }) }()

	start := time.Now()
	if _, err := agent.ReplicationConfigWait(ctx, id, cfg.Fingerprint(), 3*time.Second); err != nil {
		t.Fatalf("a long-poll of 3s with a write timeout of %s: %v", timeout, err)
	}
	if took := time.Since(start); took < 3*time.Second-100*time.Millisecond {
		t.Fatalf("the long-poll returned after %s, before its 3s wait", took)
	}
	// The event stream, open for more than 3 timeouts now, still delivers.
	if _, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "late"}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-events:
			if ev.Type == "site.create" {
				return
			}
		case <-ctx.Done():
			t.Fatal("the event stream delivered nothing after outliving the write timeout")
		}
	}
}

// getStatus sends GET path with a bearer token and returns the status and the API
// error code; the response body stays open (an event stream stays subscribed) until
// the test ends.
func getStatus(t *testing.T, e *env, hc *http.Client, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(e.ctx, "GET", e.cp.URL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	var eb api.ErrorBody
	if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
		t.Fatalf("GET %s answered %d without the API's error format: %v", path, resp.StatusCode, err)
	}
	return resp.StatusCode, eb.Error.Code
}

// TestEventStreamsArePerAccount: one account that opened as many event streams as an
// account may is refused more (429), and another account still opens its own.
func TestEventStreamsArePerAccount(t *testing.T) {
	e := startLimited(t, controlplane.Limits{MaxEventStreamsPerAccount: 3})
	hc := e.httpClient("")
	for i := range 3 { // three tokens of account A, one stream each: the cap is the account's
		tok := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
		if status, code := getStatus(t, e, hc, "/api/v1/events", tok); status != 200 {
			t.Fatalf("stream %d of account A: %d %s", i+1, status, code)
		}
	}
	tokA := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
	if status, code := getStatus(t, e, hc, "/api/v1/events", tokA); status != 429 || code != api.CodeTooManyRequests {
		t.Fatalf("a 4th stream of account A: %d %s, want 429 %s", status, code, api.CodeTooManyRequests)
	}
	b, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant-b"})
	if err != nil {
		t.Fatal(err)
	}
	if status, code := getStatus(t, e, hc, "/api/v1/events", b.AdminToken); status != 200 {
		t.Fatalf("account B's first stream while account A is at its cap: %d %s", status, code)
	}
}

// TestRequestCaps: past the cap of unauthenticated requests of one address, of
// requests in flight of one account, or of long-polls of one caller, requests are
// refused with 429 in the API's error format; other accounts and callers are served.
func TestRequestCaps(t *testing.T) {
	e := startLimited(t, controlplane.Limits{MaxUnauthenticatedPerIP: 4, MaxRequestsPerAccount: 4, MaxStreamsPerCaller: 2})
	hc := e.httpClient("")
	admin := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin})
	b, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant-b"})
	if err != nil {
		t.Fatal(err)
	}
	agent, reg := e.agent("m")
	id := reg.SourceServer.ID
	want := func(what string, status int, gotStatus int, code string) {
		t.Helper()
		if gotStatus != status || (status == 429 && code != api.CodeTooManyRequests) {
			t.Fatalf("%s: %d %s, want %d", what, gotStatus, code, status)
		}
	}

	release := e.cp.Hold("ip", "127.0.0.1", 4)
	st, code := getStatus(t, e, hc, "/api/v1/health", "")
	want("health while 127.0.0.1 has 4 unauthenticated requests in flight", 429, st, code)
	st, code = getStatus(t, e, hc, "/api/v1/account", admin)
	want("an admin's request while 127.0.0.1 has 4 being authenticated", 429, st, code)
	release()
	st, code = getStatus(t, e, hc, "/api/v1/health", "")
	want("health once they are done", 200, st, code)

	release = e.cp.Hold("account", e.cp.SystemAccountID(), 4)
	st, code = getStatus(t, e, hc, "/api/v1/account", admin)
	want("account A with 4 requests in flight", 429, st, code)
	st, code = getStatus(t, e, hc, "/api/v1/account", b.AdminToken)
	want("account B while account A is at its cap", 200, st, code)
	// An agent's long-poll does not count against its account.
	if _, err := agent.ReplicationConfigWait(e.ctx, id, "", 0); err != nil {
		t.Fatalf("an agent's replication config while its account is at its cap: %v", err)
	}
	release()

	release = e.cp.Hold("caller", api.CallerSourceServer+":"+id, 2)
	_, err = agent.ReplicationConfigWait(e.ctx, id, "", 0)
	wantAPIError(t, err, 429, api.CodeTooManyRequests)
	release()
	if _, err := agent.ReplicationConfigWait(e.ctx, id, "", 0); err != nil {
		t.Fatalf("the agent's long-poll once its others ended: %v", err)
	}
}

// TestConnectionCap: past the cap of open connections a new one is closed at once, and
// a place freed by a closed connection serves a new one.
func TestConnectionCap(t *testing.T) {
	e := startLimited(t, controlplane.Limits{MaxConns: 3})
	var open []*tls.Conn
	for i := range 3 {
		c, err := dialTLS(t, e)
		if err != nil {
			t.Fatalf("connection %d of 3: %v", i+1, err)
		}
		open = append(open, c)
	}
	if c, err := dialTLS(t, e); err == nil {
		// TLS 1.3: the client may finish its handshake before the server's close arrives.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("a 4th connection was served (%v)", err)
		}
	}
	open[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := dialTLS(t, e)
		if err == nil {
			if _, err = io.WriteString(c, "GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"); err == nil {
				var status string
				status, err = bufio.NewReader(c).ReadString('\n')
				if err == nil && strings.Contains(status, "200") {
					return
				}
				err = fmt.Errorf("answered %q (%v)", status, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of 3 closed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}
