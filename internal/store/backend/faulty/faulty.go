// Package faulty wraps a real backend and makes chosen calls fail, for the store's
// fault and crash tests: storage filling up after N writes, an answer lost after the
// write landed, the process dying between two writes. It is no mock: every call that
// is not made to fail goes to the wrapped backend, whose state is what a restarted
// process would find.
package faulty

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// Operations, as named in backend.Error.Op. A rule's Op "" matches them all.
const (
	OpPut    = "put"
	OpGet    = "get"
	OpRead   = "read"
	OpStat   = "stat"
	OpList   = "list"
	OpDelete = "delete"
	OpRetain = "retain"
)

// ErrCrashed is the cause of every call after a simulated crash.
var ErrCrashed = errors.New("faulty: the process crashed (simulated)")

// Rule makes matching calls fail.
type Rule struct {
	// Op is the operation matched ("" for any); Prefix the start of the object name
	// (for List, of the listed prefix) matched, "" for any.
	Op, Prefix string
	// Skip matching calls pass first; then Times calls fail (0: every later one).
	Skip, Times int
	// Kind is the error kind of the failure (backend.ErrFull, ErrUnavailable, …).
	Kind error
	// AfterEffect lets the call reach the backend before it fails: the write landed
	// but its answer was lost.
	AfterEffect bool
	// Crash makes the failure a crash: this call and every later one, of any op,
	// fails with ErrCrashed until ClearRules.
	Crash bool
}

type rule struct {
	Rule
	seen int
}

// Backend is a backend.Backend whose calls fail as its rules say.
type Backend struct {
	inner backend.Backend

	mu      sync.Mutex
	rules   []*rule
	crashed bool
	calls   map[string]int
}

// Wrap returns b with no rules: every call goes through until rules are added.
func Wrap(b backend.Backend) *Backend {
	return &Backend{inner: b, calls: map[string]int{}}
}

// Inner is the wrapped backend, for looking at what a crash left behind.
func (b *Backend) Inner() backend.Backend { return b.inner }

// Add adds a rule. Rules are matched in the order added; each counts the calls it
// matches, and the first one due to fail decides.
func (b *Backend) Add(r Rule) {
	switch r.Op {
	case "", OpPut, OpGet, OpRead, OpStat, OpList, OpDelete, OpRetain:
	default:
		panic(fmt.Sprintf("faulty: unknown operation %q", r.Op))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = append(b.rules, &rule{Rule: r})
}

// FailAfter lets the first n calls of op on names starting with namePrefix through,
// and fails the (n+1)-th and every later one with kind (a *backend.Error), as a
// full disk does, until ClearRules.
func (b *Backend) FailAfter(op, namePrefix string, n int, kind error) {
	b.Add(Rule{Op: op, Prefix: namePrefix, Skip: n, Kind: kind})
}

// FailOnce fails only the (n+1)-th matching call with kind, as a passing outage does.
func (b *Backend) FailOnce(op, namePrefix string, n int, kind error) {
	b.Add(Rule{Op: op, Prefix: namePrefix, Skip: n, Times: 1, Kind: kind})
}

// CrashAfter crashes the backend at the (n+1)-th matching call: it and every later
// call fail with ErrCrashed, and nothing more reaches the wrapped backend.
func (b *Backend) CrashAfter(op, namePrefix string, n int) {
	b.Add(Rule{Op: op, Prefix: namePrefix, Skip: n, Times: 1, Crash: true})
}

// Crash crashes the backend now: every later call fails with ErrCrashed, as if the
// process had died; the wrapped backend keeps what was written before.
func (b *Backend) Crash() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.crashed = true
}

// Crashed reports whether the backend has crashed.
func (b *Backend) Crashed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.crashed
}

// ClearRules removes every rule and ends a crash; call counts are kept.
func (b *Backend) ClearRules() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = nil
	b.crashed = false
}

// Calls is the number of calls of op made so far (failed ones included); op "" counts
// every operation.
func (b *Backend) Calls(op string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if op == "" {
		total := 0
		for _, n := range b.calls {
			total += n
		}
		return total
	}
	return b.calls[op]
}

// ResetCalls sets the call counts back to zero.
func (b *Backend) ResetCalls() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.calls)
}

// enter counts a call and says whether it fails (fail) and whether it reaches the
// wrapped backend first (after).
func (b *Backend) enter(op, name string) (after bool, fail error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls[op]++
	if b.crashed {
		return false, &backend.Error{Op: op, Name: name, Err: ErrCrashed}
	}
	var due *rule
	for _, r := range b.rules {
		if (r.Op != "" && r.Op != op) || !strings.HasPrefix(name, r.Prefix) {
			continue
		}
		r.seen++
		if due == nil && r.seen > r.Skip && (r.Times == 0 || r.seen-r.Skip <= r.Times) {
			due = r
		}
	}
	if due == nil {
		return false, nil
	}
	if due.Crash {
		b.crashed = true
		return due.AfterEffect, &backend.Error{Op: op, Name: name, Err: ErrCrashed}
	}
	return due.AfterEffect, &backend.Error{Op: op, Name: name, Kind: due.Kind,
		Err: fmt.Errorf("faulty: injected at matching call %d", due.seen)}
}

// Put implements backend.Backend.
func (b *Backend) Put(ctx context.Context, name string, data []byte, opts backend.PutOptions) error {
	after, fail := b.enter(OpPut, name)
	if fail != nil && !after {
		return fail
	}
	err := b.inner.Put(ctx, name, data, opts)
	if fail != nil {
		return fail
	}
	return err
}

// Get implements backend.Backend.
func (b *Backend) Get(ctx context.Context, name string) ([]byte, error) {
	after, fail := b.enter(OpGet, name)
	if fail != nil && !after {
		return nil, fail
	}
	data, err := b.inner.Get(ctx, name)
	if fail != nil {
		return nil, fail
	}
	return data, err
}

// ReadAt implements backend.Backend.
func (b *Backend) ReadAt(ctx context.Context, name string, off, length int64) ([]byte, error) {
	after, fail := b.enter(OpRead, name)
	if fail != nil && !after {
		return nil, fail
	}
	data, err := b.inner.ReadAt(ctx, name, off, length)
	if fail != nil {
		return nil, fail
	}
	return data, err
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	after, fail := b.enter(OpStat, name)
	if fail != nil && !after {
		return backend.ObjectInfo{}, fail
	}
	info, err := b.inner.Stat(ctx, name)
	if fail != nil {
		return backend.ObjectInfo{}, fail
	}
	return info, err
}

// List implements backend.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	after, fail := b.enter(OpList, prefix)
	if fail != nil && !after {
		return fail
	}
	err := b.inner.List(ctx, prefix, fn)
	if fail != nil {
		return fail
	}
	return err
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	after, fail := b.enter(OpDelete, name)
	if fail != nil && !after {
		return fail
	}
	err := b.inner.Delete(ctx, name)
	if fail != nil {
		return fail
	}
	return err
}

// Retain implements backend.Backend.
func (b *Backend) Retain(ctx context.Context, name string, until time.Time) error {
	after, fail := b.enter(OpRetain, name)
	if fail != nil && !after {
		return fail
	}
	err := b.inner.Retain(ctx, name, until)
	if fail != nil {
		return fail
	}
	return err
}

// Capabilities implements backend.Backend: the wrapped backend's.
func (b *Backend) Capabilities() backend.Capabilities { return b.inner.Capabilities() }

// Location implements backend.Backend: the wrapped backend's.
func (b *Backend) Location() string { return b.inner.Location() }

// Close implements backend.Backend: it closes the wrapped backend, crashed or not.
func (b *Backend) Close() error { return b.inner.Close() }
