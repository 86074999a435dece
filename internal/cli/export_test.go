package cli

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// randomImage writes an image of size bytes, random in every fourth 64 KiB block.
func randomImage(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(size), 1))
	for off := int64(0); off < size; off += 4 * 64 << 10 {
		for i := off; i < min(off+64<<10, size); i++ {
			data[i] = byte(rng.Uint32())
		}
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestExportWithoutAKeyFile: lifeboat export reads a PIT through the control plane (no
// key file on this side) and writes the same bytes as the store holds; lifeboat store
// export, with the master key file and no control plane, writes the same; a link
// planted where an image goes is replaced, not written through.
func TestExportWithoutAKeyFile(t *testing.T) {
	e := startCLIEnv(t)
	repo := recoverytest.Store(t, e.cp)
	img := randomImage(t, 3<<20+4096)
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 3<<20 + 4096})
	pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})

	out := filepath.Join(e.dir, "out")
	if err := os.MkdirAll(out, 0o700); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(e.dir, "victim")
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(out, "vda.img")); err != nil {
		t.Fatal(err)
	}
	e.must("export", srv.ID, "--pit", pit.ID, "--to", out)
	if testutil.FileSHA256(t, filepath.Join(out, "vda.img")) != testutil.FileSHA256(t, img) {
		t.Fatal("the exported image differs from the volume written to the store")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep me" {
		t.Fatal("the export wrote through a link planted in --to")
	}
	offline := filepath.Join(e.dir, "offline")
	e.must("store", "export", srv.ID, pit.ID, "--store", e.cp.DefaultStoreURL(), "--key", filepath.Join(e.dir, "data", "staging.key"), "--to", offline)
	if testutil.FileSHA256(t, filepath.Join(offline, "vda.img")) != testutil.FileSHA256(t, img) {
		t.Fatal("the offline export differs from the volume written to the store")
	}
}

// fakeControlPlane answers what lifeboat export asks: a recovery snapshot whose one
// volume has the given name, and a valid stream for it. It returns the URL and a CA file.
func fakeControlPlane(t *testing.T, volume string) (string, string) {
	t.Helper()
	var stream bytes.Buffer
	w, _ := api.NewExtentWriter(&stream, api.ExtentHeader{Size: 8192, BlockSize: 4096})
	_ = w.Extent(0, []byte("written by a hostile control plane or agent"))
	_ = w.Close()
	snap := api.RecoverySnapshot{ID: "pit-00000000000000001", SourceServerID: "s-00000000000000001", Time: time.Now(),
		Level: consistency.Crash, Volumes: []api.SnapshotVolume{{Name: volume, SizeBytes: 8192}}}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/v1/recovery-snapshots/"+snap.ID:
			_ = json.NewEncoder(w).Encode(snap)
		case strings.HasPrefix(r.URL.Path, "/api/v1/recovery-snapshots/"+snap.ID+"/volumes/"):
			w.Header().Set("Content-Type", api.ExtentContentType)
			_, _ = w.Write(stream.Bytes())
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, ca
}

// TestHostileVolumeNameStaysInsideTo: volume names come from source servers; one that
// is not a plain file name is refused, and nothing is written outside --to.
func TestHostileVolumeNameStaysInsideTo(t *testing.T) {
	base := t.TempDir()
	to := filepath.Join(base, "a", "b", "to")
	for _, name := range []string{"../../escaped", "../escaped", "a/../../escaped", "sub/escaped", filepath.Join(base, "escaped"), "..", "x\x00y"} {
		url, ca := fakeControlPlane(t, name)
		_, errs, code := runCLI("--server", url, "--token", "lbt_x_y", "--ca-cert", ca, "export", "s-00000000000000001",
			"--pit", "pit-00000000000000001", "--to", to)
		if code != 1 || !strings.Contains(errs, "not a plain file name") {
			t.Errorf("volume %q: exit %d: %s", name, code, errs)
		}
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				t.Errorf("volume %q: the export wrote %s", name, p)
			}
			return nil
		})
	}
	// A plain name from the same fake server is written, inside --to.
	url, ca := fakeControlPlane(t, "vda")
	to = filepath.Join(t.TempDir(), "to")
	if _, errs, code := runCLI("--server", url, "--token", "lbt_x_y", "--ca-cert", ca, "export", "s-00000000000000001",
		"--pit", "pit-00000000000000001", "--to", to); code != 0 {
		t.Fatalf("a plain volume name: exit %d: %s", code, errs)
	}
	if b, err := os.ReadFile(filepath.Join(to, "vda.img")); err != nil || !bytes.HasPrefix(b, []byte("written by")) || len(b) != 8192 {
		t.Fatalf("vda.img: %d bytes, %v", len(b), err)
	}
}

// TestExportTakesTheNewestConsistentPIT: without --pit, export writes the newest PIT
// that is consistent, passing over a newer fuzzy one; a server with none is refused.
func TestExportTakesTheNewestConsistentPIT(t *testing.T) {
	e := startCLIEnv(t)
	repo := recoverytest.Store(t, e.cp)
	older, newer := randomImage(t, 1<<20), randomImage(t, 1<<20+4096)
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
	recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, time.Now().Add(-2*time.Hour), recoverytest.Volume{Name: "vda", Image: older})
	recoverytest.PIT(t, e.cp, repo, srv, consistency.None, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: newer})
	out := filepath.Join(e.dir, "out")
	e.must("export", srv.ID, "--to", out)
	if testutil.FileSHA256(t, filepath.Join(out, "vda.img")) != testutil.FileSHA256(t, older) {
		t.Fatal("export without --pit did not write the newest consistent PIT")
	}

	fuzzy := recoverytest.Server(t, e.cp, "m2", map[string]int64{"vda": 1 << 20})
	recoverytest.PIT(t, e.cp, repo, fuzzy, consistency.None, time.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: newer})
	e.fails(1, "has no consistent recovery snapshot yet", "export", fuzzy.ID, "--to", filepath.Join(e.dir, "none"))
}
