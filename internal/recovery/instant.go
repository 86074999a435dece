package recovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// Instant launch (docs/recovery.md "Instant launch"): the runner serves the PIT's
// volumes over NBD on a Unix socket in the recovery instance's directory, the disks are
// qcow2 overlays backed by those exports, and once the VM runs a hydration loop has the
// provider copy the exports into the overlays. The exports are served until the copy
// is done, and again after a control plane restart (QEMU's NBD client waits for them
// meanwhile, up to launch.NBDReconnectDelay).

const (
	// storeWait is how long a read of an export retries a staging store that fails
	// before the read fails (the guest then sees an I/O error; it never sees wrong data:
	// every chunk is checked against its hash).
	storeWait = 60 * time.Second
	// pitHold is how long a PIT served to an instant launch is locked against
	// retention; the lock is renewed every hydrationLockRenew while it is served.
	pitHold            = 6 * time.Hour
	hydrationLockRenew = time.Hour
	// hydrationPoll is how often the hydration loop looks at the copy.
	hydrationPoll = time.Second
	// maxExtentBlocks bounds the blocks one block status answer looks at.
	maxExtentBlocks = 1 << 16
)

// hydrater is a provider that can copy an instant launch's disks to local storage.
type hydrater interface {
	Hydrate(ctx context.Context, h api.ProviderHandle) (launch.Hydration, error)
}

// pitExport is a PIT's volume as an NBD export.
type pitExport struct {
	v         *store.VolumeReader
	blockSize int
	stalled   *atomic.Value // the last staging store error a read waited on (a string)
}

func (e pitExport) Size() int64    { return e.v.Size() }
func (e pitExport) BlockSize() int { return e.blockSize }

func (e pitExport) ReadAt(p []byte, off int64) (int, error) {
	return e.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext reads from the staging store, retrying it for up to storeWait when it
// fails.
func (e pitExport) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	var n int
	err := e.retry(ctx, func() (err error) {
		n, err = e.v.ReadAtContext(ctx, p, off)
		return err
	})
	return n, err
}

// retry runs a read of the staging store until it succeeds, for up to storeWait.
func (e pitExport) retry(ctx context.Context, read func() error) error {
	start, wait := time.Now(), 100*time.Millisecond
	for {
		err := read()
		if err == nil || errors.Is(err, io.EOF) || ctx.Err() != nil || time.Since(start) > storeWait {
			return err
		}
		if e.stalled != nil {
			e.stalled.Store(err.Error())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// Extents says which of the volume's blocks from off are holes, so that QEMU copies
// only what the PIT holds.
func (e pitExport) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	bs := int64(e.blockSize)
	var out []nbd.Extent
	first := off / bs
	end := min(off+length, e.v.Size())
	for b := first; b*bs < end && b-first < maxExtentBlocks; b++ {
		var hole bool
		err := e.retry(ctx, func() (err error) {
			hole, err = e.v.Hole(ctx, uint64(b))
			return err
		})
		if err != nil {
			return nil, err
		}
		n := min((b+1)*bs, e.v.Size()) - max(b*bs, off)
		if k := len(out); k > 0 && out[k-1].Hole == hole {
			out[k-1].Length += n
			continue
		}
		out = append(out, nbd.Extent{Length: n, Hole: hole})
	}
	return out, nil
}

// instantExports are the NBD servers of instant launches, by recovery instance.
type instantExports struct {
	log    *slog.Logger
	mu     sync.Mutex
	served map[string]*servedExports
	loops  map[string]bool // recovery instances with a hydration loop
}

// claimLoop reports whether the caller is the one to run a recovery instance's
// hydration loop (none runs yet); endLoop ends its claim.
func (x *instantExports) claimLoop(riID string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.loops[riID] {
		return false
	}
	x.loops[riID] = true
	return true
}

func (x *instantExports) endLoop(riID string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.loops, riID)
}

type servedExports struct {
	cancel  context.CancelFunc
	done    chan struct{}
	stalled atomic.Value
}

// serve serves a PIT's volumes, by name, on a Unix socket until stop (or ctx ends). A
// socket left by an earlier process is replaced.
func (x *instantExports) serve(ctx context.Context, riID, socket string, repo *store.Repo, pit store.PIT) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.served[riID] != nil {
		return nil
	}
	if len(socket) > 107 {
		return fmt.Errorf("the NBD socket path %s is too long for a Unix socket: use a shorter recovery directory", socket)
	}
	s := &servedExports{done: make(chan struct{})}
	exports := map[string]nbd.Export{}
	for _, v := range pit.Volumes {
		r, err := repo.OpenVolume(ctx, pit, v.Name)
		if err != nil {
			return err
		}
		exports[v.Name] = pitExport{v: r, blockSize: repo.BlockSize(), stalled: &s.stalled}
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return err
	}
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("serve PIT %s over NBD: %w", pit.ID, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return err
	}
	srv := &nbd.Server{Logger: x.log.With("recoveryInstance", riID),
		Exports: func(_ context.Context, name string) (nbd.Export, error) {
			if e, ok := exports[name]; ok {
				return e, nil
			}
			return nil, fmt.Errorf("%q: %w", name, nbd.ErrUnknownExport)
		}}
	sctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	x.served[riID] = s
	go func() {
		defer close(s.done)
		if err := srv.Serve(sctx, l); err != nil && sctx.Err() == nil {
			x.log.Error("the NBD server of an instant launch stopped", "recoveryInstance", riID, "err", err)
		}
	}()
	return nil
}

// lastStall is the last staging store error a read of a recovery instance's exports
// waited on ("" for none).
func (x *instantExports) lastStall(riID string) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if s := x.served[riID]; s != nil {
		e, _ := s.stalled.Load().(string)
		return e
	}
	return ""
}

// stop stops serving a recovery instance's exports, if they are served.
func (x *instantExports) stop(riID string) {
	x.mu.Lock()
	s := x.served[riID]
	delete(x.served, riID)
	x.mu.Unlock()
	if s != nil {
		s.cancel()
		<-s.done
	}
}
