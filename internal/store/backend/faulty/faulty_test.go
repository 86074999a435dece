package faulty_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendtest"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/faulty"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

func wrap(t *testing.T) *faulty.Backend {
	t.Helper()
	inner, err := file.Open(filepath.Join(t.TempDir(), "staging"))
	if err != nil {
		t.Fatal(err)
	}
	return faulty.Wrap(inner)
}

// TestConformance: without rules the wrapper is the backend it wraps.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return wrap(t) })
}

func put(b backend.Backend, t *testing.T, name string) error {
	return b.Put(t.Context(), name, []byte(name), backend.PutOptions{})
}

func TestFailAfter(t *testing.T) {
	b := wrap(t)
	b.FailAfter(faulty.OpPut, "data/", 2, backend.ErrFull)
	for i := range 2 {
		if err := put(b, t, fmt.Sprintf("data/%d", i)); err != nil {
			t.Fatalf("put %d of 2 allowed: %v", i, err)
		}
	}
	// Other names and other operations are not matched.
	if err := put(b, t, "index/0"); err != nil {
		t.Fatalf("put outside the prefix: %v", err)
	}
	if _, err := b.Get(t.Context(), "data/0"); err != nil {
		t.Fatalf("get: %v", err)
	}
	for i := 2; i < 4; i++ {
		name := fmt.Sprintf("data/%d", i)
		backendtest.RequireKind(t, put(b, t, name), backend.ErrFull, name)
		if _, err := b.Inner().Stat(t.Context(), name); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("a failed put reached the backend: stat %s = %v", name, err)
		}
	}
	if got := b.Calls(faulty.OpPut); got != 5 {
		t.Fatalf("Calls(put) = %d, want 5", got)
	}
	if got := b.Calls(""); got != 6 {
		t.Fatalf("Calls() = %d, want 6", got)
	}
	b.ClearRules()
	if err := put(b, t, "data/4"); err != nil {
		t.Fatalf("put after ClearRules: %v", err)
	}
}

func TestFailOnce(t *testing.T) {
	b := wrap(t)
	b.FailOnce("", "", 1, backend.ErrUnavailable)
	if err := put(b, t, "a"); err != nil {
		t.Fatal(err)
	}
	_, err := b.Get(t.Context(), "a")
	backendtest.RequireKind(t, err, backend.ErrUnavailable, "a")
	if got, err := b.Get(t.Context(), "a"); err != nil || string(got) != "a" {
		t.Fatalf("get after the one failure: %q, %v", got, err)
	}
}

// TestAfterEffect: the write lands, its answer is lost.
func TestAfterEffect(t *testing.T) {
	b := wrap(t)
	b.Add(faulty.Rule{Op: faulty.OpPut, Kind: backend.ErrUnavailable, AfterEffect: true, Times: 1})
	backendtest.RequireKind(t, put(b, t, "data/x"), backend.ErrUnavailable, "data/x")
	if got, err := b.Inner().Get(t.Context(), "data/x"); err != nil || string(got) != "data/x" {
		t.Fatalf("the put whose answer was lost did not land: %q, %v", got, err)
	}
}

// TestCrash: after a crash nothing reaches the backend, which keeps what was written
// before; ClearRules is the restart.
func TestCrash(t *testing.T) {
	b := wrap(t)
	if err := put(b, t, "data/1"); err != nil {
		t.Fatal(err)
	}
	b.Crash()
	if !b.Crashed() {
		t.Fatal("Crashed() = false after Crash")
	}
	for _, err := range []error{
		put(b, t, "data/2"),
		b.Delete(t.Context(), "data/1"),
		b.List(t.Context(), "", func(backend.ObjectInfo) error { return nil }),
	} {
		if !errors.Is(err, faulty.ErrCrashed) {
			t.Fatalf("a call after the crash: %v, want ErrCrashed", err)
		}
		var be *backend.Error
		if !errors.As(err, &be) {
			t.Fatalf("%v is not a *backend.Error", err)
		}
	}
	if _, err := b.Inner().Stat(t.Context(), "data/1"); err != nil {
		t.Fatalf("what was written before the crash: %v", err)
	}
	if _, err := b.Inner().Stat(t.Context(), "data/2"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a put after the crash reached the backend: %v", err)
	}
	b.ClearRules()
	if err := put(b, t, "data/2"); err != nil {
		t.Fatalf("put after the restart: %v", err)
	}
}

// TestCrashAfter crashes between two writes of the same kind, as the store's crash
// tests do: the first lands, the second and everything after does not.
func TestCrashAfter(t *testing.T) {
	b := wrap(t)
	b.CrashAfter(faulty.OpPut, "snapshots/", 1)
	for _, name := range []string{"data/a", "snapshots/1", "data/b"} {
		if err := put(b, t, name); err != nil {
			t.Fatalf("put %s before the crash: %v", name, err)
		}
	}
	err := put(b, t, "snapshots/2")
	if !errors.Is(err, faulty.ErrCrashed) {
		t.Fatalf("the second snapshot put: %v, want ErrCrashed", err)
	}
	if _, err := b.Get(t.Context(), "data/a"); !errors.Is(err, faulty.ErrCrashed) {
		t.Fatalf("a get after the crash: %v, want ErrCrashed", err)
	}
	var names []string
	_ = b.Inner().List(t.Context(), "", func(oi backend.ObjectInfo) error { names = append(names, oi.Name); return nil })
	if fmt.Sprint(names) != "[data/a data/b snapshots/1]" {
		t.Fatalf("after the crash the backend holds %v", names)
	}
}

func TestUnknownOpPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("a rule for an unknown operation was accepted")
		}
	}()
	wrap(t).FailAfter("write", "", 0, backend.ErrFull)
}
