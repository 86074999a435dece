package cli

import (
	"runtime/debug"
	"testing"
)

// The replicator's soft memory limit is --memory-limit with no session, and grows with
// the sessions open; GOMEMLIMIT, or 0, leaves the runtime's alone.
func TestTheReplicatorsMemoryLimitGrowsWithItsSessions(t *testing.T) {
	was := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(was)
	t.Setenv("GOMEMLIMIT", "")
	set := memoryLimit(100)
	if got := debug.SetMemoryLimit(-1); got != 100<<20 {
		t.Fatalf("limit %d with no session, want 100 MiB", got)
	}
	set(400)
	if got, want := debug.SetMemoryLimit(-1), int64(100<<20+400*sessionMemory); got != want {
		t.Fatalf("limit %d with 400 sessions, want %d", got, want)
	}
	set(0)
	if got := debug.SetMemoryLimit(-1); got != 100<<20 {
		t.Fatalf("limit %d once the sessions ended, want 100 MiB", got)
	}
	if memoryLimit(0) != nil {
		t.Fatal("--memory-limit 0 set a limit")
	}
	t.Setenv("GOMEMLIMIT", "1GiB")
	if memoryLimit(100) != nil {
		t.Fatal("--memory-limit overrode GOMEMLIMIT")
	}
}
