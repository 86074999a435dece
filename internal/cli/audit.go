package cli

import (
	"context"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The audit log: who changed what, when (admins)"}
	cmd.AddCommand(newAuditListCmd(g))
	return cmd
}

func newAuditListCmd(g *globals) *cobra.Command {
	var f api.AuditFilter
	cmd := &cobra.Command{
		Use: "list", Short: "List audit entries, newest first", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAuditList(cmd.Context(), g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.TargetID, "target", "", "only entries about this id")
	fl.StringVar(&f.Action, "action", "", "only this action, e.g. source-server.register")
	fl.IntVar(&f.Limit, "limit", 50, "how many entries")
	fl.StringVar(&f.PageToken, "page-token", "", "continue after a previous page (its nextPageToken)")
	return cmd
}

func runAuditList(ctx context.Context, g *globals, f api.AuditFilter) error {
	if f.Limit < 1 || f.Limit > api.MaxPageSize {
		return usagef("--limit must be 1 to %d", api.MaxPageSize)
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	page, err := c.Audit(ctx, f)
	if err != nil {
		return err
	}
	return g.show(page, func(w *tabwriter.Writer) {
		row(w, "TIME", "ACTOR", "ACTION", "TARGET")
		for _, e := range page.Items {
			row(w, e.Time.Local().Format("2006-01-02 15:04:05"), e.ActorKind+":"+e.ActorID, e.Action, e.TargetKind+":"+e.TargetID)
		}
	})
}
