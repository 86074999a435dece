package console

import (
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestSessionsAreBoundedAndExpire(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st := newSessions(2, time.Hour, 3*time.Hour, clk.Now)
	a, b := &session{}, &session{}
	idA := st.add(a)
	clk.advance(time.Minute)
	idB := st.add(b)
	clk.advance(time.Minute)
	if _, ok := st.get(idA); !ok { // a is now the most recently used
		t.Fatal("a fresh session was not found")
	}
	clk.advance(time.Minute)
	idC := st.add(&session{})
	if st.count() != 2 {
		t.Fatalf("%d sessions held, the bound is 2", st.count())
	}
	if _, ok := st.get(idB); ok {
		t.Fatal("the least recently used session was kept past the bound")
	}
	if _, ok := st.get(idA); !ok {
		t.Fatal("a recently used session was dropped instead of the least recently used")
	}
	clk.advance(61 * time.Minute) // idle past the hour: c is gone, a was used 61 min ago
	if _, ok := st.get(idC); ok {
		t.Fatal("an idle session outlived its idle timeout")
	}
	idD := st.add(&session{})
	for i := 0; i < 4; i++ {
		clk.advance(50 * time.Minute)
		if _, ok := st.get(idD); !ok && i < 3 {
			t.Fatalf("a used session ended after %d min", (i+1)*50)
		} else if ok && i == 3 {
			t.Fatal("a session outlived its absolute lifetime of 3 hours")
		}
	}
	if _, ok := st.get("not-a-session"); ok || st.get2Empty() {
		t.Fatal("an unknown id found a session")
	}
}

// get2Empty reports whether the empty cookie value finds a session.
func (st *sessions) get2Empty() bool { _, ok := st.get(""); return ok }

func TestSafeNextStaysInTheConsole(t *testing.T) {
	for in, want := range map[string]string{
		"/console/jobs?x=1":       "/console/jobs?x=1",
		"https://evil.example/":   "/console/servers",
		"//evil.example/console/": "/console/servers",
		"/console/sign-out":       "/console/servers",
		"/console/\\evil":         "/console/servers",
		"":                        "/console/servers",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSparklineScalesIntoItsBox(t *testing.T) {
	sp := newSpark("x", []float64{0, 5, 10}, func(v float64) string { return "v" })
	if sp.Points != "0.0,27.0 60.0,14.0 120.0,1.0" || sp.Samples != 3 {
		t.Fatalf("points %q (%d samples)", sp.Points, sp.Samples)
	}
	if empty := newSpark("x", nil, nil); empty.Points != "" {
		t.Fatalf("an empty series drew %q", empty.Points)
	}
}
