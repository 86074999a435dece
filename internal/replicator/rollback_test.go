package replicator_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
	"github.com/lifeboat-dr/lifeboat/internal/wire/wiretest"
)

// TestHeadOlderThanTheControlPlaneRecordedIsRefused: the control plane records, with
// every PIT, the head versions it was sealed from; a replicator opening a session
// refuses a head older than that record in the same repository — an old head object
// put back by someone with write access to the bucket, even with every later manifest
// deleted, so the store alone holds no trace of the newer version — and says why.
func TestHeadOlderThanTheControlPlaneRecordedIsRefused(t *testing.T) {
	e := startReplicator(t, nil)
	a := e.newAgent()
	ctx := context.Background()
	// A head of version v in the store (as a replicator left it), then the record.
	be, err := file.Open(e.store)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := store.Open(ctx, be, e.cp.key, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := repo.OpenHead(ctx, a.id, "vda", 1<<20, store.HeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WriteBlocks(ctx, []store.Block{{Index: 1, Data: bytes.Repeat([]byte{7}, repo.BlockSize())}}); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	v, repoID := h.Version(), repo.ID()
	h.Close()
	repo.Close()
	be.Close()

	hello := func(record map[string]uint64, storeID string) wire.Msg {
		e.cp.setHeadVersions(a.id, record, storeID)
		c, err := e.dial(a)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(wiretest.HelloFrame(a.id, 1, []wire.Volume{{Name: "vda", SizeBytes: 1 << 20, BlockSize: 512}})); err != nil {
			t.Fatal(err)
		}
		m, err := answer(c)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := hello(map[string]uint64{"vda": v + 2}, repoID)
	we, ok := m.(*wire.Error)
	if !ok || we.Code != wire.CodeStagingError || !strings.Contains(we.Message, "older than a recorded PIT") {
		t.Fatalf("a head older than the control plane's record: answered %v", m)
	}
	// A record of another repository (the server's store was changed) is no floor here.
	if m := hello(map[string]uint64{"vda": v + 2}, "another-repository"); m.Type() != wire.TypeWelcome {
		t.Fatalf("a record of another repository: answered %v", m)
	}
	// At the recorded version the head is taken.
	if m := hello(map[string]uint64{"vda": v}, repoID); m.Type() != wire.TypeWelcome {
		t.Fatalf("a head at the recorded version: answered %v", m)
	}
}

// setHeadVersions records, as the control plane does with each PIT, the head versions
// of a server's newest PIT in repository storeID.
func (f *fakeControlPlane) setHeadVersions(server string, v map[string]uint64, storeID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.assigned {
		if f.assigned[i].SourceServer.ID == server {
			f.assigned[i].HeadVersions, f.assigned[i].HeadVersionsStoreID = v, storeID
		}
	}
}
