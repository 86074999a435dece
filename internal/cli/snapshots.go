package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
)

func newSnapshotsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshots", Aliases: []string{"snapshot", "pits"}, Short: "Recovery snapshots (PITs) of a source server"}
	cmd.AddCommand(newSnapshotsListCmd(g), newSnapshotsCreateCmd(g), newSnapshotsProtectCmd(g))
	return cmd
}

// snapshotsListFlags are the flags of snapshots list.
type snapshotsListFlags struct {
	since, until, level string
	limit               int
	all                 bool
}

// defaultSnapshotsShown is how many PITs snapshots list shows without --limit or --all:
// a server takes up to one a second.
const defaultSnapshotsShown = 20

func newSnapshotsListCmd(g *globals) *cobra.Command {
	var f snapshotsListFlags
	cmd := &cobra.Command{
		Use:   "list ID [--since DUR|TIME] [--until TIME] [--level L] [--limit N | --all]",
		Short: "List a source server's recovery snapshots, newest first",
		Long: `List a source server's recovery snapshots (PITs), newest first: the newest 20 unless --limit
or --all says otherwise, saying so when there are more. --since and --until narrow the listing
to PITs taken at or after --since and before --until; each is an RFC 3339 time, a local
"2006-01-02 15:04", or an age such as 30m (--since 1h: the last hour).`,
		Args: exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotsList(cmd.Context(), g, args[0], f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.since, "since", "", "only PITs taken at or after this time, or within this age (30m, 2h)")
	fl.StringVar(&f.until, "until", "", "only PITs taken before this time (or age)")
	fl.StringVar(&f.level, "level", "", "only PITs of this consistency level: filesystem, crash or none")
	fl.IntVar(&f.limit, "limit", defaultSnapshotsShown, "how many to list, newest first (at most 10000)")
	fl.BoolVar(&f.all, "all", false, "list every PIT that matches, page after page")
	return cmd
}

// query reads the flags into a query of the control plane's listing.
func (f snapshotsListFlags) query(now time.Time) (api.SnapshotQuery, error) {
	q := api.SnapshotQuery{Limit: f.limit}
	if f.limit < 1 || f.limit > api.MaxPageSize {
		return q, usagef("--limit must be 1 to %d, not %d (--all lists everything)", api.MaxPageSize, f.limit)
	}
	var err error
	if f.since != "" {
		if q.After, err = parseTimeFlag("--since", f.since, now); err != nil {
			return q, err
		}
	}
	if f.until != "" {
		if q.Before, err = parseTimeFlag("--until", f.until, now); err != nil {
			return q, err
		}
	}
	if !q.After.IsZero() && !q.Before.IsZero() && !q.After.Before(q.Before) {
		return q, usagef("--since (%s) must be earlier than --until (%s)", q.After.Local().Format(time.RFC3339), q.Before.Local().Format(time.RFC3339))
	}
	if f.level != "" {
		l, err := consistency.Parse(f.level)
		if err != nil {
			return q, usagef("--level must be filesystem, crash or none, not %q", f.level)
		}
		q.Level = &l
	}
	if f.all {
		q.Limit = api.MaxPageSize
	}
	return q, nil
}

func runSnapshotsList(ctx context.Context, g *globals, server string, f snapshotsListFlags) error {
	q, err := f.query(time.Now())
	if err != nil {
		return err
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	page, err := c.FindRecoverySnapshots(ctx, server, q, "")
	if err != nil {
		return err
	}
	for f.all && page.NextPageToken != "" {
		more, err := c.FindRecoverySnapshots(ctx, server, q, page.NextPageToken)
		if err != nil {
			return err
		}
		page.Items, page.NextPageToken = append(page.Items, more.Items...), more.NextPageToken
	}
	if page.NextPageToken != "" {
		fmt.Fprintf(g.stderr, "the newest %d PITs shown; there are more: --limit N for more, --since/--until for a time range, --all for every one\n",
			len(page.Items))
	}
	return g.show(page, func(w *tabwriter.Writer) { snapshotsTable(w, page.Items, time.Now()) })
}

// snapshotsTable lists PITs with their age at now.
func snapshotsTable(w *tabwriter.Writer, pits []api.RecoverySnapshot, now time.Time) {
	row(w, "ID", "TIME", "AGE", "LEVEL", "VOLUMES", "ADDED", "LOCKED UNTIL")
	for _, p := range pits {
		lock := "-"
		if p.LockUntil != nil {
			lock = p.LockUntil.Format(time.RFC3339)
		}
		row(w, p.ID, p.Time.Local().Format("2006-01-02 15:04:05.000"), pitAge(now.Sub(p.Time)), p.Level,
			len(p.Volumes), bytesIEC(p.SizeBytes), lock)
	}
}

// pitAge is an age to a precision that suits it (FormatLoss's).
func pitAge(d time.Duration) string {
	if d < 0 {
		return "-" + recovery.FormatLoss(-d)
	}
	return recovery.FormatLoss(d)
}

// parseTimeFlag reads a time flag: an RFC 3339 time, a local "2006-01-02 15:04[:05]", or
// an age (a duration before now).
func parseTimeFlag(flag, s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04:05", "2006-01-02T15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "-")); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usagef("%s %q is not a time: use RFC 3339 (2025-01-02T15:04:05Z), \"2025-01-02 15:04\" (local time) or an age such as 30m", flag, s)
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
	prog := newProgress(g.stderr)
	defer prog.Close()
	prog.Start("waiting for a PIT of "+server, unitSeconds, 0)
	p, err := waitForPIT(ctx, c, server, req.RequestedAt, f.timeout, prog)
	if err != nil {
		return err
	}
	prog.Close()
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

// waitForPIT waits for a PIT of server at or after since, telling p the seconds waited.
func waitForPIT(ctx context.Context, c *api.Client, server string, since time.Time, timeout time.Duration, p Progress) (api.RecoverySnapshot, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		p.Set(int64(time.Since(start).Seconds()), 0)
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
