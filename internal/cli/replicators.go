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
	cmd.AddCommand(newReplicatorsListCmd(g), newReplicatorsDescribeCmd(g), newReplicatorsDeleteCmd(g), newReplicatorsDrainCmd(g))
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
			state := r.State
			if r.Draining {
				state += " (draining)"
			}
			row(w, r.ID, r.Name, r.SiteID, r.Address, state, r.AssignedSourceServers,
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

func newReplicatorsDrainCmd(g *globals) *cobra.Command {
	var undo bool
	cmd := &cobra.Command{
		Use:   "drain NAME|ID",
		Short: "Drain a replicator for maintenance: its source servers move to the site's other live replicators and it takes no new ones",
		Args:  exactArgs(1, "a replicator name or id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runReplicatorsDrain(cmd.Context(), g, args[0], !undo)
		},
	}
	cmd.Flags().BoolVar(&undo, "undo", false, "put the replicator back in service")
	return cmd
}

func runReplicatorsDrain(ctx context.Context, g *globals, nameOrID string, drain bool) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	rs, err := c.Replicators(ctx)
	if err != nil {
		return err
	}
	id := ""
	for _, r := range rs.Items {
		if r.ID == nameOrID || r.Name == nameOrID {
			id = r.ID
		}
	}
	if id == "" {
		return fmt.Errorf("no replicator is named %s: see lifeboat replicators list", nameOrID)
	}
	r, err := c.DrainReplicator(ctx, id, drain)
	if err != nil {
		return err
	}
	switch {
	case !drain:
		fmt.Fprintf(g.stderr, "replicator %s is back in service\n", r.Name)
	case r.AssignedSourceServers > 0:
		fmt.Fprintf(g.stderr, "replicator %s is draining: %d source servers stay on it, as its site has no other live replicator to take them\n",
			r.Name, r.AssignedSourceServers)
	default:
		fmt.Fprintf(g.stderr, "replicator %s is drained: it has no source servers and takes none; stop it for maintenance\n", r.Name)
	}
	return g.show(r, replicatorsTable([]api.Replicator{r}))
}
