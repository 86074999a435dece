package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// Two writers of one head, as two replicators that both believe they serve a server:
// the one that opened it last wins, whatever the clocks say. The older one's next flush
// is refused with ErrFenced (never acknowledged), its checkpoints write nothing the
// newer one reads, and what it acknowledged before is in the newer one's head.
func TestANewerWriterFencesTheOlder(t *testing.T) {
	ctx := context.Background()
	r1, be, mk := newTestRepo(t, testOptions())
	r2 := reopen(t, be, mk, testOptions())
	const size = 16 * testBS
	old, err := r1.OpenHead(ctx, "s-f", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	acked := model{}
	write(t, old, acked, map[uint64]uint32{1: 1, 2: 1})
	if err := old.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	newer, err := r2.OpenHead(ctx, "s-f", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.WriteBlocks(ctx, []Block{{Index: 3, Data: content(3, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := old.Flush(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("flush of the older writer after a newer one opened the head: %v, want ErrFenced", err)
	}
	if _, err := old.checkpoint(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("checkpoint of the older writer: %v, want ErrFenced", err)
	}
	write(t, newer, acked, map[uint64]uint32{4: 2})
	if err := newer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p := seal(t, r2, "pit-1", newer)
	checkPIT(t, r2, p, "vda", size, acked) // 1, 2 and 4; not 3, never acknowledged
	newer.Close()
	checkPIT(t, reopen(t, be, mk, testOptions()), p, "vda", size, acked) // as a restarted process reads it

	heads, err := r1.headObjects(ctx, headPrefix("s-f", "vda"))
	if err != nil || len(heads) != 1 || !strings.HasSuffix(heads[0], ".0000000000000002") {
		t.Fatalf("head objects %v (%v): want only the second writer's", heads, err)
	}
	if got := verifyErrors(t, r1); got != "" {
		t.Fatalf("verify: %s", got)
	}
}

// The race the fence is for: the older writer's journal is stored after the newer
// writer claimed the head and read its journals. The older writer must not
// acknowledge it, and no later open may replay it.
func TestAJournalStoredAfterANewerClaimIsNeverReplayed(t *testing.T) {
	ctx := context.Background()
	r1, be, mk := newTestRepo(t, testOptions())
	hooked := &putHook{Backend: be}
	r1.be = hooked
	r2 := reopen(t, be, mk, testOptions())
	const size = 16 * testBS
	old, err := r1.OpenHead(ctx, "s-r", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	acked := model{}
	write(t, old, acked, map[uint64]uint32{1: 1})
	if err := old.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	var newer *Head
	hooked.before = func(name string) {
		if strings.Contains(name, "/j-") && newer == nil {
			if newer, err = r2.OpenHead(ctx, "s-r", "vda", size, HeadOptions{}); err != nil {
				t.Error(err)
			}
		}
	}
	if err := old.WriteBlocks(ctx, []Block{{Index: 2, Data: content(2, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := old.Flush(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("flush whose journal landed after a newer claim: %v, want ErrFenced", err)
	}
	hooked.before = nil
	if newer == nil {
		t.Fatal("the newer writer did not open")
	}
	write(t, newer, acked, map[uint64]uint32{5: 3})
	if err := newer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	newer.Close()

	// A third open (a restart) reads the newer writer's head and journals only.
	r3 := reopen(t, be, mk, testOptions())
	h, err := r3.OpenHead(ctx, "s-r", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := seal(t, r3, "pit-1", h)
	checkPIT(t, r3, p, "vda", size, acked) // block 2 was never acknowledged: not there
	h.Close()
}

// Two writers opening one head at the same time: at most one of them gets it.
func TestSimultaneousOpensLeaveOneWriter(t *testing.T) {
	ctx := context.Background()
	r1, be, mk := newTestRepo(t, testOptions())
	repos := []*Repo{r1, reopen(t, be, mk, testOptions()), reopen(t, be, mk, testOptions())}
	for round := 0; round < 5; round++ {
		heads := make([]*Head, len(repos))
		var wg sync.WaitGroup
		for i, r := range repos {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h, err := r.OpenHead(ctx, "s-s", "vda", 8*testBS, HeadOptions{})
				if err != nil && !errors.Is(err, ErrFenced) {
					t.Errorf("open: %v", err)
				}
				heads[i] = h
			}()
		}
		wg.Wait()
		writers := 0
		for i, h := range heads {
			if h == nil {
				continue
			}
			if err := h.WriteBlocks(ctx, []Block{{Index: uint64(i), Data: content(uint64(i), uint32(round+1))}}); err != nil {
				t.Fatal(err)
			}
			if h.Flush(ctx) == nil {
				writers++
			}
			h.Close()
		}
		if writers > 1 {
			t.Fatalf("round %d: %d writers flushed one head", round, writers)
		}
	}
}

// A writer that checkpoints while a newer one reads the head (it checked it still
// owned the head just before the newer one claimed it) removes the journals it folded:
// the newer one must read its head object, not the older one without those journals.
func TestAnOlderWritersCheckpointDuringANewerOpenLosesNothing(t *testing.T) {
	ctx := context.Background()
	r1, be, mk := newTestRepo(t, testOptions())
	const size = 16 * testBS
	first, err := r1.OpenHead(ctx, "s-c", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	acked := model{}
	write(t, first, acked, map[uint64]uint32{1: 1, 2: 1}) // in a journal, not a checkpoint
	if err := first.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	// The second writer's checkpoint waits, after its owner check, until the third has
	// read the first's head object; the third lists the journals once that checkpoint
	// removed them.
	r2, r3 := reopen(t, be, mk, testOptions()), reopen(t, be, mk, testOptions())
	readHead, checkpointed := make(chan struct{}), make(chan struct{})
	lh, listed := &listHook{Backend: be}, false
	lh.before = func(prefix string) {
		if strings.HasSuffix(prefix, "/j-") && !listed {
			listed = true
			close(readHead)
			<-checkpointed
		}
	}
	r3.be = lh
	var third *Head
	var thirdErr error
	opened, started := make(chan struct{}), false
	ph := &putHook{Backend: be}
	ph.before = func(name string) {
		if isHeadObject(name) && !started {
			started = true
			go func() {
				defer close(opened)
				third, thirdErr = r3.OpenHead(ctx, "s-c", "vda", size, HeadOptions{})
			}()
			<-readHead
		}
	}
	r2.be = ph
	second, err := r2.OpenHead(ctx, "s-c", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	close(checkpointed)
	<-opened
	if thirdErr != nil {
		t.Fatalf("the newest writer's open: %v", thirdErr)
	}
	defer third.Close()
	if err := second.WriteBlocks(ctx, []Block{{Index: 5, Data: content(5, 2)}}); err != nil {
		t.Fatal(err)
	}
	if err := second.Flush(ctx); !errors.Is(err, ErrFenced) {
		t.Fatalf("the second writer's flush after the third opened: %v, want ErrFenced", err)
	}
	p := seal(t, r3, "pit-1", third)
	checkPIT(t, r3, p, "vda", size, acked) // blocks 1 and 2, which the first acknowledged
}

// listHook calls before ahead of every List.
type listHook struct {
	backend.Backend
	before func(prefix string)
}

func (l *listHook) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if l.before != nil {
		l.before(prefix)
	}
	return l.Backend.List(ctx, prefix, fn)
}

// putHook calls before ahead of every Put.
type putHook struct {
	backend.Backend
	before func(name string)
}

func (p *putHook) Put(ctx context.Context, name string, data []byte, opts backend.PutOptions) error {
	if p.before != nil {
		p.before(name)
	}
	return p.Backend.Put(ctx, name, data, opts)
}

// With small blocks a tree node (1 + 32 × fanout bytes) is larger than a block; a
// reopened repository must still read the nodes (it once bounded chunks by the block
// size and found them corrupt).
func TestTreeNodesLargerThanABlockReadAfterReopen(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.BlockSize, opts.Fanout = 4096, 1024
	r, be, mk := newTestRepo(t, opts)
	const size = 2048 * 4096 // two leaves
	h, err := r.OpenHead(ctx, "s-n", "vda", size, HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var bl []Block
	for b := uint64(0); b < 2048; b += 7 {
		data := make([]byte, 4096)
		data[0], data[1] = byte(b), byte(b>>8)
		bl = append(bl, Block{Index: b, Data: data})
	}
	if err := h.WriteBlocks(ctx, bl); err != nil {
		t.Fatal(err)
	}
	p := seal(t, r, "pit-1", h)
	h.Close()
	v, err := reopen(t, be, mk, opts).OpenVolume(ctx, p, "vda")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bl {
		got, err := v.ReadBlock(ctx, b.Index, nil)
		if err != nil || got[0] != b.Data[0] || got[1] != b.Data[1] {
			t.Fatalf("block %d after reopen: %v", b.Index, err)
		}
	}
}
