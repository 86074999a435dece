package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// newReplicatorsCmd is the replicators registered with the control plane (the
// replicator command, replicator.go, runs one).
func newReplicatorsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "replicators", Short: "Replication servers registered with the control plane"}
	cmd.AddCommand(newReplicatorsListCmd(g), newReplicatorsDescribeCmd(g), newReplicatorsDeleteCmd(g))
	return cmd
}

// replicatorsTable prints replicators, one a row.
func replicatorsTable(items []api.Replicator) func(w *tabwriter.Writer) {
	return func(w *tabwriter.Writer) {
		row(w, "ID", "NAME", "SITE", "ADDRESS", "STATE", "SERVERS", "CPU", "RSS", "LAST HEARTBEAT")
		for _, r := range items {
			hb := "never"
			if r.LastHeartbeatAt != nil {
				hb = r.LastHeartbeatAt.Local().Format("2006-01-02 15:04:05")
			}
			row(w, r.ID, r.Name, r.SiteID, r.Address, r.State, r.AssignedSourceServers,
				fmt.Sprintf("%.0f%%", r.Metrics.CPUPercent), bytesText(r.Metrics.RSSBytes), hb)
		}
	}
}

func newReplicatorsListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List replicators", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runReplicatorsList(cmd.Context(), g) },
	}
}

func runReplicatorsList(ctx context.Context, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	rs, err := c.Replicators(ctx)
	if err != nil {
		return err
	}
	return g.show(rs, replicatorsTable(rs.Items))
}

func newReplicatorsDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "describe ID", Short: "Show a replicator", Args: exactArgs(1, "a replicator id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runReplicatorsDescribe(cmd.Context(), g, args[0])
		},
	}
}

func runReplicatorsDescribe(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	r, err := c.Replicator(ctx, id)
	if err != nil {
		return err
	}
	return g.show(r, replicatorsTable([]api.Replicator{r}))
}

func newReplicatorsDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "delete ID", Short: "Delete a replicator; its source servers move to others", Args: exactArgs(1, "a replicator id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runReplicatorsDelete(cmd.Context(), g, args[0]) },
	}
}

func runReplicatorsDelete(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	if err := c.DeleteReplicator(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "replicator %s deleted\n", id)
	return nil
}
