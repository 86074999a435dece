package controlplane_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// readExport writes an export stream into a sparse file and returns its path.
func readExport(t *testing.T, body io.ReadCloser) string {
	t.Helper()
	defer body.Close()
	x, err := api.NewExtentReader(body)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "export.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(x.Header().Size); err != nil {
		t.Fatal(err)
	}
	for {
		off, b, err := x.Next()
		if errors.Is(err, io.EOF) {
			return p
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestExportThroughTheAPI: an operator exports a PIT's volume with no key: the bytes
// are the store's (same SHA-256 as the image written), holes stay holes, the export is
// audited; a viewer is refused, another account sees no such PIT, and past the limit of
// exports at once the next one is told to retry.
func TestExportThroughTheAPI(t *testing.T) {
	e := startWith(t, db.SQLite, func(c *controlplane.Config) { c.Recovery.MaxExports = 1 })
	repo := recoverytest.Store(t, e.cp)
	const size = 64 << 20
	img := image(t, size, 11)
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": size})
	pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})

	_, err := e.userClient(api.RoleViewer).ExportVolume(e.ctx, pit.ID, "vda")
	wantAPIError(t, err, 403, api.CodeForbidden)
	tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.client(tenant.AdminToken).ExportVolume(e.ctx, pit.ID, "vda")
	wantAPIError(t, err, 404, api.CodeNotFound)
	op := e.userClient(api.RoleOperator)
	_, err = op.ExportVolume(e.ctx, pit.ID, "vdb")
	wantAPIError(t, err, 404, api.CodeNotFound)

	first, err := op.ExportVolume(e.ctx, pit.ID, "vda")
	if err != nil {
		t.Fatal(err)
	}
	// The first export is not read yet, so it still runs: a second one must wait.
	_, err = op.ExportVolume(e.ctx, pit.ID, "vda")
	wantAPIError(t, err, 429, api.CodeTooManyRequests)
	got := readExport(t, first)
	if testutil.FileSHA256(t, got) != testutil.FileSHA256(t, img) {
		t.Fatal("the exported volume differs from the image written to the store")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(got, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > size/2 {
		t.Errorf("the export uses %d bytes of disk for a volume two thirds zeros: holes were written", used)
	}
	// Once it ended, the next export runs.
	again, err := op.ExportVolume(e.ctx, pit.ID, "vda")
	if err != nil {
		t.Fatal(err)
	}
	if testutil.FileSHA256(t, readExport(t, again)) != testutil.FileSHA256(t, img) {
		t.Fatal("the second export differs")
	}
	audit, err := e.admin.Audit(e.ctx, api.AuditFilter{Action: "recovery-snapshot.export"})
	if err != nil || len(audit.Items) != 2 || audit.Items[0].TargetID != pit.ID || audit.Items[0].Detail["volume"] != "vda" {
		t.Fatalf("audit of the exports: %+v, %v", audit.Items, err)
	}
}
