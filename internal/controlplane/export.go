package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Export through the control plane (docs/recovery.md, "Exporting through the control
// plane"): an operator reads a PIT's volume without any key; the control plane opens the
// store with the key of the snapshot's account and streams the volume's non-zero
// extents. Each export is audited; at most RecoveryConfig.MaxExports run at once.

const (
	exportWindow       = 64              // blocks read ahead (4 MiB at the default block size)
	exportReaders      = 8               // blocks read at once
	exportWriteTimeout = 2 * time.Minute // to write one window: a client that stops reading is cut
	defaultMaxExports  = 4               // RecoveryConfig.MaxExports
	exportBufferBytes  = 256 << 10       // buffered writes to the connection
)

// exportVolume answers GET /api/v1/recovery-snapshots/{id}/volumes/{name}.
func (c *call) exportVolume(w http.ResponseWriter) error {
	name := c.r.PathValue("name")
	snap, storeURL, err := c.snapshotStore(c.pathID())
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(snap.Volumes, func(v api.SnapshotVolume) bool { return v.Name == name }) {
		return api.NotFound("recovery snapshot %s has no volume %q: see lifeboat snapshots list %s", snap.ID, name, snap.SourceServerID)
	}
	select {
	case c.cp.rec.exports <- struct{}{}:
		defer func() { <-c.cp.rec.exports }()
	default:
		return api.Errorf(http.StatusTooManyRequests, api.CodeTooManyRequests,
			"%d exports are running, the most the control plane runs at once: retry when one has ended", cap(c.cp.rec.exports))
	}
	v, err := c.openExport(snap, storeURL, name)
	if err != nil {
		return err
	}
	err = c.update(func(tx *db.Tx) error {
		return c.record(tx, snap.AccountID, "recovery-snapshot.export", "recovery-snapshot", snap.ID,
			map[string]any{"sourceServerId": snap.SourceServerID, "volume": name, "sizeBytes": v.Size()}, nil)
	})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", api.ExtentContentType)
	w.WriteHeader(http.StatusOK)
	start := time.Now()
	if err := streamExtents(c.ctx, w, v); err != nil {
		c.cp.log.Warn("an export ended early; the client sees it cut short", "snapshot", snap.ID, "volume", name,
			"after", time.Since(start).Round(time.Millisecond), "err", err)
		panic(http.ErrAbortHandler) // the answer has begun: break the connection, the client detects it
	}
	c.cp.log.Info("volume exported", "snapshot", snap.ID, "volume", name, "bytes", v.Size(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// snapshotStore loads a recovery snapshot of the caller's account and the staging store
// its server's settings name.
func (c *call) snapshotStore(id string) (snap db.Snapshot, storeURL string, err error) {
	err = c.view(func(tx *db.Tx) error {
		if snap, err = c.loadSnapshot(tx, id); err != nil {
			return err
		}
		s, err := tx.SourceServer(snap.SourceServerID)
		if err != nil {
			return err
		}
		eff, err := effective(tx, s)
		storeURL = eff.StagingStoreURL
		return err
	})
	return snap, storeURL, err
}

// openExport opens a volume of a snapshot's PIT in its store, with its account's key.
func (c *call) openExport(snap db.Snapshot, storeURL, volume string) (*store.VolumeReader, error) {
	repo, err := c.cp.rec.stores.Open(c.ctx, snap.AccountID, storeURL)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			return nil, err
		}
		return nil, api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable,
			"the control plane cannot open the staging store of PIT %s: %v", snap.ID, err)
	}
	pit, err := recovery.LoadPIT(c.ctx, repo, snap.RecoverySnapshot)
	if errors.Is(err, store.ErrNotFound) {
		return nil, api.Conflict("PIT %s is past retention: the staging store no longer holds it; choose a newer one (lifeboat snapshots list %s)",
			snap.ID, snap.SourceServerID)
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("read PIT %s from the staging store: %w", snap.ID, err)
	}
	return repo.OpenVolume(c.ctx, pit, volume)
}

// streamExtents writes a volume as an extent stream: blocks are read a window at a
// time, several at once, and written in order; all-zero blocks are left out.
func streamExtents(ctx context.Context, w http.ResponseWriter, v *store.VolumeReader) error {
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, exportBufferBytes)
	x, err := api.NewExtentWriter(bw, api.ExtentHeader{Size: v.Size(), BlockSize: v.BlockSize()})
	if err != nil {
		return err
	}
	bs := int64(v.BlockSize())
	zero := make([]byte, bs)
	bufs := make([][]byte, exportWindow)
	for first := uint64(0); first < v.Blocks(); first += exportWindow {
		n := min(exportWindow, v.Blocks()-first)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(exportReaders)
		for i := range n {
			g.Go(func() (err error) {
				bufs[i], err = v.ReadBlock(gctx, first+i, bufs[i])
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		// The deadline covers one window: a slow client is cut, a long export is not.
		if err := rc.SetWriteDeadline(time.Now().Add(exportWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		for i := range n {
			off := int64(first+i) * bs
			b := bufs[i][:min(bs, v.Size()-off)]
			if bytes.Equal(b, zero[:len(b)]) {
				continue
			}
			if err := x.Extent(off, b); err != nil {
				return err
			}
		}
	}
	if err := x.Close(); err != nil {
		return err
	}
	return bw.Flush()
}
