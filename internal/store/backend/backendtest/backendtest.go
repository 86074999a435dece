// Package backendtest is the conformance suite of staging store backends: every
// backend.Backend (file://, s3://, and wrappers such as faulty) runs Run from its own
// tests, so the store can rely on one behaviour whatever holds its objects.
package backendtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// Run runs the conformance suite. open returns a new, empty backend for one subtest
// (a fresh directory, a fresh bucket prefix); Run closes it when the subtest ends.
// Subtests run one after the other: the machine's cores are shared.
func Run(t *testing.T, open func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, b backend.Backend)
	}{
		{"RoundTrip", testRoundTrip},
		{"Replace", testReplace},
		{"ReplaceIsAtomic", testReplaceIsAtomic},
		{"ReadAt", testReadAt},
		{"Stat", testStat},
		{"List", testList},
		{"ListShowsOnlyWholeObjects", testListWholeObjects},
		{"Delete", testDelete},
		{"PrefixDirectoryIsNotAnObject", testPrefixDirectory},
		{"InvalidNames", testInvalidNames},
		{"ConcurrentPuts", testConcurrentPuts},
		{"CancelledContext", testCancelledContext},
		{"Retention", testRetention},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := open(t)
			t.Cleanup(func() {
				if err := b.Close(); err != nil {
					t.Errorf("close %s: %v", b.Location(), err)
				}
			})
			// A hang guard, not a timing assertion: no subtest needs more than a
			// fraction of this.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			tc.fn(t, ctx, b)
		})
	}
}

// Data returns n deterministic pseudo-random bytes derived from seed.
func Data(seed string, n int) []byte {
	key := sha256.Sum256([]byte(seed))
	buf := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(buf)
	return buf
}

// RequireKind fails the test unless err is a *backend.Error naming name whose chain
// matches kind (kind nil: any kind), and whose message names the object.
func RequireKind(t testing.TB, err, kind error, name string) *backend.Error {
	t.Helper()
	if err == nil {
		if kind == nil {
			t.Fatalf("%q: want an error, got none", name)
		}
		t.Fatalf("%q: want an error matching %q, got none", name, kind)
	}
	var be *backend.Error
	if !errors.As(err, &be) {
		t.Fatalf("%s: error %q is a %T, not a *backend.Error", name, err, err)
	}
	if be.Name != name {
		t.Fatalf("error %q names %q, want %q", err, be.Name, name)
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Fatalf("%s: error %q does not match %q", name, err, kind)
	}
	if name != "" && !strings.Contains(err.Error(), name) {
		t.Fatalf("error message %q does not name %q", err, name)
	}
	return be
}

func mustPut(t testing.TB, ctx context.Context, b backend.Backend, name string, data []byte) {
	t.Helper()
	if err := b.Put(ctx, name, data, backend.PutOptions{}); err != nil {
		t.Fatalf("put %s (%d bytes): %v", name, len(data), err)
	}
}

func mustGet(t testing.TB, ctx context.Context, b backend.Backend, name string, want []byte) {
	t.Helper()
	got, err := b.Get(ctx, name)
	if err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	requireEqual(t, name, got, want)
}

func requireEqual(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	t.Fatalf("%s: got %d bytes, want %d; first difference at byte %d", what, len(got), len(want), i)
}

func list(t testing.TB, ctx context.Context, b backend.Backend, prefix string) []backend.ObjectInfo {
	t.Helper()
	var out []backend.ObjectInfo
	if err := b.List(ctx, prefix, func(oi backend.ObjectInfo) error {
		out = append(out, oi)
		return nil
	}); err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return out
}

func names(infos []backend.ObjectInfo) []string {
	out := make([]string, len(infos))
	for i, oi := range infos {
		out[i] = oi.Name
	}
	return out
}

func testRoundTrip(t *testing.T, ctx context.Context, b backend.Backend) {
	for _, tc := range []struct {
		name string
		size int
	}{
		{"rt/empty", 0},
		{"rt/one", 1},
		{"rt/small", 4097},
		{"rt/large-64mib", 64 << 20},
	} {
		data := Data(tc.name, tc.size)
		mustPut(t, ctx, b, tc.name, data)
		mustGet(t, ctx, b, tc.name, data)
		info, err := b.Stat(ctx, tc.name)
		if err != nil {
			t.Fatalf("stat %s: %v", tc.name, err)
		}
		if info.Size != int64(tc.size) || info.Name != tc.name {
			t.Fatalf("stat %s = %+v, want name %s size %d", tc.name, info, tc.name, tc.size)
		}
		if tc.size > 1<<20 {
			off := int64(tc.size - 1<<20 - 7)
			got, err := b.ReadAt(ctx, tc.name, off, 1<<20)
			if err != nil {
				t.Fatalf("read 1 MiB at %d of %s: %v", off, tc.name, err)
			}
			requireEqual(t, tc.name+" range", got, data[off:off+1<<20])
		}
	}
	if got := names(list(t, ctx, b, "rt/")); len(got) != 4 {
		t.Fatalf("list rt/ = %v, want the 4 objects put", got)
	}
}

func testReplace(t *testing.T, ctx context.Context, b backend.Backend) {
	const name = "rep/obj"
	for i, size := range []int{1000, 10, 0, 70000} {
		data := Data(fmt.Sprint(name, i), size)
		mustPut(t, ctx, b, name, data)
		mustGet(t, ctx, b, name, data)
		info, err := b.Stat(ctx, name)
		if err != nil {
			t.Fatalf("stat %s after replace %d: %v", name, i, err)
		}
		if info.Size != int64(size) {
			t.Fatalf("stat %s after replace %d: size %d, want %d", name, i, info.Size, size)
		}
		if got := names(list(t, ctx, b, "rep/")); len(got) != 1 || got[0] != name {
			t.Fatalf("list rep/ after replace %d = %v, want [%s]", i, got, name)
		}
	}
}

// testReplaceIsAtomic replaces one object again and again while readers read it: each
// read sees the whole old or the whole new object, never a mix or a truncation.
func testReplaceIsAtomic(t *testing.T, ctx context.Context, b backend.Backend) {
	const (
		name    = "atomic/obj"
		puts    = 24
		readers = 3
		maxRead = 400 // per reader: bounds the test in count, whatever the speed
	)
	versions := [][]byte{Data("atomic-a", 2<<20), Data("atomic-b", 3<<20+17)}
	mustPut(t, ctx, b, name, versions[0])

	var (
		done   atomic.Bool
		reads  atomic.Int64
		failed = make(chan string, readers*2)
		wg     sync.WaitGroup
	)
	const head = 1 << 20
	for r := range readers {
		wg.Go(func() {
			for i := 0; i < maxRead && !done.Load(); i++ {
				if r == 0 {
					// A range read of the head is all from one version too.
					got, err := b.ReadAt(ctx, name, 0, head)
					if err != nil {
						failed <- fmt.Sprintf("read during replace: %v", err)
						return
					}
					if !bytes.Equal(got, versions[0][:head]) && !bytes.Equal(got, versions[1][:head]) {
						failed <- fmt.Sprintf("a range read returned %d bytes that are neither version", len(got))
						return
					}
				} else {
					got, err := b.Get(ctx, name)
					if err != nil {
						failed <- fmt.Sprintf("get during replace: %v", err)
						return
					}
					if !bytes.Equal(got, versions[0]) && !bytes.Equal(got, versions[1]) {
						failed <- fmt.Sprintf("get returned %d bytes that are neither the old (%d) nor the new (%d) object",
							len(got), len(versions[0]), len(versions[1]))
						return
					}
				}
				reads.Add(1)
			}
		})
	}
	var putErr error
	for i := 1; i <= puts && putErr == nil; i++ {
		putErr = b.Put(ctx, name, versions[i%2], backend.PutOptions{})
	}
	done.Store(true)
	wg.Wait()
	close(failed)
	if putErr != nil {
		t.Fatalf("put during reads: %v", putErr)
	}
	for msg := range failed {
		t.Fatal(msg)
	}
	if reads.Load() == 0 {
		t.Fatal("no read completed during the replacements")
	}
	mustGet(t, ctx, b, name, versions[puts%2])
}

func testReadAt(t *testing.T, ctx context.Context, b backend.Backend) {
	const name = "ra/obj"
	data := Data(name, 1000)
	mustPut(t, ctx, b, name, data)
	for _, tc := range []struct {
		off, n int64
		kind   error
	}{
		{0, 1000, nil},
		{0, 1, nil},
		{10, 20, nil},
		{999, 1, nil},
		{500, 0, nil},
		{1000, 0, nil}, // zero bytes at the end
		{990, 20, backend.ErrOutOfRange},
		{1000, 1, backend.ErrOutOfRange},
		{1001, 0, backend.ErrOutOfRange},
		{5000, 10, backend.ErrOutOfRange},
		{-1, 10, backend.ErrOutOfRange},
		{0, -1, backend.ErrOutOfRange},
		{0, 1 << 40, backend.ErrOutOfRange}, // must fail, not allocate a TiB
	} {
		got, err := b.ReadAt(ctx, name, tc.off, tc.n)
		if tc.kind != nil {
			RequireKind(t, err, tc.kind, name)
			continue
		}
		if err != nil {
			t.Fatalf("read %d bytes at %d of a 1000-byte object: %v", tc.n, tc.off, err)
		}
		requireEqual(t, fmt.Sprintf("read %d at %d", tc.n, tc.off), got, data[tc.off:tc.off+tc.n])
	}
	_, err := b.ReadAt(ctx, "ra/missing", 0, 1)
	RequireKind(t, err, backend.ErrNotFound, "ra/missing")
	_, err = b.ReadAt(ctx, "ra/missing", 0, 0)
	RequireKind(t, err, backend.ErrNotFound, "ra/missing")
	_, err = b.Get(ctx, "ra/missing")
	RequireKind(t, err, backend.ErrNotFound, "ra/missing")
}

func testStat(t *testing.T, ctx context.Context, b backend.Backend) {
	const name = "st/obj"
	before := time.Now()
	mustPut(t, ctx, b, name, Data(name, 1234))
	info, err := b.Stat(ctx, name)
	if err != nil {
		t.Fatalf("stat %s: %v", name, err)
	}
	if info.Name != name || info.Size != 1234 {
		t.Fatalf("stat = %+v, want name %s, size 1234", info, name)
	}
	// Object stores keep their own clock and truncate to the second: a sanity bound.
	if info.ModTime.IsZero() || info.ModTime.Before(before.Add(-time.Hour)) || info.ModTime.After(time.Now().Add(time.Hour)) {
		t.Fatalf("stat %s: modification time %v is not around %v", name, info.ModTime, before)
	}
	_, err = b.Stat(ctx, "st/missing")
	RequireKind(t, err, backend.ErrNotFound, "st/missing")
}

func testList(t *testing.T, ctx context.Context, b backend.Backend) {
	// Byte order of the punctuation: '-' < '.' < '/' < '0' < '_' < 'a'.
	all := []string{
		"dat",
		"data-x",
		"data.x",
		"data/a",
		"data/b/c",
		"data/b/d",
		"data0",
		"data_y",
		"database",
		"datb",
		"index/x",
		"z",
	}
	// Put in an order that is not the lexical one.
	for i := len(all) - 1; i >= 0; i-- {
		mustPut(t, ctx, b, all[i], Data(all[i], 10+i))
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", all},
		{"data/", []string{"data/a", "data/b/c", "data/b/d"}},
		{"data/b", []string{"data/b/c", "data/b/d"}},
		{"data/b/", []string{"data/b/c", "data/b/d"}},
		{"data", all[1:9]},
		{"dat", all[:10]},
		{"data/a", []string{"data/a"}},
		{"data/ab", nil},
		{"nope", nil},
		{"nope/", nil},
		{"index/", []string{"index/x"}},
	} {
		got := list(t, ctx, b, tc.prefix)
		if fmt.Sprint(names(got)) != fmt.Sprint(tc.want) {
			t.Fatalf("list %q = %v, want %v", tc.prefix, names(got), tc.want)
		}
		for _, oi := range got {
			want := int64(10 + indexOf(all, oi.Name))
			if oi.Size != want || oi.ModTime.IsZero() {
				t.Fatalf("list %q: %+v, want size %d and a modification time", tc.prefix, oi, want)
			}
		}
	}

	// An error from fn stops the listing and is returned.
	stop := errors.New("enough")
	calls := 0
	err := b.List(ctx, "", func(backend.ObjectInfo) error {
		calls++
		if calls == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 2 {
		t.Fatalf("list stopped by fn: error %v after %d calls, want %v after 2", err, calls, stop)
	}

	for _, bad := range []string{"../", "/data", "data//", "Data", "data/../", ".tmp"} {
		err := b.List(ctx, bad, func(oi backend.ObjectInfo) error {
			return fmt.Errorf("listed %s under an invalid prefix", oi.Name)
		})
		RequireKind(t, err, nil, bad)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// testListWholeObjects lists while large objects are written: a listing shows an
// object whole (its full size) or not at all, and never a temporary file.
func testListWholeObjects(t *testing.T, ctx context.Context, b backend.Backend) {
	const (
		writers    = 2
		perWriter  = 4
		size       = 4 << 20
		maxListing = 300
	)
	want := map[string]bool{}
	for w := range writers {
		for i := range perWriter {
			want[fmt.Sprintf("big/%d-%d", w, i)] = true
		}
	}
	var (
		done atomic.Int32
		wg   sync.WaitGroup
		errs = make(chan error, writers)
	)
	for w := range writers {
		wg.Go(func() {
			defer done.Add(1)
			for i := range perWriter {
				name := fmt.Sprintf("big/%d-%d", w, i)
				if err := b.Put(ctx, name, Data(name, size), backend.PutOptions{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	listings := 0
	for ; listings < maxListing && done.Load() < writers; listings++ {
		err := b.List(ctx, "", func(oi backend.ObjectInfo) error {
			if !want[oi.Name] {
				return fmt.Errorf("listed %q, which no Put wrote", oi.Name)
			}
			if oi.Size != size {
				return fmt.Errorf("listed %s with %d bytes before its Put of %d returned", oi.Name, oi.Size, size)
			}
			return nil
		})
		if err != nil {
			done.Store(writers) // stop early; the writers finish their puts
			wg.Wait()
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("put: %v", err)
	}
	if got := list(t, ctx, b, ""); len(got) != len(want) {
		t.Fatalf("after the puts, list = %v, want %d objects", names(got), len(want))
	}
	t.Logf("%d listings during the puts", listings)
}

func testDelete(t *testing.T, ctx context.Context, b backend.Backend) {
	const name = "del/obj"
	mustPut(t, ctx, b, name, Data(name, 100))
	mustPut(t, ctx, b, "del/other", []byte("stays"))
	if err := b.Delete(ctx, name); err != nil {
		t.Fatalf("delete %s: %v", name, err)
	}
	_, err := b.Get(ctx, name)
	RequireKind(t, err, backend.ErrNotFound, name)
	_, err = b.Stat(ctx, name)
	RequireKind(t, err, backend.ErrNotFound, name)
	if err := b.Delete(ctx, name); err != nil {
		t.Fatalf("delete %s a second time: %v, want nil (idempotent)", name, err)
	}
	if err := b.Delete(ctx, "del/never-was"); err != nil {
		t.Fatalf("delete an object that never existed: %v, want nil", err)
	}
	if got := names(list(t, ctx, b, "")); fmt.Sprint(got) != "[del/other]" {
		t.Fatalf("list after delete = %v, want [del/other]", got)
	}
	mustGet(t, ctx, b, "del/other", []byte("stays"))
	// A deleted name can be used again.
	mustPut(t, ctx, b, name, []byte("again"))
	mustGet(t, ctx, b, name, []byte("again"))
}

// testPrefixDirectory: "a/b" existing says nothing of an object "a".
func testPrefixDirectory(t *testing.T, ctx context.Context, b backend.Backend) {
	mustPut(t, ctx, b, "pd/dir/x", []byte("x"))
	const name = "pd/dir"
	_, err := b.Get(ctx, name)
	RequireKind(t, err, backend.ErrNotFound, name)
	_, err = b.ReadAt(ctx, name, 0, 1)
	RequireKind(t, err, backend.ErrNotFound, name)
	_, err = b.Stat(ctx, name)
	RequireKind(t, err, backend.ErrNotFound, name)
	if err := b.Delete(ctx, name); err != nil {
		t.Fatalf("delete %s, which is no object: %v, want nil", name, err)
	}
	mustGet(t, ctx, b, "pd/dir/x", []byte("x"))
	// Beneath an object: "pd/dir/x/y" cannot exist either.
	_, err = b.Get(ctx, "pd/dir/x/y")
	RequireKind(t, err, backend.ErrNotFound, "pd/dir/x/y")
}

func testInvalidNames(t *testing.T, ctx context.Context, b backend.Backend) {
	bad := []string{
		"", "/abs", "trailing/", "a//b", "../escape", "a/../../b", "./a", "a/./b", ".hidden",
		"a/.tmp-1", "Upper", "sp ace", "nul\x00", "back\\slash", "é", strings.Repeat("a", 256),
		strings.Repeat("a/", 256) + "a",
	}
	for _, name := range bad {
		RequireKind(t, b.Put(ctx, name, []byte("x"), backend.PutOptions{}), nil, name)
		_, err := b.Get(ctx, name)
		RequireKind(t, err, nil, name)
		_, err = b.ReadAt(ctx, name, 0, 1)
		RequireKind(t, err, nil, name)
		_, err = b.Stat(ctx, name)
		RequireKind(t, err, nil, name)
		RequireKind(t, b.Delete(ctx, name), nil, name)
		RequireKind(t, b.Retain(ctx, name, time.Now().Add(time.Hour)), nil, name)
	}
	if got := list(t, ctx, b, ""); len(got) != 0 {
		t.Fatalf("invalid names stored objects: %v", names(got))
	}
	// The longest valid names work: 255-byte elements, and 512 bytes in all.
	long := strings.Repeat("a", 255) + "/" + strings.Repeat("b", 255)
	mustPut(t, ctx, b, long, []byte("long"))
	mustGet(t, ctx, b, long, []byte("long"))
	long = strings.Repeat("c/", 255) + "dd"
	mustPut(t, ctx, b, long, []byte("long"))
	mustGet(t, ctx, b, long, []byte("long"))
}

func testConcurrentPuts(t *testing.T, ctx context.Context, b backend.Backend) {
	const (
		goroutines = 16
		each       = 8
	)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				// Goroutines share directories, so directory creation races too.
				name := fmt.Sprintf("cp/%d/%02d-%d", i%4, g, i)
				if err := b.Put(ctx, name, Data(name, 1000*(g+1)+i), backend.PutOptions{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent put: %v", err)
	}
	got := list(t, ctx, b, "cp/")
	if len(got) != goroutines*each {
		t.Fatalf("list cp/ = %d objects, want %d", len(got), goroutines*each)
	}
	for g := range goroutines {
		for i := range each {
			name := fmt.Sprintf("cp/%d/%02d-%d", i%4, g, i)
			mustGet(t, ctx, b, name, Data(name, 1000*(g+1)+i))
		}
	}
}

func testCancelledContext(t *testing.T, ctx context.Context, b backend.Backend) {
	const name = "cx/obj"
	mustPut(t, ctx, b, name, []byte("kept"))
	cctx, cancel := context.WithCancel(ctx)
	cancel()

	requireCancelled := func(err error, name string) {
		t.Helper()
		RequireKind(t, err, context.Canceled, name)
	}
	requireCancelled(b.Put(cctx, "cx/new", []byte("x"), backend.PutOptions{}), "cx/new")
	requireCancelled(b.Put(cctx, name, []byte("replaced"), backend.PutOptions{}), name)
	_, err := b.Get(cctx, name)
	requireCancelled(err, name)
	_, err = b.ReadAt(cctx, name, 0, 1)
	requireCancelled(err, name)
	_, err = b.Stat(cctx, name)
	requireCancelled(err, name)
	requireCancelled(b.Delete(cctx, name), name)
	requireCancelled(b.Retain(cctx, name, time.Now().Add(time.Hour)), name)
	called := false
	err = b.List(cctx, "cx/", func(backend.ObjectInfo) error { called = true; return nil })
	requireCancelled(err, "cx/")
	if called {
		t.Fatal("list with a cancelled context called fn")
	}

	// Nothing changed.
	mustGet(t, ctx, b, name, []byte("kept"))
	_, err = b.Stat(ctx, "cx/new")
	RequireKind(t, err, backend.ErrNotFound, "cx/new")

	// A context cancelled while listing stops the listing.
	for i := range 5 {
		mustPut(t, ctx, b, fmt.Sprintf("cx/l%d", i), []byte("x"))
	}
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	calls := 0
	err = b.List(lctx, "cx/l", func(backend.ObjectInfo) error {
		calls++
		lcancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Fatalf("list cancelled in fn: error %v after %d calls, want context.Canceled after 1", err, calls)
	}
}

// testRetention: with native retention, a retained object cannot be deleted or
// replaced until its time has passed, and then it can. Without, Retain says so.
func testRetention(t *testing.T, ctx context.Context, b backend.Backend) {
	if !b.Capabilities().Retention {
		const name = "ret/obj"
		mustPut(t, ctx, b, name, []byte("x"))
		RequireKind(t, b.Retain(ctx, name, time.Now().Add(time.Hour)), backend.ErrRetentionUnsupported, name)
		// RetainUntil is ignored: the store enforces its own locks.
		if err := b.Put(ctx, name, []byte("y"), backend.PutOptions{RetainUntil: time.Now().Add(time.Hour)}); err != nil {
			t.Fatalf("put with RetainUntil on a backend without retention: %v", err)
		}
		if err := b.Delete(ctx, name); err != nil {
			t.Fatalf("delete on a backend without retention: %v", err)
		}
		return
	}

	const (
		onPut    = "ret/on-put"
		retained = "ret/retained"
		free     = "ret/free"
	)
	until := time.Now().Add(4 * time.Second)
	if err := b.Put(ctx, onPut, []byte("locked at put"), backend.PutOptions{RetainUntil: until}); err != nil {
		t.Fatalf("put with RetainUntil: %v", err)
	}
	mustPut(t, ctx, b, retained, []byte("locked later"))
	mustPut(t, ctx, b, free, []byte("free"))
	if err := b.Retain(ctx, retained, until); err != nil {
		t.Fatalf("retain %s: %v", retained, err)
	}
	// A shorter retention never shortens the one in force.
	if err := b.Retain(ctx, retained, time.Now().Add(time.Second)); err != nil {
		t.Fatalf("retain %s for less time: %v, want nil (and no change)", retained, err)
	}
	RequireKind(t, b.Retain(ctx, "ret/missing", until), backend.ErrNotFound, "ret/missing")

	requireLocked := func() {
		t.Helper()
		for _, name := range []string{onPut, retained} {
			RequireKind(t, b.Delete(ctx, name), backend.ErrLocked, name)
			RequireKind(t, b.Put(ctx, name, []byte("replacement"), backend.PutOptions{}), backend.ErrLocked, name)
		}
		mustGet(t, ctx, b, onPut, []byte("locked at put"))
		mustGet(t, ctx, b, retained, []byte("locked later"))
	}
	requireLocked()
	if err := b.Delete(ctx, free); err != nil {
		t.Fatalf("delete an object without retention: %v", err)
	}

	// Past the shorter retention asked for, the longer one still holds.
	sleepUntil(t, ctx, time.Now().Add(1500*time.Millisecond))
	requireLocked()

	// Past the retention (object stores round it up to the second), both go.
	sleepUntil(t, ctx, until.Add(1500*time.Millisecond))
	if err := b.Put(ctx, onPut, []byte("replaced"), backend.PutOptions{}); err != nil {
		t.Fatalf("replace %s after its retention: %v", onPut, err)
	}
	mustGet(t, ctx, b, onPut, []byte("replaced"))
	for _, name := range []string{onPut, retained} {
		if err := b.Delete(ctx, name); err != nil {
			t.Fatalf("delete %s after its retention: %v", name, err)
		}
		_, err := b.Get(ctx, name)
		RequireKind(t, err, backend.ErrNotFound, name)
	}
	if got := list(t, ctx, b, "ret/"); len(got) != 0 {
		t.Fatalf("list ret/ after the deletes = %v, want none", names(got))
	}
}

func sleepUntil(t *testing.T, ctx context.Context, when time.Time) {
	t.Helper()
	select {
	case <-time.After(time.Until(when)):
	case <-ctx.Done():
		t.Fatalf("waiting for retention to pass: %v", ctx.Err())
	}
}
