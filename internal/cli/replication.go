package cli

import (
	"context"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
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
				return runReplicationAction(cmd.Context(), g, args[0], action)
			},
		})
	}
	return cmd
}

func runReplicationAction(ctx context.Context, g *globals, id, action string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ctl, err := c.ReplicationAction(ctx, id, action)
	if err != nil {
		return err
	}
	return g.show(ctl, func(w *tabwriter.Writer) {
		row(w, "source server", id)
		row(w, "replication", ctl.Desired)
		row(w, "generation", ctl.Generation)
	})
}
