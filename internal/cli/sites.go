package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newSitesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "sites", Short: "Sites: locations with staging storage, replicators and a launch provider"}
	cmd.AddCommand(newSitesListCmd(g), newSitesCreateCmd(g), newSitesDeleteCmd(g))
	return cmd
}

func newSitesListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List sites", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runSitesList(cmd.Context(), g) },
	}
}

func runSitesList(ctx context.Context, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ss, err := c.Sites(ctx)
	if err != nil {
		return err
	}
	return g.show(ss, func(w *tabwriter.Writer) {
		row(w, "ID", "DESCRIPTION", "CREATED")
		for _, s := range ss.Items {
			row(w, s.ID, orDash(s.Description), s.CreatedAt.Local().Format(time.RFC3339))
		}
	})
}

func newSitesCreateCmd(g *globals) *cobra.Command {
	var desc string
	cmd := &cobra.Command{
		Use: "create ID", Short: "Create a site", Args: exactArgs(1, "a site id (a name you choose)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSitesCreate(cmd.Context(), g, api.CreateSiteRequest{ID: args[0], Description: desc})
		},
	}
	cmd.Flags().StringVar(&desc, "description", "", "what and where the site is")
	return cmd
}

func runSitesCreate(ctx context.Context, g *globals, req api.CreateSiteRequest) error {
	if err := req.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	s, err := c.CreateSite(ctx, req)
	if err != nil {
		return err
	}
	return g.show(s, func(w *tabwriter.Writer) { row(w, "site", s.ID, "created") })
}

func newSitesDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "delete ID", Short: "Delete a site nothing uses", Args: exactArgs(1, "a site id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runSitesDelete(cmd.Context(), g, args[0]) },
	}
}

func runSitesDelete(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	if err := c.DeleteSite(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "site %s deleted\n", id)
	return nil
}
