package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newInstancesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "instances", Aliases: []string{"instance"},
		Short: "Existing machines recoveries may launch into (stopped and tagged AWSDRS=AllowLaunchingIntoThisInstance)"}
	cmd.AddCommand(newInstancesListCmd(g), newInstancesAddCmd(g), newInstancesTagCmd(g),
		newInstancesPowerCmd(g, "start", "Start an instance's VM", (*api.Client).StartInstance),
		newInstancesPowerCmd(g, "stop", "Stop an instance's VM (power button, then off)", (*api.Client).StopInstance),
		newInstancesRemoveCmd(g))
	return cmd
}

func newInstancesListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List instances", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runInstancesList(cmd.Context(), g) },
	}
}

func runInstancesList(ctx context.Context, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	l, err := c.Instances(ctx)
	if err != nil {
		return err
	}
	return g.show(l, func(w *tabwriter.Writer) {
		row(w, "ID", "NAME", "SITE", "STATE", "BOOT", "DISKS", "LAUNCH INTO", "RECOVERY INSTANCE", "TAGS")
		for _, in := range l.Items {
			row(w, in.ID, in.Name, in.SiteID, in.State, in.BootMode, len(in.Disks), yesNo(api.AllowsLaunchInto(in.Tags)),
				orDash(in.RecoveryInstanceID), tagsText(in.Tags))
		}
	})
}

func newInstancesAddCmd(g *globals) *cobra.Command {
	var req api.CreateInstanceRequest
	var tags []string
	cmd := &cobra.Command{
		Use: "add --site S (--disk PATH... | --name DOMAIN) [--tag K=V]...", Short: "Register an instance: its disks on the control plane's host (boot disk first), or a libvirt site's domain by name", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runInstancesAdd(cmd.Context(), g, req, tags) },
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Site, "site", api.DefaultSite, "the site the instance is in")
	fl.StringVar(&req.Name, "name", "", "a name (default: its id); on a libvirt site, the domain's name")
	fl.StringArrayVar(&req.Disks, "disk", nil, "a disk: a raw image file or a block device (repeatable, boot disk first)")
	fl.StringArrayVar(&tags, "tag", nil, "KEY=VALUE (repeatable), e.g. AWSDRS=AllowLaunchingIntoThisInstance")
	fl.StringVar(&req.BootMode, "boot-mode", api.BootBIOS, "bios, uefi or kernel (direct kernel boot from the disk)")
	return cmd
}

func runInstancesAdd(ctx context.Context, g *globals, req api.CreateInstanceRequest, tags []string) error {
	t, err := parseTags(tags)
	if err != nil {
		return err
	}
	req.Tags = t
	if err := req.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	in, err := c.CreateInstance(ctx, req)
	if err != nil {
		return err
	}
	return g.show(in, func(w *tabwriter.Writer) { fmt.Fprintln(w, in.ID) })
}

func newInstancesTagCmd(g *globals) *cobra.Command {
	var remove []string
	cmd := &cobra.Command{
		Use: "tag ID K=V... [--remove K]...", Short: "Set (and remove) an instance's tags",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usagef("tag takes an instance id and KEY=VALUE tags")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInstancesTag(cmd.Context(), g, args[0], args[1:], remove)
		},
	}
	cmd.Flags().StringArrayVar(&remove, "remove", nil, "a tag key to remove (repeatable)")
	return cmd
}

func runInstancesTag(ctx context.Context, g *globals, id string, kvs, remove []string) error {
	set, err := parseTags(kvs)
	if err != nil {
		return err
	}
	r := api.UpdateInstanceTagsRequest{Set: set, Remove: remove}
	if err := r.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	in, err := c.UpdateInstanceTags(ctx, id, r)
	if err != nil {
		return err
	}
	return g.show(in, func(w *tabwriter.Writer) { row(w, in.ID, tagsText(in.Tags)) })
}

// newInstancesPowerCmd builds start or stop: call is the client's method.
func newInstancesPowerCmd(g *globals, use, short string, call func(*api.Client, context.Context, string) (api.Instance, error)) *cobra.Command {
	return &cobra.Command{
		Use: use + " ID", Short: short, Args: exactArgs(1, "an instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInstancesPower(cmd.Context(), g, args[0], call)
		},
	}
}

func runInstancesPower(ctx context.Context, g *globals, id string, call func(*api.Client, context.Context, string) (api.Instance, error)) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	in, err := call(c, ctx, id)
	if err != nil {
		return err
	}
	return g.show(in, func(w *tabwriter.Writer) { row(w, in.ID, in.State) })
}

func newInstancesRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "remove ID", Short: "Remove an instance's registration (its disks are left alone)", Args: exactArgs(1, "an instance id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runInstancesRemove(cmd.Context(), g, args[0]) },
	}
}

func runInstancesRemove(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DeleteInstance(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "instance %s removed\n", id)
	return nil
}

func parseTags(kvs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("tag %q must be KEY=VALUE", kv)
		}
		out[k] = v
	}
	return out, nil
}

func tagsText(tags map[string]string) string {
	var parts []string
	for k, v := range tags {
		parts = append(parts, k+"="+v)
	}
	if len(parts) == 0 {
		return "-"
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}
