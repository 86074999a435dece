package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// exportFlags are the flags of export.
type exportFlags struct {
	pit, to string
}

func newExportCmd(g *globals) *cobra.Command {
	var f exportFlags
	cmd := &cobra.Command{
		Use:   "export ID --to DIR",
		Short: "Write a PIT's volumes as sparse raw images (default: the newest consistent PIT)",
		Long: `Write every volume of a recovery snapshot to DIR/<volume>.img as a sparse raw image (holes
for zero blocks). The control plane reads the staging store with the key of the server's
account and streams the volume's non-zero regions (role operator; every export is audited):
no key file is needed here. Files are created only inside DIR, and a volume whose name is not
a plain file name is refused. Without the control plane, use lifeboat store export with the
master key file.`,
		Args: exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runExport(cmd.Context(), g, args[0], f) },
	}
	cmd.Flags().StringVar(&f.pit, "pit", "", "the recovery snapshot (pit-…); default the newest consistent one")
	cmd.Flags().StringVar(&f.to, "to", "", "directory for the images")
	return cmd
}

func runExport(ctx context.Context, g *globals, server string, f exportFlags) error {
	if f.to == "" {
		return usagef("export needs --to DIR")
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	var snap api.RecoverySnapshot
	if f.pit != "" {
		if snap, err = c.RecoverySnapshot(ctx, f.pit); err != nil {
			return err
		}
		if snap.SourceServerID != server {
			return fmt.Errorf("recovery snapshot %s belongs to %s, not %s", f.pit, snap.SourceServerID, server)
		}
	} else if snap, err = newestConsistent(ctx, c, server); err != nil {
		return err
	}
	root, err := openExportDir(f.to)
	if err != nil {
		return err
	}
	defer root.Close()
	p := newProgress(g.stderr)
	defer p.Close()
	for _, v := range snap.Volumes {
		if err := exportOverAPI(ctx, g, c, root, snap.ID, v.Name, p); err != nil {
			return err
		}
	}
	return nil
}

// newestConsistent returns a server's newest filesystem- or crash-consistent PIT.
func newestConsistent(ctx context.Context, c *api.Client, server string) (api.RecoverySnapshot, error) {
	var found *api.RecoverySnapshot
	_, err := api.EachPage(ctx, "", c.RecoverySnapshotPages(server, 100), func(p api.RecoverySnapshot) (bool, error) {
		if p.Level.Recoverable() {
			found = &p
		}
		return found != nil, nil
	})
	if err != nil {
		return api.RecoverySnapshot{}, err
	}
	if found == nil {
		return api.RecoverySnapshot{}, fmt.Errorf("source server %s has no consistent recovery snapshot yet: wait for replication to reach CONTINUOUS, or name one with --pit", server)
	}
	return *found, nil
}

// openExportDir creates (0700) and opens the directory images are written to: every
// file is created through the returned root, so none lands outside it.
func openExportDir(dir string) (*os.Root, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the export directory: %w", err)
	}
	return os.OpenRoot(dir)
}

// createImage creates a volume's image file in root, new (0600): a file of that name is
// removed first, so an image is never written through a link planted there.
func createImage(root *os.Root, volume string) (*os.File, string, error) {
	name, err := api.ExportFileName(volume)
	if err != nil {
		return nil, "", err
	}
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("replace %s: %w", filepath.Join(root.Name(), name), err)
	}
	f, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("create %s: %w", filepath.Join(root.Name(), name), err)
	}
	return f, name, nil
}

// closeImage ends an image file that writing left with err: synced and closed, or
// removed when either failed (or writing did).
func closeImage(root *os.Root, name string, f *os.File, err error) error {
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = root.Remove(name)
	}
	return err
}

// exportOverAPI writes one volume of a PIT, streamed by the control plane, into root,
// showing its progress on p.
func exportOverAPI(ctx context.Context, g *globals, c *api.Client, root *os.Root, pit, volume string, p Progress) error {
	if _, err := api.ExportFileName(volume); err != nil {
		return err
	}
	body, err := c.ExportVolume(ctx, pit, volume)
	if err != nil {
		return err
	}
	defer body.Close()
	f, name, err := createImage(root, volume)
	if err != nil {
		return err
	}
	start := time.Now()
	p.Start("export "+volume, unitBytes, 0)
	size, written, err := writeExtents(body, f, p.Set)
	if err := closeImage(root, name, f, err); err != nil {
		p.Close()
		return fmt.Errorf("export volume %s of %s: %w", volume, pit, err)
	}
	p.Finish()
	fmt.Fprintf(g.stdout, "%s\t%s of %s (%s written) in %s\n", filepath.Join(root.Name(), name), bytesIEC(size), volume,
		bytesIEC(written), time.Since(start).Round(time.Millisecond))
	return nil
}

// writeExtents writes an export stream into f, sized to the volume, leaving holes where
// no extent is; it returns the volume's size and the bytes written once the stream's
// trailer checked out.
func writeExtents(r io.Reader, f *os.File, progress func(done, total int64)) (size, written int64, err error) {
	x, err := api.NewExtentReader(r)
	if err != nil {
		return 0, 0, err
	}
	size = x.Header().Size
	if err := f.Truncate(size); err != nil {
		return size, 0, err
	}
	for {
		off, b, err := x.Next()
		if errors.Is(err, io.EOF) {
			return size, written, nil
		}
		if err != nil {
			return size, written, err
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return size, written, err
		}
		written += int64(len(b))
		progress(off+int64(len(b)), size)
	}
}

// exportVolume writes one volume of a PIT, read from the store directly, into root,
// showing its progress on p.
func exportVolume(ctx context.Context, g *globals, repo *store.Repo, pit store.PIT, volume string, root *os.Root, p Progress) error {
	v, err := repo.OpenVolume(ctx, pit, volume)
	if err != nil {
		return err
	}
	f, name, err := createImage(root, volume)
	if err != nil {
		return err
	}
	start := time.Now()
	p.Start("export "+volume, unitBytes, 0)
	st, err := v.Export(ctx, f, store.ExportOptions{Progress: p.Set})
	if err := closeImage(root, name, f, err); err != nil {
		p.Close()
		return fmt.Errorf("export volume %s of %s: %w", volume, pit.ID, err)
	}
	p.Finish()
	fmt.Fprintf(g.stdout, "%s\t%s of %s (%s written, %d zero blocks as holes) in %s\n", filepath.Join(root.Name(), name),
		strings.TrimSpace(bytesIEC(st.Bytes)), volume, bytesIEC(st.WrittenBytes), st.ZeroBlocks, time.Since(start).Round(time.Millisecond))
	return nil
}
