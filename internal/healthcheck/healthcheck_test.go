package healthcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// An HTTP check that answers 503 twice, then 200, passes on its third attempt, and
// progress saw the two failures.
func TestHTTPPassesAfterFailures(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if n.Add(1) <= 2 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("welcome to the site"))
	}))
	defer srv.Close()
	var seen []Result
	res := Run(context.Background(), Check{Name: "web", HTTP: &HTTP{URL: srv.URL, Status: 200, Body: "welcome"},
		Interval: 10 * time.Millisecond, Attempts: 5}, func(r Result) { seen = append(seen, r) })
	if !res.Passed || res.Attempts != 3 || res.Name != "web" || !strings.Contains(res.Message, "200 OK") {
		t.Fatalf("%+v", res)
	}
	if res.Ended.Before(res.Started) {
		t.Errorf("ended %v before it started %v", res.Ended, res.Started)
	}
	if len(seen) != 2 || seen[0].Attempts != 1 || seen[1].Attempts != 2 || seen[1].Passed || !strings.Contains(seen[1].Message, "503") {
		t.Fatalf("progress: %+v", seen)
	}
}

// Status 0 takes any status below 400; a set Status takes only itself.
func TestHTTPStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	if res := Run(context.Background(), Check{HTTP: &HTTP{URL: srv.URL}, Attempts: 1}, nil); !res.Passed {
		t.Fatalf("status 0: %+v", res)
	}
	res := Run(context.Background(), Check{HTTP: &HTTP{URL: srv.URL, Status: 200}, Attempts: 1}, nil)
	if res.Passed || !strings.Contains(res.Message, "204 No Content, not 200") {
		t.Fatalf("status 200: %+v", res)
	}
}

// A body without the text asked for fails, quoting what came.
func TestHTTPBodyMismatch(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("maintenance page"))
	}))
	defer srv.Close()
	res := Run(context.Background(), Check{HTTP: &HTTP{URL: srv.URL, Status: 200, Body: "welcome"},
		Interval: time.Millisecond, Attempts: 2}, nil)
	if res.Passed || res.Attempts != 2 || !strings.Contains(res.Message, `"maintenance page"`) ||
		!strings.Contains(res.Message, `"welcome"`) || !strings.Contains(res.Message, "2 attempts") {
		t.Fatalf("%+v", res)
	}
}

// An HTTPS server's certificate is not verified.
func TestHTTPSNotVerified(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	if res := Run(context.Background(), Check{HTTP: &HTTP{URL: srv.URL, Status: 200}, Attempts: 1}, nil); !res.Passed {
		t.Fatalf("%+v", res)
	}
}

// closedAddr is a local address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TCP on a closed port fails once its attempts are spent; on an open one it passes.
func TestTCP(t *testing.T) {
	addr := closedAddr(t)
	calls := 0
	res := Run(context.Background(), Check{Name: "db", TCP: &TCP{Address: addr}, Interval: 5 * time.Millisecond, Attempts: 3},
		func(Result) { calls++ })
	if res.Passed || res.Attempts != 3 || calls != 3 || !strings.Contains(res.Message, "3 attempts") || !strings.Contains(res.Message, "refused") {
		t.Fatalf("%+v (progress called %d times)", res, calls)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	res = Run(context.Background(), Check{TCP: &TCP{Address: l.Addr().String()}}, nil)
	if !res.Passed || res.Attempts != 1 || !strings.Contains(res.Message, "accepts connections") {
		t.Fatalf("%+v", res)
	}
}

// A command that exits 1 on its first two runs (a counter file says which run it is)
// passes on its third; its environment has Env, its output is kept.
func TestCommandPassesAfterFailures(t *testing.T) {
	counter := filepath.Join(t.TempDir(), "n")
	run := `n=$(cat "$COUNTER" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$COUNTER"; echo "run $n"; [ $n -ge 3 ]`
	res := Run(context.Background(), Check{Command: &Command{Run: run, Env: []string{"COUNTER=" + counter}},
		Interval: 5 * time.Millisecond, Attempts: 5}, nil)
	if !res.Passed || res.Attempts != 3 || res.Output != "run 3" {
		t.Fatalf("%+v", res)
	}
	res = Run(context.Background(), Check{Command: &Command{Run: "echo broken >&2; exit 1"}, Attempts: 1}, nil)
	if res.Passed || res.Output != "broken" || !strings.Contains(res.Message, "exit status 1") {
		t.Fatalf("%+v", res)
	}
}

// A command's output is kept to its last MaxOutput bytes; one that outlives its
// Timeout is killed, with what it started.
func TestCommandBounds(t *testing.T) {
	res := Run(context.Background(), Check{Command: &Command{Run: "head -c 100000 /dev/zero | tr '\\0' a; echo END"}, Attempts: 1}, nil)
	if !res.Passed || len(res.Output) > MaxOutput+len("…") || !strings.HasPrefix(res.Output, "…") || !strings.HasSuffix(res.Output, "aaaEND") {
		t.Fatalf("output of %d bytes: %.40q…", len(res.Output), res.Output)
	}
	marker := filepath.Join(t.TempDir(), "late")
	start := time.Now()
	res = Run(context.Background(), Check{Command: &Command{Run: "(sleep 1; touch " + marker + ") & sleep 30"},
		Timeout: 200 * time.Millisecond, Attempts: 1}, nil)
	if res.Passed || !strings.Contains(res.Message, "did not finish within 200ms") || time.Since(start) > 3*time.Second {
		t.Fatalf("%+v after %v", res, time.Since(start))
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command's background process outlived it")
	}
}

// Cancelling the context stops a check at once, in an attempt or between two.
func TestCancelStops(t *testing.T) {
	for name, c := range map[string]Check{
		"waiting": {TCP: &TCP{Address: closedAddr(t)}, Interval: time.Hour, Attempts: -1},
		"running": {Command: &Command{Run: "sleep 30"}, Timeout: time.Hour, Attempts: -1},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			start := time.Now()
			res := Run(ctx, c, nil)
			if took := time.Since(start); res.Passed || took > 2*time.Second || !strings.Contains(res.Message, "canceled") {
				t.Fatalf("%+v after %v", res, took)
			}
		})
	}
}

// Deadline bounds the whole check, however many attempts it may make.
func TestDeadline(t *testing.T) {
	start := time.Now()
	res := Run(context.Background(), Check{TCP: &TCP{Address: closedAddr(t)}, Interval: 50 * time.Millisecond,
		Attempts: -1, Deadline: 400 * time.Millisecond}, nil)
	took := time.Since(start)
	if res.Passed || took < 400*time.Millisecond || took > 2*time.Second || res.Attempts < 2 ||
		!strings.Contains(res.Message, "within 400ms") || !strings.Contains(res.Message, "refused") {
		t.Fatalf("%+v after %v", res, took)
	}
}

// A check that cannot pass (no kind, two kinds, a bad URL or address) fails at once.
func TestInvalidChecks(t *testing.T) {
	for _, c := range []Check{
		{Name: "none"},
		{Name: "two", TCP: &TCP{Address: "a:1"}, HTTP: &HTTP{URL: "http://a/"}},
		{Name: "url", HTTP: &HTTP{URL: "ftp://a/"}},
		{Name: "addr", TCP: &TCP{Address: "no-port"}},
		{Name: "cmd", Command: &Command{Run: " "}},
	} {
		if res := Run(context.Background(), c, nil); res.Passed || res.Attempts != 0 || !strings.Contains(res.Message, c.Name) {
			t.Errorf("%s: %+v", c.Name, res)
		}
	}
}

func TestExpand(t *testing.T) {
	env := map[string]string{"LIFEBOAT_INSTANCE_ADDRESS": "10.0.0.5", "LIFEBOAT_PORT_TCP_80": "127.0.0.1:4080"}
	if got := Expand("http://${LIFEBOAT_PORT_TCP_80}/ ${LIFEBOAT_INSTANCE_ADDRESS}:22 ${UNKNOWN}.", env); got != "http://127.0.0.1:4080/ 10.0.0.5:22 ." {
		t.Fatalf("%q", got)
	}
}
