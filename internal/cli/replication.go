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
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

func newReplicationCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "replication", Short: "Start, stop, pause, resume or retry a source server's replication"}
	help := map[string]string{
		api.ActionStart:  "Start replication again after a stop (a new session and a rescan)",
		api.ActionStop:   "Stop replication; the replica and recovery snapshots are kept",
		api.ActionPause:  "Pause sending; resume continues where it stopped",
		api.ActionResume: "Resume a paused replication",
		api.ActionRetry:  "Start a new session and rescan (after a STALLED error was fixed)",
	}
	for _, action := range api.ReplicationActions {
		cmd.AddCommand(&cobra.Command{
			Use:   action + " ID",
			Short: help[action],
			Args:  exactArgs(1, "a source server id"),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				ctl, err := c.ReplicationAction(cmd.Context(), args[0], action)
				if err != nil {
					return err
				}
				return g.show(ctl, func(w *tabwriter.Writer) {
					row(w, "source server", args[0])
					row(w, "replication", ctl.Desired)
					row(w, "generation", ctl.Generation)
				})
			},
		})
	}
	return cmd
}

func newSnapshotsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshots", Aliases: []string{"snapshot", "pits"}, Short: "Recovery snapshots (PITs) of a source server"}
	var limit int
	list := &cobra.Command{
		Use:   "list ID",
		Short: "List a source server's recovery snapshots, newest first",
		Args:  exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			page, err := c.RecoverySnapshots(cmd.Context(), args[0], limit, "")
			if err != nil {
				return err
			}
			return g.show(page, func(w *tabwriter.Writer) {
				row(w, "ID", "TIME", "AGE", "LEVEL", "VOLUMES", "ADDED", "LOCKED UNTIL")
				for _, p := range page.Items {
					lock := "-"
					if p.LockUntil != nil {
						lock = p.LockUntil.Format(time.RFC3339)
					}
					row(w, p.ID, p.Time.Format("2006-01-02 15:04:05.000"), time.Since(p.Time).Round(time.Second), p.Level,
						len(p.Volumes), bytesIEC(p.SizeBytes), lock)
				}
			})
		},
	}
	list.Flags().IntVar(&limit, "limit", 100, "how many to list")
	var wait bool
	var timeout time.Duration
	create := &cobra.Command{
		Use:   "create ID",
		Short: "Take a consistency point now; with --wait, print the PIT once it is sealed",
		Args:  exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			req, err := c.RequestSnapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !wait {
				fmt.Fprintf(g.stdout, "snapshot requested (%s): the agent takes a consistency point at its next check\n", req.ID)
				return nil
			}
			p, err := waitForPIT(cmd.Context(), c, args[0], req.RequestedAt, timeout)
			if err != nil {
				return err
			}
			return g.show(p, func(w *tabwriter.Writer) {
				row(w, "recovery snapshot", p.ID)
				row(w, "time", p.Time.Format(time.RFC3339Nano))
				row(w, "level", p.Level)
			})
		},
	}
	create.Flags().BoolVar(&wait, "wait", false, "wait until the PIT is sealed")
	create.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long --wait waits")
	var until string
	protect := &cobra.Command{
		Use:   "protect PIT --until TIME",
		Short: "Lock a recovery snapshot against deletion until TIME (RFC 3339, or a duration such as 720h)",
		Args:  exactArgs(1, "a recovery snapshot id (pit-…)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := parseUntil(until, time.Now())
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			p, err := c.ProtectRecoverySnapshot(cmd.Context(), args[0], t)
			if err != nil {
				return err
			}
			return g.show(p, func(w *tabwriter.Writer) {
				row(w, "recovery snapshot", p.ID)
				row(w, "locked until", p.LockUntil.Format(time.RFC3339))
			})
		},
	}
	protect.Flags().StringVar(&until, "until", "", "when the lock ends: RFC 3339 time or a duration from now")
	cmd.AddCommand(list, create, protect)
	return cmd
}

// parseUntil reads an RFC 3339 time or a duration from now.
func parseUntil(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, usagef("--until is required: an RFC 3339 time (2027-01-31T00:00:00Z) or a duration (720h)")
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(d), nil
	}
	return time.Time{}, usagef("--until %q is neither an RFC 3339 time (2027-01-31T00:00:00Z) nor a duration (720h)", s)
}

// waitForPIT waits for a PIT of server at or after since.
func waitForPIT(ctx context.Context, c *api.Client, server string, since time.Time, timeout time.Duration) (api.RecoverySnapshot, error) {
	deadline := time.Now().Add(timeout)
	for {
		page, err := c.RecoverySnapshots(ctx, server, 1, "")
		if err != nil {
			return api.RecoverySnapshot{}, err
		}
		if len(page.Items) > 0 && !page.Items[0].Time.Before(since) {
			return page.Items[0], nil
		}
		if time.Now().After(deadline) {
			s, _ := c.SourceServer(ctx, server)
			why := s.Replication.DataReplicationState
			if e := s.Replication.Error; e != nil {
				why += ", " + e.Code + ": " + e.Message
			}
			return api.RecoverySnapshot{}, fmt.Errorf("no PIT of %s was sealed within %s (replication is %s)", server, timeout, why)
		}
		select {
		case <-ctx.Done():
			return api.RecoverySnapshot{}, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func newExportCmd(g *globals) *cobra.Command {
	var pitID, to string
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
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usagef("export needs --to DIR")
			}
			ctx := cmd.Context()
			c, err := g.client()
			if err != nil {
				return err
			}
			server := args[0]
			var snap api.RecoverySnapshot
			if pitID != "" {
				if snap, err = c.RecoverySnapshot(ctx, pitID); err != nil {
					return err
				}
				if snap.SourceServerID != server {
					return fmt.Errorf("recovery snapshot %s belongs to %s, not %s", pitID, snap.SourceServerID, server)
				}
			} else if snap, err = newestConsistent(ctx, c, server); err != nil {
				return err
			}
			root, err := openExportDir(to)
			if err != nil {
				return err
			}
			defer root.Close()
			for _, v := range snap.Volumes {
				if err := exportOverAPI(ctx, g, c, root, snap.ID, v.Name); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pitID, "pit", "", "the recovery snapshot (pit-…); default the newest consistent one")
	cmd.Flags().StringVar(&to, "to", "", "directory for the images")
	return cmd
}

// newestConsistent returns a server's newest filesystem- or crash-consistent PIT.
func newestConsistent(ctx context.Context, c *api.Client, server string) (api.RecoverySnapshot, error) {
	token := ""
	for {
		page, err := c.RecoverySnapshots(ctx, server, 100, token)
		if err != nil {
			return api.RecoverySnapshot{}, err
		}
		for _, p := range page.Items {
			if p.Level == consistency.Filesystem || p.Level == consistency.Crash {
				return p, nil
			}
		}
		if page.NextPageToken == "" {
			return api.RecoverySnapshot{}, fmt.Errorf("source server %s has no consistent recovery snapshot yet: wait for replication to reach CONTINUOUS, or name one with --pit", server)
		}
		token = page.NextPageToken
	}
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

// progressEvery reports an export's progress at most every 2 seconds.
func progressEvery(g *globals, volume string) func(done, total int64) {
	last := time.Now()
	return func(done, total int64) {
		if time.Since(last) >= 2*time.Second && total > 0 {
			last = time.Now()
			fmt.Fprintf(g.stderr, "export %s: %.0f%% (%s of %s)\n", volume, 100*float64(done)/float64(total), bytesIEC(done), bytesIEC(total))
		}
	}
}

// exportOverAPI writes one volume of a PIT, streamed by the control plane, into root.
func exportOverAPI(ctx context.Context, g *globals, c *api.Client, root *os.Root, pit, volume string) error {
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
	size, written, err := writeExtents(body, f, progressEvery(g, volume))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = root.Remove(name)
		return fmt.Errorf("export volume %s of %s: %w", volume, pit, err)
	}
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

// exportVolume writes one volume of a PIT, read from the store directly, into root.
func exportVolume(ctx context.Context, g *globals, repo *store.Repo, pit store.PIT, volume string, root *os.Root) error {
	v, err := repo.OpenVolume(ctx, pit, volume)
	if err != nil {
		return err
	}
	f, name, err := createImage(root, volume)
	if err != nil {
		return err
	}
	start := time.Now()
	st, err := v.Export(ctx, f, store.ExportOptions{Progress: progressEvery(g, volume)})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = root.Remove(name)
		return fmt.Errorf("export volume %s of %s: %w", volume, pit.ID, err)
	}
	fmt.Fprintf(g.stdout, "%s\t%s of %s (%s written, %d zero blocks as holes) in %s\n", filepath.Join(root.Name(), name),
		strings.TrimSpace(bytesIEC(st.Bytes)), volume, bytesIEC(st.WrittenBytes), st.ZeroBlocks, time.Since(start).Round(time.Millisecond))
	return nil
}
