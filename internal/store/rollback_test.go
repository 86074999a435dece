package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

func seal(t *testing.T, r *Repo, id string, heads ...*Head) PIT {
	t.Helper()
	p, err := r.SealPIT(context.Background(), SealRequest{ID: id, Server: heads[0].Server(), Time: time.Now(), Level: consistency.Crash, Heads: heads})
	if err != nil {
		t.Fatalf("seal %s: %v", id, err)
	}
	return p
}

func getObject(t *testing.T, be backend.Backend, name string) []byte {
	t.Helper()
	b, err := be.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func putObject(t *testing.T, be backend.Backend, name string, b []byte) {
	t.Helper()
	if err := be.Put(context.Background(), name, b, backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// verifyErrors runs Verify and returns its errors joined, one a line.
func verifyErrors(t *testing.T, r *Repo) string {
	t.Helper()
	rep, err := r.Verify(context.Background(), VerifyOptions{})
	if err != nil {
		t.Fatalf("verify could not run: %v", err)
	}
	return strings.Join(rep.Errors, "\n")
}

// An attacker with write access to the bucket copies a head object aside and puts it
// back after a PIT was sealed from a newer one: the replicator (OpenHead) refuses the
// head with ErrRollback, naming the object and both versions, and Verify reports it.
func TestOldHeadPutBackIsARollback(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, testOptions())
	h, err := r.OpenHead(ctx, "s-1", "vda", 40*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, model{}, map[uint64]uint32{0: 1, 17: 2})
	seal(t, r, "pit-1", h)
	name := "heads/s-1/vda/head.0000000000000001" // its first writer's (fence.go)
	old, oldVersion := getObject(t, be, name), h.Version()
	write(t, h, model{}, map[uint64]uint32{0: 3, 30: 1})
	p2 := seal(t, r, "pit-2", h)
	if v := p2.Volumes[0].HeadVersion; v != h.Version() || v <= oldVersion {
		t.Fatalf("PIT recorded head version %d; the head is at %d, was %d", v, h.Version(), oldVersion)
	}
	h.Close()
	if got := verifyErrors(t, r); got != "" {
		t.Fatalf("verify of an intact store: %s", got)
	}
	putObject(t, be, name, old)

	for _, rr := range []*Repo{r, reopen(t, be, mk, testOptions())} { // this process, and a restarted one
		_, err = rr.OpenHead(ctx, "s-1", "vda", 40*testBS, HeadOptions{})
		if !errors.Is(err, ErrRollback) {
			t.Fatalf("open of a put-back head: %v, want ErrRollback", err)
		}
		for _, want := range []string{name, "pit-2", " " + itoa(oldVersion) + ",", "version " + itoa(p2.Volumes[0].HeadVersion)} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("the error does not say %q: %v", want, err)
			}
		}
	}
	got := verifyErrors(t, r)
	if !strings.Contains(got, name) || !strings.Contains(got, "pit-2 sealed version "+itoa(p2.Volumes[0].HeadVersion)) {
		t.Fatalf("verify does not report the put-back head: %q", got)
	}

	// A deleted head is a rollback too.
	if err := be.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := r.OpenHead(ctx, "s-1", "vda", 40*testBS, HeadOptions{}); !errors.Is(err, ErrRollback) {
		t.Fatalf("open of a deleted head: %v, want ErrRollback", err)
	}
	if got := verifyErrors(t, r); !strings.Contains(got, "heads/s-1/vda/head: the head is missing") {
		t.Fatalf("verify does not report the deleted head: %q", got)
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func openDir(t *testing.T, dir string) backend.Backend {
	t.Helper()
	be, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// An old head put back while journals written after a newer checkpoint exist is
// caught without any PIT: the journals' sequence numbers do not follow its own.
func TestOldHeadBeforeLaterJournalsIsARollback(t *testing.T) {
	ctx := context.Background()
	r, be, _ := newTestRepo(t, testOptions())
	h, err := r.OpenHead(ctx, "s-2", "vda", 40*testBS, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	write(t, h, m, map[uint64]uint32{1: 1})
	if _, err := h.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	name := "heads/s-2/vda/head.0000000000000001" // its first writer's (fence.go)
	old := getObject(t, be, name)
	write(t, h, m, map[uint64]uint32{2: 1})
	if _, err := h.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	write(t, h, m, map[uint64]uint32{3: 1})
	if err := h.Flush(ctx); err != nil { // a journal after the second checkpoint
		t.Fatal(err)
	}
	h.Close()
	putObject(t, be, name, old)
	_, err = r.OpenHead(ctx, "s-2", "vda", 40*testBS, HeadOptions{})
	missing := "epoch 1 journal 2" // the second journal of the first writer
	if !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), missing+" is missing") {
		t.Fatalf("open of a put-back head followed by later journals: %v, want ErrRollback naming journal %s", err, missing)
	}
}

// The version the control plane recorded (MinVersion) is an anchor outside the store:
// a head older than it is refused even when the whole store was rolled back.
func TestMinVersionRefusesAnOlderHead(t *testing.T) {
	ctx := context.Background()
	r, _, _ := newTestRepo(t, testOptions())
	h, _ := r.OpenHead(ctx, "s-3", "vda", 8*testBS, HeadOptions{})
	write(t, h, model{}, map[uint64]uint32{1: 1})
	seal(t, r, "pit-1", h)
	v := h.Version()
	h.Close()
	h, err := r.OpenHead(ctx, "s-3", "vda", 8*testBS, HeadOptions{MinVersion: v})
	if err != nil {
		t.Fatalf("open at the recorded version: %v", err)
	}
	v = h.Version() // an open checkpoints (fence.go): one more
	h.Close()
	_, err = r.OpenHead(ctx, "s-3", "vda", 8*testBS, HeadOptions{MinVersion: v + 1})
	if !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "version "+itoa(v+1)+" of it was recorded outside the store") {
		t.Fatalf("open below the recorded version: %v, want ErrRollback", err)
	}
}

// AcceptRollback is the way out an operator takes when the newer head is lost: the
// volume starts empty, newer than every record, and later opens need nothing special.
func TestAcceptRollbackStartsTheVolumeOver(t *testing.T) {
	ctx := context.Background()
	r, be, _ := newTestRepo(t, testOptions())
	h, _ := r.OpenHead(ctx, "s-4", "vda", 40*testBS, HeadOptions{})
	write(t, h, model{}, map[uint64]uint32{1: 1})
	seal(t, r, "pit-1", h)
	old := getObject(t, be, "heads/s-4/vda/head.0000000000000001")
	write(t, h, model{}, map[uint64]uint32{2: 1})
	p2 := seal(t, r, "pit-2", h)
	write(t, h, model{}, map[uint64]uint32{3: 1})
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	h.Close()
	putObject(t, be, "heads/s-4/vda/head.0000000000000001", old)
	h, err := r.OpenHead(ctx, "s-4", "vda", 40*testBS, HeadOptions{AcceptRollback: true, MinVersion: 1})
	if err != nil {
		t.Fatalf("open accepting the rollback: %v", err)
	}
	if !h.Fresh() || h.Version() <= p2.Volumes[0].HeadVersion {
		t.Fatalf("accepted head: fresh %v, version %d (PIT sealed %d)", h.Fresh(), h.Version(), p2.Volumes[0].HeadVersion)
	}
	m := model{}
	write(t, h, m, map[uint64]uint32{5: 2})
	p3 := seal(t, r, "pit-3", h)
	checkPIT(t, r, p3, "vda", 40*testBS, m) // only what was written since: the source resends the rest
	h.Close()
	h, err = r.OpenHead(ctx, "s-4", "vda", 40*testBS, HeadOptions{})
	if err != nil {
		t.Fatalf("open after the rollback was accepted: %v", err)
	}
	h.Close()
	if got := verifyErrors(t, r); got != "" {
		t.Fatalf("verify after the rollback was accepted: %s", got)
	}
}

// PITs of a server form a chain: sequence numbers, each naming the one before and its
// digest, across processes; LoadPITExpect refuses a manifest whose content is not the
// one sealed.
func TestPITChainAndExpectedDigest(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, testOptions())
	h, _ := r.OpenHead(ctx, "s-5", "vda", 8*testBS, HeadOptions{})
	var pits []PIT
	for i, id := range []string{"pit-a", "pit-b", "pit-c"} {
		write(t, h, model{}, map[uint64]uint32{uint64(i): 1})
		pits = append(pits, seal(t, r, id, h))
	}
	h.Close()
	r2 := reopen(t, be, mk, testOptions()) // another replicator takes the server over
	h2, _ := r2.OpenHead(ctx, "s-5", "vda", 8*testBS, HeadOptions{})
	pits = append(pits, seal(t, r2, "pit-d", h2))
	for i, p := range pits {
		if p.Seq != uint64(i+1) || len(p.Digest) != 64 {
			t.Fatalf("PIT %s: sequence %d, digest %q", p.ID, p.Seq, p.Digest)
		}
		if i == 0 && p.Prev != nil || i > 0 && (p.Prev == nil || *p.Prev != PITLink{ID: pits[i-1].ID, Digest: pits[i-1].Digest}) {
			t.Fatalf("PIT %s links to %+v", p.ID, p.Prev)
		}
		got, err := r.LoadPITExpect(ctx, "s-5", p.ID, p.Digest)
		if err != nil || got.Digest != p.Digest {
			t.Fatalf("load %s with its digest: %v (digest %s)", p.ID, err, got.Digest)
		}
	}

	// A holder of the key rewrites pit-b with other content (a label here).
	name := snapshotName("s-5", "pit-b")
	forged := pits[1]
	forged.Labels = map[string]string{"forged": "yes"}
	content, _ := json.Marshal(forged)
	if err := r.putSealed(ctx, name, encodeManifest(content, time.Time{}), backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.LoadPITExpect(ctx, "s-5", "pit-b", pits[1].Digest); !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), pits[1].Digest) {
		t.Fatalf("load of a replaced manifest with the recorded digest: %v, want ErrRollback", err)
	}
	if got := verifyErrors(t, r); !strings.Contains(got, name+": its content has digest") || !strings.Contains(got, "PIT pit-c, sealed after it, recorded "+pits[1].Digest) {
		t.Fatalf("verify does not report the broken chain: %q", got)
	}
	if _, err := r.LoadPITExpect(ctx, "s-5", "pit-b", ""); err == nil {
		t.Fatal("LoadPITExpect accepted an empty digest")
	}
}

// ProtectPIT keeps the content, so the digest and the chain hold; a manifest put back
// to its version from before the lock is caught by its lock record: Verify reports
// it, DeletePIT and retention keep the PIT, and protecting again repairs it.
// LoadPITExpect does not see it: the digest covers the content, not the lock.
func TestManifestPutBackAfterProtect(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	opts := testOptions()
	opts.Now = func() time.Time { return now }
	r, be, _ := newTestRepo(t, opts)
	h, _ := r.OpenHead(ctx, "s-6", "vda", 8*testBS, HeadOptions{})
	write(t, h, model{}, map[uint64]uint32{1: 1})
	p1, err := r.SealPIT(ctx, SealRequest{ID: "pit-1", Server: "s-6", Time: now.Add(-48 * time.Hour), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		t.Fatal(err)
	}
	write(t, h, model{}, map[uint64]uint32{1: 2})
	seal(t, r, "pit-2", h)
	name := snapshotName("s-6", "pit-1")
	unlocked := getObject(t, be, name)
	locked, err := r.ProtectPIT(ctx, "s-6", "pit-1", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if locked.Digest != p1.Digest {
		t.Fatalf("protect changed the digest: %s, sealed %s", locked.Digest, p1.Digest)
	}
	if got := verifyErrors(t, r); got != "" {
		t.Fatalf("verify after protect: %s", got)
	}
	putObject(t, be, name, unlocked)

	if got := verifyErrors(t, r); !strings.Contains(got, "locks/s-6/pit-1: PIT pit-1 of server s-6 is locked until") || !strings.Contains(got, "its manifest says unlocked") {
		t.Fatalf("verify does not report the put-back manifest: %q", got)
	}
	if err := r.DeletePIT(ctx, "s-6", "pit-1"); !errors.Is(err, ErrLocked) {
		t.Fatalf("delete of a PIT whose unlocked manifest was put back: %v, want ErrLocked", err)
	}
	if deleted, err := r.ApplyRetention(ctx, "s-6", Policy{ConsistencyPoints: time.Minute}); err != nil || len(deleted) != 0 {
		t.Fatalf("retention deleted %v (%v)", deleted, err)
	}
	if _, err := r.LoadPITExpect(ctx, "s-6", "pit-1", p1.Digest); err != nil {
		t.Fatalf("the put-back manifest holds the sealed content: %v", err)
	}
	if p, err := r.ProtectPIT(ctx, "s-6", "pit-1", now); err != nil || !p.LockUntil.Equal(now.Add(time.Hour).UTC()) {
		t.Fatalf("protect again: lock %v (%v), want the recorded one", p.LockUntil, err)
	}
	if got := verifyErrors(t, r); got != "" {
		t.Fatalf("verify after the manifest was repaired: %s", got)
	}
	// When the lock ends, the PIT goes with its record.
	now = now.Add(2 * time.Hour)
	if err := r.DeletePIT(ctx, "s-6", "pit-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Stat(ctx, lockName("s-6", "pit-1")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("the lock record outlived its PIT: %v", err)
	}
}

// A pack's trailer names its pack: a trailer moved to another pack, or a pack stored
// under another pack's name, does not authenticate, and rebuilding the index does not
// take its chunks for the other pack's.
func TestPackTrailerIsBoundToItsPack(t *testing.T) {
	ctx := context.Background()
	dir, mk, _ := sealedRepo(t)
	packs := objects(t, dir, "data/")
	if len(packs) < 2 {
		t.Fatalf("want two packs, have %d", len(packs))
	}
	be := openDir(t, dir)
	a, b := getObject(t, be, packs[0]), getObject(t, be, packs[1])
	idA, _ := ParseID(packs[0][strings.LastIndexByte(packs[0], '/')+1:])
	// a's header and chunks, then b's trailer and footer.
	tlenB := int(b[len(b)-8])<<24 | int(b[len(b)-7])<<16 | int(b[len(b)-6])<<8 | int(b[len(b)-5])
	tlenA := int(a[len(a)-8])<<24 | int(a[len(a)-7])<<16 | int(a[len(a)-6])<<8 | int(a[len(a)-5])
	moved := append(append([]byte{}, a[:len(a)-8-tlenA]...), b[len(b)-8-tlenB:]...)
	for _, c := range []struct {
		what string
		data []byte
	}{{"another pack's trailer", moved}, {"another pack whole", b}} {
		putObject(t, be, packs[0], c.data)
		r, err := OpenWithoutIndex(ctx, be, mk, testOptions())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.readTrailer(ctx, packs[0], idA, int64(len(c.data))); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s under %s: the trailer opened (%v)", c.what, packs[0], err)
		}
		st, err := r.RebuildIndex(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Unreadable) != 1 || !strings.Contains(st.Unreadable[0], packs[0]) {
			t.Fatalf("%s: rebuild-index read it: %+v", c.what, st)
		}
		r.Close()
	}
	putObject(t, be, packs[0], a)
	r := reopen(t, be, mk, testOptions())
	if _, err := r.readTrailer(ctx, packs[0], idA, int64(len(a))); err != nil {
		t.Fatalf("the intact pack's trailer: %v", err)
	}
}

// A head of the largest volume allowed costs little memory while fresh or sparse —
// opened, written at both ends, sealed, reopened — and a larger volume is refused.
func TestHugeVolumeHeadUsesLittleMemory(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.Fanout = DefaultFanout
	r, _, _ := newTestRepo(t, opts)
	last := uint64(MaxVolumeBytes/testBS - 1)
	before := heapInUse()
	h, err := r.OpenHead(ctx, "s-big", "vda", MaxVolumeBytes, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fresh := heapInUse()
	m := model{}
	write(t, h, m, map[uint64]uint32{0: 1, last: 2})
	p := seal(t, r, "pit-big", h)
	h.Close()
	h, err = r.OpenHead(ctx, "s-big", "vda", MaxVolumeBytes, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	after := heapInUse()
	t.Logf("heap: %d KiB before, %d KiB with a fresh 64 TiB head, %d KiB after writing, sealing and reopening it",
		before>>10, fresh>>10, after>>10)
	if fresh > before+2<<20 || after > before+4<<20 {
		t.Fatalf("a 64 TiB head grew the heap from %d to %d KiB (fresh) and %d KiB (reopened)", before>>10, fresh>>10, after>>10)
	}
	v, err := r.OpenVolume(ctx, p, "vda")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []uint64{0, last, last / 2} {
		got, err := v.ReadBlock(ctx, b, nil)
		if err != nil || !bytes.Equal(got, content(b, m[b])) {
			t.Fatalf("block %d of the 64 TiB PIT is not version %d (%v)", b, m[b], err)
		}
	}
	if err := h.SetSize(MaxVolumeBytes + 1); err == nil {
		t.Fatal("a head grew past MaxVolumeBytes")
	}
	h.Close()
	if _, err := r.OpenHead(ctx, "s-big2", "vda", MaxVolumeBytes+1, HeadOptions{}); err == nil || !strings.Contains(err.Error(), "64 TiB") {
		t.Fatalf("open of a volume of MaxVolumeBytes+1: %v", err)
	}
}

// Verify finds no rollback on a live store: PITs sealed, protected and deleted while it
// runs, in another process.
func TestVerifyOnALiveStoreFindsNoRollback(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, testOptions())
	checker := reopen(t, be, mk, testOptions())
	h, _ := r.OpenHead(ctx, "s-live", "vda", 64*testBS, HeadOptions{})
	done := make(chan error, 1)
	go func() {
		defer close(done)
		for i := range 24 {
			b := uint64(i % 64)
			if err := h.WriteBlocks(ctx, []Block{{Index: b, Data: content(b, uint32(i%3+1))}}); err != nil {
				done <- err
				return
			}
			id := "pit-" + itoa(uint64(i))
			if _, err := r.SealPIT(ctx, SealRequest{ID: id, Server: "s-live", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}}); err != nil {
				done <- err
				return
			}
			if i%3 == 0 {
				if _, err := r.ProtectPIT(ctx, "s-live", id, time.Now().Add(time.Hour)); err != nil {
					done <- err
					return
				}
			}
			if i%3 == 2 {
				if err := r.DeletePIT(ctx, "s-live", id); err != nil {
					done <- err
					return
				}
			}
		}
	}()
	runs := 0
	for live := true; live; runs++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			live = false
		default:
		}
		if got := verifyErrors(t, checker); got != "" {
			t.Fatalf("verify run %d on a live store: %s", runs, got)
		}
	}
	t.Logf("%d verify runs during 24 seals", runs)
}

// hookBackend calls hook before each listing: a way to run a writer at the exact
// point where a reader lists objects.
type hookBackend struct {
	backend.Backend
	hook func(prefix string)
}

func (b *hookBackend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if b.hook != nil {
		b.hook(prefix)
	}
	return b.Backend.List(ctx, prefix, fn)
}

// Verify is not fooled by a PIT sealed and protected between its steps: whenever it
// lists manifests or lock records, the writer seals a PIT (advancing the head) and
// protects it first.
func TestVerifyRacesWithSealAndProtect(t *testing.T) {
	ctx := context.Background()
	r, be, mk := newTestRepo(t, testOptions())
	h, _ := r.OpenHead(ctx, "s-race", "vda", 8*testBS, HeadOptions{})
	write(t, h, model{}, map[uint64]uint32{0: 1})
	seal(t, r, "pit-0", h)
	hb := &hookBackend{Backend: be}
	checker, err := Open(ctx, hb, mk, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer checker.Close()
	n := 0
	hb.hook = func(prefix string) {
		if prefix != "snapshots/" && prefix != "locks/" {
			return
		}
		n++
		id := "pit-" + itoa(uint64(n))
		write(t, h, model{}, map[uint64]uint32{uint64(n % 8): uint32(n%3 + 1)})
		seal(t, r, id, h)
		if _, err := r.ProtectPIT(ctx, "s-race", id, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if got := verifyErrors(t, checker); got != "" {
		t.Fatalf("verify with PITs sealed and protected between its steps: %s", got)
	}
	if n < 3 {
		t.Fatalf("the writer ran %d times during verify, want at every listing of manifests and locks", n)
	}
}
