// Package recoverytest gives recovery tests what a replicator would have made: a source
// server registered with the control plane, and PITs of disk images written into the
// staging store (heads, blocks, sealed PIT) and recorded in the control plane, as the
// replicator records them (the store's PIT id is the control plane's snapshot id).
package recoverytest

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch/qemu"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
)

// Store opens (creating) the control plane's default staging store, the system
// account's, with the master key file, as lifeboat up leaves them. It is closed when the
// test ends.
func Store(t testing.TB, cp *controlplane.ControlPlane) *store.Repo {
	t.Helper()
	return StoreAt(t, cp, cp.DefaultStoreURL())
}

// AccountStore opens (creating) the staging store of an account's replication template
// with the master key file. It is closed when the test ends.
func AccountStore(t testing.TB, cp *controlplane.ControlPlane, accountID string) *store.Repo {
	t.Helper()
	var a db.Account
	if err := cp.DB().View(context.Background(), func(tx *db.Tx) (err error) { a, err = tx.Account(accountID); return err }); err != nil {
		t.Fatal(err)
	}
	return StoreAt(t, cp, a.Template.StagingStoreURL)
}

// StoreAt opens (creating) the staging store at url with the control plane's master key
// file, as a replicator made stores before accounts had keys (the control plane adds the
// account's key when it first opens it).
func StoreAt(t testing.TB, cp *controlplane.ControlPlane, url string) *store.Repo {
	t.Helper()
	ctx := context.Background()
	mk, err := store.LoadMasterKey(filepath.Join(cp.DataDir(), "staging.key"))
	if err != nil {
		t.Fatal(err)
	}
	be, err := backendurl.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	r, err := store.OpenOrInit(ctx, be, mk, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); be.Close() })
	return r
}

// Server registers a source server (as lifeboat agent install does) with one volume per
// name and size, and returns it.
func Server(t testing.TB, cp *controlplane.ControlPlane, machineID string, volumes map[string]int64) api.SourceServer {
	t.Helper()
	return ServerIn(t, cp, cp.SystemAccountID(), machineID, volumes)
}

// ServerIn registers a source server in an account.
func ServerIn(t testing.TB, cp *controlplane.ControlPlane, accountID, machineID string, volumes map[string]int64) api.SourceServer {
	t.Helper()
	ctx := context.Background()
	tok, err := cp.CreateToken(ctx, accountID, api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(api.ClientConfig{Server: cp.URL(), Token: tok.Secret})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, machineID)
	if err != nil {
		t.Fatal(err)
	}
	req := api.RegisterSourceServerRequest{CSR: string(csr), MachineID: machineID, Hostname: "host-" + machineID,
		OS: "linux", Arch: "amd64", CPUs: 1, MemoryBytes: 512 << 20}
	for _, name := range slices.Sorted(maps.Keys(volumes)) {
		req.Volumes = append(req.Volumes, api.Volume{Name: name, Path: "/dev/" + name, SizeBytes: volumes[name]})
	}
	resp, err := c.RegisterSourceServer(ctx, req)
	if err != nil {
		t.Fatalf("register source server %s: %v", machineID, err)
	}
	return resp.SourceServer
}

// Volume is a volume of a PIT: its content is the image file; Previous, when set, is
// the image of the server's previous PIT, and only blocks that differ from it are
// written (as a replicator writes changes).
type Volume struct {
	Name, Image, Previous string
}

// PIT writes the images into the server's heads in the store, seals a PIT of the given
// level and time, records it in the control plane and returns it. It returns the
// number of blocks written.
func PIT(t testing.TB, cp *controlplane.ControlPlane, repo *store.Repo, server api.SourceServer, level consistency.Level, at time.Time, vols ...Volume) (store.PIT, int) {
	t.Helper()
	ctx := context.Background()
	id := api.NewID(api.PrefixSnapshot)
	var heads []*store.Head
	written := 0
	for _, v := range vols {
		f, err := os.Open(v.Image)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		h, err := repo.OpenHead(ctx, server.ID, v.Name, fi.Size(), store.HeadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var prev *os.File
		if v.Previous != "" {
			if prev, err = os.Open(v.Previous); err != nil {
				t.Fatal(err)
			}
		}
		bs := repo.BlockSize()
		buf, old := make([]byte, bs), make([]byte, bs)
		var batch []store.Block
		for b := int64(0); b*int64(bs) < fi.Size(); b++ {
			n, err := f.ReadAt(buf, b*int64(bs))
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if prev != nil {
				m, _ := prev.ReadAt(old, b*int64(bs))
				if m == n && bytes.Equal(old[:m], buf[:n]) {
					continue
				}
			}
			batch = append(batch, store.Block{Index: uint64(b), Data: append([]byte(nil), buf[:n]...)})
			written++
			if len(batch) == 256 {
				if err := h.WriteBlocks(ctx, batch); err != nil {
					t.Fatal(err)
				}
				batch = batch[:0]
			}
		}
		if err := h.WriteBlocks(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if err := h.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if prev != nil {
			prev.Close()
		}
		heads = append(heads, h)
	}
	pit, err := repo.SealPIT(ctx, store.SealRequest{ID: id, Server: server.ID, Time: at, Level: level, Heads: heads})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range heads {
		h.Close()
	}
	Record(t, cp, repo, server, pit)
	return pit, written
}

// Record records a sealed PIT in the control plane, as the replicator does: with its
// manifest's digest, its repository and the head versions it was sealed from.
func Record(t testing.TB, cp *controlplane.ControlPlane, repo *store.Repo, server api.SourceServer, pit store.PIT) {
	t.Helper()
	snap := db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: pit.ID, SourceServerID: server.ID, Time: pit.Time.UTC().Truncate(time.Millisecond),
		Level: pit.Level, SizeBytes: pit.AddedBytes, CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
		ManifestDigest: pit.Digest, StagingStoreID: repo.ID()}, AccountID: server.AccountID}
	for _, v := range pit.Volumes {
		snap.Volumes = append(snap.Volumes, api.SnapshotVolume{Name: v.Name, SizeBytes: v.Size, Ref: v.Ref(), HeadVersion: v.HeadVersion})
	}
	if err := cp.DB().Update(context.Background(), func(tx *db.Tx) error { return tx.CreateSnapshot(snap) }); err != nil {
		t.Fatalf("record PIT %s: %v", pit.ID, err)
	}
}

// WaitJob polls a job until it completes (or the deadline, a hang guard only) and
// returns it.
func WaitJob(t testing.TB, c *api.Client, id string, deadline time.Duration) api.Job {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		j, err := c.Job(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Status == api.JobCompleted {
			return j
		}
		if time.Now().After(end) {
			log, _ := c.JobLog(context.Background(), id, 0, "")
			for _, e := range log.Items {
				t.Logf("%s %s %s %s", e.Time.Format(time.RFC3339), e.SourceServerID, e.Type, e.Message)
			}
			t.Fatalf("job %s did not complete within %s: %+v", id, deadline, j)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// KillVMsAtCleanup makes sure no QEMU VM started under dir (recovery instances,
// instances) outlives the test, even when it fails: each is killed by its pid.
func KillVMsAtCleanup(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "vm.json" {
				return nil
			}
			if vm, err := qemu.Attach(filepath.Dir(p)); err == nil {
				t.Logf("killing VM %s (pid %d) left running", vm.Name(), vm.Pid())
				_ = vm.Kill()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_ = vm.Wait(ctx)
				cancel()
			}
			return nil
		})
	})
}

// EventTypes lists a job's log entry types, oldest first, without the console's.
func EventTypes(t testing.TB, c *api.Client, job string) []string {
	t.Helper()
	log, err := c.JobLog(context.Background(), job, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range log.Items {
		if e.Type != api.EventConsole {
			out = append(out, e.Type)
		}
	}
	return out
}
