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
	cmd.AddCommand(newSitesListCmd(g), newSitesShowCmd(g), newSitesCreateCmd(g), newSitesDeleteCmd(g))
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
		row(w, "ID", "DESCRIPTION", "CREATED", "PROVIDER", "URI")
		for _, s := range ss.Items {
			row(w, s.ID, orDash(s.Description), s.CreatedAt.Local().Format(time.RFC3339), s.Provider, orDash(s.URI))
		}
	})
}

func newSitesShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "show ID", Short: "Show a site: its provider, URI, pool and whether it has credentials", Args: exactArgs(1, "a site id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(g, func(c *api.Client) (api.Site, error) { return c.Site(cmd.Context(), args[0]) },
				func(w *tabwriter.Writer, s api.Site) {
					creds := "none"
					if s.HasCredentials {
						creds = "set (never shown)"
					}
					row(w, "ID", s.ID)
					row(w, "DESCRIPTION", orDash(s.Description))
					row(w, "PROVIDER", s.Provider)
					row(w, "URI", orDash(s.URI))
					row(w, "POOL", orDash(s.Pool))
					row(w, "CREDENTIALS", creds)
					row(w, "CREATED", s.CreatedAt.Local().Format(time.RFC3339))
				})
		},
	}
}

func newSitesCreateCmd(g *globals) *cobra.Command {
	var req api.CreateSiteRequest
	var credsFile string
	cmd := &cobra.Command{
		Use:   "create ID",
		Short: "Create a site",
		Long: "Create a site. Its provider launches recovery instances: qemu (the default) on the control plane's own host, " +
			"libvirt on the libvirt at --uri (qemu:///system, qemu+tls://HOST/system, qemu+ssh://USER@HOST/system or " +
			"qemu+tcp://HOST/system), uploading disks into --pool (default \"default\"), or image (disk images only). " +
			"--credentials-file gives a qemu+tls site its client certificate, key and CA (PEM, one file) or a qemu+ssh site its " +
			"SSH private key; the control plane keeps them sealed and never shows them again.",
		Args: exactArgs(1, "a site id (a name you choose)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.ID = args[0]
			if credsFile != "" {
				b, err := readFileMax(credsFile, api.MaxSiteCredentialsBytes)
				if err != nil {
					return fmt.Errorf("read the site's credentials: %w", err)
				}
				if len(b) == 0 {
					return usagef("%s is empty: give the file with the site's credentials", credsFile)
				}
				req.Credentials = b
			}
			return runSitesCreate(cmd.Context(), g, req)
		},
	}
	cmd.Flags().StringVar(&req.Description, "description", "", "what and where the site is")
	cmd.Flags().StringVar(&req.Provider, "provider", api.ProviderQEMU, "what launches the site's recovery instances: qemu, libvirt or image")
	cmd.Flags().StringVar(&req.URI, "uri", "", "libvirt: the libvirt URI (qemu:///system, qemu+tls://HOST/system, qemu+ssh://USER@HOST/system, qemu+tcp://HOST/system)")
	cmd.Flags().StringVar(&req.Pool, "pool", "", "libvirt: the storage pool recovered disks are uploaded into (default \"default\")")
	cmd.Flags().StringVar(&credsFile, "credentials-file", "", "libvirt: a file with the PEM client certificate, key and CA (qemu+tls) or an SSH private key (qemu+ssh); at most 64 KiB")
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
