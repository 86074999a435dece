package limit

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestCounterCapsEachKey(t *testing.T) {
	c := NewCounter(2)
	for i := range 2 {
		if !c.Acquire("a") {
			t.Fatalf("acquisition %d of a was refused under a cap of 2", i+1)
		}
	}
	if c.Acquire("a") {
		t.Fatal("a third of a was allowed past a cap of 2")
	}
	if !c.Acquire("b") {
		t.Fatal("b was refused because a is full")
	}
	c.Release("a")
	if !c.Acquire("a") {
		t.Fatal("a was refused after a release")
	}
	c.Release("a")
	c.Release("a")
	c.Release("b")
	if len(c.n) != 0 {
		t.Fatalf("keys with nothing in flight are kept: %v", c.n)
	}
}

func TestLogGateOncePerIntervalPerSource(t *testing.T) {
	g := NewLogGate(time.Minute)
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	for range 100 {
		g.Warn(log, "10.0.0.1", "refused")
		g.Warn(log, "10.0.0.2", "refused")
	}
	if n := strings.Count(buf.String(), "refused"); n != 2 {
		t.Fatalf("200 refusals from 2 sources in one interval logged %d lines, want 2", n)
	}
	now = now.Add(time.Minute)
	buf.Reset()
	g.Warn(log, "10.0.0.1", "refused")
	if !strings.Contains(buf.String(), "suppressed=99") {
		t.Fatalf("the next interval's line does not count the 99 held back: %s", buf.String())
	}
	// Many sources: memory stays bounded, and the ones past the bound share one line.
	buf.Reset()
	for i := range 3 * maxGateKeys {
		g.Warn(log, fmt.Sprintf("src-%d", i), "refused")
	}
	if len(g.last) > maxGateKeys+1 {
		t.Fatalf("the gate remembers %d sources, more than %d", len(g.last), maxGateKeys+1)
	}
	if n := strings.Count(buf.String(), "refused"); n > maxGateKeys+1 {
		t.Fatalf("%d sources logged %d lines in one interval, more than %d", 3*maxGateKeys, n, maxGateKeys+1)
	}
}
