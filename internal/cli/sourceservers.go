package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newSourceServersCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "source-servers", Aliases: []string{"source-server", "ss"},
		Short: "List, describe and delete source servers (machines protected by an agent)"}
	cmd.AddCommand(newSourceServersListCmd(g), newSourceServersDescribeCmd(g), newSourceServersDeleteCmd(g),
		newSourceServersDisconnectCmd(g), newSourceServersTagCmd(g))
	return cmd
}

func newSourceServersDisconnectCmd(g *globals) *cobra.Command {
	var force, deleteData bool
	cmd := &cobra.Command{
		Use:   "disconnect ID",
		Short: "Stop a source server's replication for good and revoke its agent's certificate (DRS: Disconnect from AWS)",
		Long: `Disconnect a source server: its replication stops (state DISCONNECTED), its agent's
certificate is revoked at once (the agent can neither report nor replicate; register it
again with lifeboat agent install --replace to protect the machine anew), and its PITs
stay recorded for recovery until the server is deleted. --delete-data deletes its
unlocked PITs now; locked PITs are always kept until their locks end.

Refused while the server has a recovery instance that is not a drill, or while it is the
reversed source server of a failback that has not completed: disconnecting then loses
the way back. --force disconnects anyway.`,
		Args: exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.DisconnectSourceServer(cmd.Context(), args[0], force, deleteData)
			if err != nil {
				return err
			}
			return g.show(s, func(w *tabwriter.Writer) { row(w, s.ID, s.Replication.DataReplicationState) })
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "disconnect even though a recovery or a failback depends on this server")
	cmd.Flags().BoolVar(&deleteData, "delete-data", false, "delete the server's unlocked PITs now (record and staging store)")
	return cmd
}

// sourceServersListFlags are the flags of source-servers list.
type sourceServersListFlags struct {
	filter          api.SourceServerFilter
	ready, notReady bool
	tags            []string
}

func newSourceServersListCmd(g *globals) *cobra.Command {
	var f sourceServersListFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List source servers, ready for recovery first",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runSourceServersList(cmd.Context(), g, f) },
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&f.filter.States, "state", nil, "only these data replication states (repeatable or comma-separated)")
	fl.StringVar(&f.filter.Hostname, "hostname", "", "only hostnames containing this (case-insensitive)")
	fl.StringVar(&f.filter.ReplicatorID, "replicator", "", "only servers assigned to this replicator id")
	fl.BoolVar(&f.ready, "ready", false, "only servers ready for recovery")
	fl.BoolVar(&f.notReady, "not-ready", false, "only servers not ready for recovery")
	fl.StringArrayVar(&f.tags, "tag", nil, "only servers carrying this KEY=VALUE tag (repeatable: all of them)")
	fl.IntVar(&f.filter.Limit, "page-size", 1000, "servers fetched per API call")
	return cmd
}

func runSourceServersList(ctx context.Context, g *globals, f sourceServersListFlags) error {
	if f.ready && f.notReady {
		return usagef("--ready and --not-ready exclude each other")
	}
	if f.ready || f.notReady {
		f.filter.ReadyForRecovery = &f.ready
	}
	for i, s := range f.filter.States {
		f.filter.States[i] = strings.ToUpper(s)
		if !api.ValidState(f.filter.States[i]) {
			return usagef("--state %q is not a replication state: use one of %s", s, strings.Join(api.DataReplicationStates, ", "))
		}
	}
	if f.filter.Limit < 1 || f.filter.Limit > api.MaxPageSize {
		return usagef("--page-size must be 1 to %d", api.MaxPageSize)
	}
	tags, err := api.ParseTagFilter(f.tags)
	if err != nil {
		return &UsageError{Err: err}
	}
	f.filter.Tags = tags
	c, err := g.client()
	if err != nil {
		return err
	}
	all, err := c.AllSourceServers(ctx, f.filter)
	if err != nil {
		return err
	}
	return g.show(api.SourceServerList{Items: all}, func(w *tabwriter.Writer) {
		row(w, "ID", "HOSTNAME", "READY", "STATE", "LAG", "BACKLOG", "LAST POINT", "REPLICATOR", "TAGS", "ERROR")
		for _, s := range all {
			r := s.Replication
			row(w, s.ID, s.Hostname, yesNo(r.ReadyForRecovery), stateText(r), lagText(r.LagSeconds),
				bytesText(r.BacklogBytes), pointText(r.LastConsistencyPoint), orDash(s.ReplicatorID), tagsText(s.Tags), errText(r.Error))
		}
	})
}

func newSourceServersDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "describe ID", Short: "Show a source server with its volumes and replication state", Args: exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSourceServersDescribe(cmd.Context(), g, args[0])
		},
	}
}

func runSourceServersDescribe(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	s, err := c.SourceServer(ctx, id)
	if err != nil {
		return err
	}
	if err := fillRecoverablePoint(ctx, c, &s); err != nil {
		return err
	}
	return g.show(s, func(w *tabwriter.Writer) { describeServer(w, s) })
}

func newSourceServersTagCmd(g *globals) *cobra.Command {
	var remove []string
	cmd := &cobra.Command{
		Use:   "tag ID K=V... [--remove K]...",
		Short: "Set (and remove) a source server's tags, by which recovery plans select servers",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usagef("tag takes a source server id and KEY=VALUE tags")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSourceServersTag(cmd.Context(), g, args[0], args[1:], remove)
		},
	}
	cmd.Flags().StringArrayVar(&remove, "remove", nil, "a tag key to remove (repeatable)")
	return cmd
}

func runSourceServersTag(ctx context.Context, g *globals, id string, kvs, remove []string) error {
	set, err := parseTags(kvs)
	if err != nil {
		return err
	}
	r := api.UpdateSourceServerTagsRequest{Set: set, Remove: remove}
	if err := r.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.UpdateSourceServerTags(ctx, id, r)
	if err != nil {
		return err
	}
	return g.show(s, func(w *tabwriter.Writer) { row(w, s.ID, tagsText(s.Tags)) })
}

// sourceServersDeleteFlags are the flags of source-servers delete.
type sourceServersDeleteFlags struct {
	force, yes bool
}

func newSourceServersDeleteCmd(g *globals) *cobra.Command {
	var f sourceServersDeleteFlags
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a source server's record (its agent can no longer call in)",
		Long: `Delete a source server's record. It is refused while the server has recovery instances or
locked recovery snapshots, and while it has recovery snapshots unless --force (their
staging data stays until the store's garbage collection). It asks first unless --yes.`,
		Args: exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSourceServersDelete(cmd.Context(), g, args[0], f)
		},
	}
	cmd.Flags().BoolVar(&f.force, "force", false, "delete even though recovery snapshots are recorded")
	cmd.Flags().BoolVarP(&f.yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

func runSourceServersDelete(ctx context.Context, g *globals, id string, f sourceServersDeleteFlags) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	s, err := c.SourceServer(ctx, id)
	if err != nil {
		return err
	}
	if !f.yes {
		ok, err := g.confirm(fmt.Sprintf("Delete source server %s (%s)?", s.ID, s.Hostname))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("not deleted: answer y to delete, or pass --yes")
		}
	}
	if err := c.DeleteSourceServer(ctx, s.ID, f.force); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "source server %s (%s) deleted\n", s.ID, s.Hostname)
	return nil
}

func describeServer(w *tabwriter.Writer, s api.SourceServer) {
	r := s.Replication
	row(w, "ID:", s.ID)
	row(w, "Hostname:", s.Hostname)
	if s.Reversed != nil {
		row(w, "Reversed from:", fmt.Sprintf("recovery instance %s, back to source server %s (replica started as PIT %s)",
			s.Reversed.RecoveryInstanceID, s.Reversed.OriginSourceServerID, s.Reversed.SeedSnapshotID))
	}
	row(w, "Machine id:", s.MachineID)
	row(w, "Account:", s.AccountID)
	row(w, "Target site:", s.SiteID)
	row(w, "Replicator:", orDash(s.ReplicatorID))
	row(w, "Tags:", tagsText(s.Tags))
	row(w, "Agent:", strings.TrimSpace(fmt.Sprintf("%s %s/%s", s.AgentVersion, s.OS, s.Arch)))
	if s.LastSeenAt != nil {
		row(w, "Agent last seen:", s.LastSeenAt.Local().Format(time.RFC3339))
	}
	row(w, "Ready for recovery:", yesNo(r.ReadyForRecovery))
	row(w, "State:", stateText(r))
	if r.Error != nil {
		row(w, "Error:", errText(r.Error))
	}
	row(w, "Lag:", lagText(r.LagSeconds))
	row(w, "Backlog:", bytesText(r.BacklogBytes))
	if r.ETASeconds != nil {
		row(w, "ETA:", (time.Duration(*r.ETASeconds) * time.Second).String())
	}
	row(w, "Last consistency point:", pointText(r.LastConsistencyPoint))
	row(w, "Data-loss exposure:", exposureText(r, time.Now()))
	if r.LastFreezeMs != nil {
		row(w, "Last freeze:", fmt.Sprintf("%.1f ms", *r.LastFreezeMs))
	}
	row(w, "Tracker:", orDash(r.Tracker))
	row(w, "Throughput:", bytesText(r.ThroughputBytesPerSecond)+"/s")
	for _, st := range r.InitiationSteps {
		row(w, "Initiation step:", st.Name+" "+st.Status)
	}
	row(w, "Certificate expires:", s.CertificateExpiresAt.Local().Format(time.RFC3339))
	row(w, "Registered:", s.CreatedAt.Local().Format(time.RFC3339))
	for _, v := range s.Volumes {
		row(w, "Volume:", fmt.Sprintf("%s %s %s %s %s", v.Name, v.Path, bytesText(v.SizeBytes), orDash(v.MajorMinor), strings.Join(v.MountPoints, ",")))
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func stateText(r api.ReplicationState) string {
	s := r.DataReplicationState
	if r.InitialSyncPercent != nil && s == api.StateInitialSync {
		s += fmt.Sprintf(" %.0f%%", *r.InitialSyncPercent)
	}
	return s
}

func lagText(l *float64) string {
	if l == nil {
		return "-"
	}
	return (time.Duration(*l * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func bytesText(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

func pointText(p *api.ConsistencyPointInfo) string {
	if p == nil {
		return "none yet"
	}
	return p.Time.Local().Format("2006-01-02 15:04:05") + " " + p.Level.String()
}

func errText(e *api.ReplicationError) string {
	if e == nil {
		return "-"
	}
	return e.Code + ": " + e.Message
}
