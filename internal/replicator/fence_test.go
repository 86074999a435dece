package replicator

import (
	"context"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// Two replicators that both believe they serve a server (one was cut off from the
// control plane while the server moved): the older session is fenced by the staging
// store's head, not by a timeout. Its next batch is refused, never acknowledged, and its
// agent told to reconnect; the newer session's PIT holds what the older one
// acknowledged and nothing it did not.
func TestTheOlderOfTwoReplicatorsIsFencedByTheStore(t *testing.T) {
	ctx := context.Background()
	e := newIngestEnv(t, store.Options{}, 4)
	r1 := e.replicator(&stubControlPlane{})
	a1, _ := e.connect(ctx, r1)
	if _, _, err := wire.Open(a1, e.hello(), guard); err != nil {
		t.Fatal(err)
	}
	first := map[uint64][]byte{0: content(false), 2: content(true)}
	write(t, a1, e.blocks(1, 0, first))
	if m, ok := read(t, a1).(*wire.Ack); !ok || m.Seq != 1 {
		t.Fatalf("first batch answered with %v, want Ack 1", m)
	}

	// The second replicator has a view of the store of its own, as another process.
	repo2, err := store.Open(ctx, e.be, e.key, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer repo2.Close()
	r2 := e.replicator(&stubControlPlane{})
	r2.repos["test:store"] = repo2
	a2, _ := e.connect(ctx, r2)
	if _, _, err := wire.Open(a2, e.hello(), guard); err != nil {
		t.Fatalf("the second replicator refused the session: %v", err)
	}

	write(t, a1, e.blocks(2, 0, map[uint64][]byte{1: content(false)}))
	msgs := readAll(a1)
	if n := acked(msgs); n >= 2 {
		t.Fatalf("the fenced session acknowledged batch %d", n)
	}
	last, ok := msgs[len(msgs)-1].(*wire.Error)
	if !ok || last.Code != wire.CodeShuttingDown || !strings.Contains(last.Message, "another replicator opened") {
		t.Fatalf("the fenced session ended with %v, want SHUTTING_DOWN: another replicator opened", msgs[len(msgs)-1])
	}

	write(t, a2, e.marker(1, 1))
	for {
		if s, ok := read(t, a2).(*wire.Sealed); ok {
			pit, err := repo2.LoadPIT(ctx, e.server, s.PITID)
			if err != nil {
				t.Fatalf("Sealed %+v: %v", s, err)
			}
			e.checkVolume(ctx, pit, 0, first) // block 1 was never acknowledged: not there (read by the first process)
			return
		}
	}
}
