package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newSnapshotsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshots", Aliases: []string{"snapshot", "pits"}, Short: "Recovery snapshots (PITs) of a source server"}
	cmd.AddCommand(newSnapshotsListCmd(g), newSnapshotsCreateCmd(g), newSnapshotsProtectCmd(g))
	return cmd
}

func newSnapshotsListCmd(g *globals) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "list ID",
		Short: "List a source server's recovery snapshots, newest first",
		Args:  exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotsList(cmd.Context(), g, args[0], limit)
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "how many to list")
	return cmd
}

func runSnapshotsList(ctx context.Context, g *globals, server string, limit int) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	page, err := c.RecoverySnapshots(ctx, server, limit, "")
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
}

// snapshotsCreateFlags are the flags of snapshots create.
type snapshotsCreateFlags struct {
	wait    bool
	timeout time.Duration
}

func newSnapshotsCreateCmd(g *globals) *cobra.Command {
	var f snapshotsCreateFlags
	cmd := &cobra.Command{
		Use:   "create ID",
		Short: "Take a consistency point now; with --wait, print the PIT once it is sealed",
		Args:  exactArgs(1, "a source server id"),
		RunE:  func(cmd *cobra.Command, args []string) error { return runSnapshotsCreate(cmd.Context(), g, args[0], f) },
	}
	cmd.Flags().BoolVar(&f.wait, "wait", false, "wait until the PIT is sealed")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 5*time.Minute, "how long --wait waits")
	return cmd
}

func runSnapshotsCreate(ctx context.Context, g *globals, server string, f snapshotsCreateFlags) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	req, err := c.RequestSnapshot(ctx, server)
	if err != nil {
		return err
	}
	if !f.wait {
		fmt.Fprintf(g.stdout, "snapshot requested (%s): the agent takes a consistency point at its next check\n", req.ID)
		return nil
	}
	p, err := waitForPIT(ctx, c, server, req.RequestedAt, f.timeout)
	if err != nil {
		return err
	}
	return g.show(p, func(w *tabwriter.Writer) {
		row(w, "recovery snapshot", p.ID)
		row(w, "time", p.Time.Format(time.RFC3339Nano))
		row(w, "level", p.Level)
	})
}

func newSnapshotsProtectCmd(g *globals) *cobra.Command {
	var until string
	cmd := &cobra.Command{
		Use:   "protect PIT --until TIME",
		Short: "Lock a recovery snapshot against deletion until TIME (RFC 3339, or a duration such as 720h)",
		Args:  exactArgs(1, "a recovery snapshot id (pit-…)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotsProtect(cmd.Context(), g, args[0], until)
		},
	}
	cmd.Flags().StringVar(&until, "until", "", "when the lock ends: RFC 3339 time or a duration from now")
	return cmd
}

func runSnapshotsProtect(ctx context.Context, g *globals, pit, until string) error {
	t, err := parseUntil(until, time.Now())
	if err != nil {
		return err
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	p, err := c.ProtectRecoverySnapshot(ctx, pit, t)
	if err != nil {
		return err
	}
	return g.show(p, func(w *tabwriter.Writer) {
		row(w, "recovery snapshot", p.ID)
		row(w, "locked until", p.LockUntil.Format(time.RFC3339))
	})
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
