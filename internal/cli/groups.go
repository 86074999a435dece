package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newGroupsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "groups", Aliases: []string{"group", "consistency-groups"},
		Short: "Consistency groups: source servers whose PITs are taken at one common instant"}
	cmd.AddCommand(newGroupsCreateCmd(g), newGroupsListCmd(g), newGroupsDescribeCmd(g),
		newGroupsMembersCmd(g, "add", "Add source servers to a group", (*api.Client).AddGroupMembers),
		newGroupsMembersCmd(g, "remove", "Remove source servers from a group", (*api.Client).RemoveGroupMembers),
		newGroupsDeleteCmd(g), newGroupsPointsCmd(g))
	return cmd
}

// groupsCreateFlags are the flags of groups create.
type groupsCreateFlags struct {
	servers  []string
	interval time.Duration
}

func newGroupsCreateCmd(g *globals) *cobra.Command {
	var f groupsCreateFlags
	cmd := &cobra.Command{
		Use:   "create NAME --servers ID,ID... [--interval 1s]",
		Short: "Create a consistency group of 1 to 64 source servers",
		Long: `Create a consistency group: its source servers take their PITs together, at one
instant, every --interval. A server is in one group at most; a group of one server may
grow later (lifeboat groups add).`,
		Args: exactArgs(1, "a group name"),
		RunE: func(cmd *cobra.Command, args []string) error { return runGroupsCreate(cmd.Context(), g, args[0], f) },
	}
	cmd.Flags().StringSliceVar(&f.servers, "servers", nil, "the member source servers' ids, comma-separated (repeatable)")
	cmd.Flags().DurationVar(&f.interval, "interval", time.Duration(api.DefaultGroupIntervalSeconds)*time.Second,
		"how often the group takes a group point: whole seconds, 1s to 1h")
	return cmd
}

func runGroupsCreate(ctx context.Context, g *globals, name string, f groupsCreateFlags) error {
	maxInterval := time.Duration(api.MaxGroupIntervalSeconds) * time.Second
	if f.interval < time.Second || f.interval > maxInterval || f.interval%time.Second != 0 {
		return usagef("--interval %s must be whole seconds, 1s to %s", f.interval, maxInterval)
	}
	req := api.CreateConsistencyGroupRequest{Name: name, SourceServerIDs: f.servers, IntervalSeconds: int(f.interval / time.Second)}
	if err := req.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	grp, err := c.CreateConsistencyGroup(ctx, req)
	if err != nil {
		return err
	}
	return g.show(grp, func(w *tabwriter.Writer) { fmt.Fprintln(w, grp.ID) })
}

func newGroupsListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List consistency groups, by name", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runGroupsList(cmd.Context(), g) },
	}
}

func runGroupsList(ctx context.Context, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	groups, err := c.AllConsistencyGroups(ctx)
	if err != nil {
		return err
	}
	return g.show(api.ConsistencyGroupList{Items: groups}, func(w *tabwriter.Writer) {
		row(w, "NAME", "ID", "MEMBERS", "INTERVAL", "LAST POINT", "AGE")
		for _, grp := range groups {
			id, age := lastPointText(grp.LastPoint)
			row(w, grp.Name, grp.ID, len(grp.SourceServerIDs), intervalText(grp.IntervalSeconds), id, age)
		}
	})
}

// lastPointText is the id and age of a group's newest complete point, or dashes.
func lastPointText(p *api.GroupPoint) (id, age string) {
	if p == nil || p.Time == nil {
		return "-", "-"
	}
	return p.ID, time.Since(*p.Time).Round(time.Second).String()
}

func intervalText(s int) string { return (time.Duration(s) * time.Second).String() }

func newGroupsDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "describe NAME|ID", Short: "Describe a consistency group: its members' replication and its newest complete point",
		Args: exactArgs(1, "a group name or id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runGroupsDescribe(cmd.Context(), g, args[0]) },
	}
}

func runGroupsDescribe(ctx context.Context, g *globals, group string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	grp, err := c.GetConsistencyGroup(ctx, group)
	if err != nil {
		return err
	}
	members := make([]*api.SourceServer, len(grp.SourceServerIDs))
	if g.output != "json" {
		for i, id := range grp.SourceServerIDs {
			s, err := c.SourceServer(ctx, id)
			var ae *api.Error
			if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
				continue // deleted since: shown as such
			} else if err != nil {
				return err
			}
			members[i] = &s
		}
	}
	return g.show(grp, func(w *tabwriter.Writer) { describeGroup(w, grp, members) })
}

// describeGroup writes a group and its members (nil: no longer found).
func describeGroup(w *tabwriter.Writer, grp api.ConsistencyGroup, members []*api.SourceServer) {
	row(w, "ID:", grp.ID)
	row(w, "Name:", grp.Name)
	row(w, "Interval:", intervalText(grp.IntervalSeconds))
	if p := grp.LastPoint; p != nil && p.Time != nil {
		row(w, "Last complete point:", fmt.Sprintf("%s at %s (%s ago), %d %s", p.ID, p.Time.Local().Format("2006-01-02 15:04:05.000"),
			time.Since(*p.Time).Round(time.Second), len(p.Snapshots), api.Plural("PIT", len(p.Snapshots))))
	} else {
		row(w, "Last complete point:", "none yet")
	}
	row(w, "Created:", grp.CreatedAt.Local().Format(time.RFC3339))
	fmt.Fprintln(w)
	row(w, "SOURCE SERVER", "HOSTNAME", "STATE", "READY", "LAST PIT", "LAST PIT AGE")
	for i, id := range grp.SourceServerIDs {
		s := members[i]
		if s == nil {
			row(w, id, "-", "(deleted)", "-", "-", "-")
			continue
		}
		pit, age := "-", "-"
		if cp := s.Replication.LastConsistencyPoint; cp != nil {
			pit, age = orDash(cp.SnapshotID), time.Since(cp.Time).Round(time.Second).String()
		}
		row(w, id, s.Hostname, stateText(s.Replication), yesNo(s.Replication.ReadyForRecovery), pit, age)
	}
}

// newGroupsMembersCmd builds add or remove: call is the client's method.
func newGroupsMembersCmd(g *globals, use, short string,
	call func(*api.Client, context.Context, string, []string) (api.ConsistencyGroup, error)) *cobra.Command {
	var servers []string
	cmd := &cobra.Command{
		Use: use + " NAME|ID --servers ID,ID...", Short: short, Args: exactArgs(1, "a group name or id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGroupsMembers(cmd.Context(), g, args[0], servers, call)
		},
	}
	cmd.Flags().StringSliceVar(&servers, "servers", nil, "source server ids, comma-separated (repeatable)")
	return cmd
}

func runGroupsMembers(ctx context.Context, g *globals, group string, servers []string,
	call func(*api.Client, context.Context, string, []string) (api.ConsistencyGroup, error)) error {
	if err := (api.ConsistencyGroupMembersRequest{SourceServerIDs: servers}).Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	grp, err := call(c, ctx, group, servers)
	if err != nil {
		return err
	}
	return g.show(grp, func(w *tabwriter.Writer) {
		for _, id := range grp.SourceServerIDs {
			row(w, grp.Name, id)
		}
	})
}

func newGroupsDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "delete NAME|ID", Short: "Delete a consistency group and its group points (its members and their PITs stay)",
		Args: exactArgs(1, "a group name or id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runGroupsDelete(cmd.Context(), g, args[0]) },
	}
}

func runGroupsDelete(ctx context.Context, g *globals, group string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DeleteConsistencyGroup(ctx, group); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "consistency group %s deleted\n", group)
	return nil
}

// groupsPointsFlags are the flags of groups points.
type groupsPointsFlags struct {
	limit int
	all   bool
}

func newGroupsPointsCmd(g *globals) *cobra.Command {
	var f groupsPointsFlags
	cmd := &cobra.Command{
		Use: "points NAME|ID [--limit N] [--all]", Short: "List a group's complete points, newest first (--all: failed and running ones too)",
		Args: exactArgs(1, "a group name or id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runGroupsPoints(cmd.Context(), g, args[0], f) },
	}
	cmd.Flags().IntVar(&f.limit, "limit", 100, "how many to list")
	cmd.Flags().BoolVar(&f.all, "all", false, "list points that did not complete too")
	return cmd
}

func runGroupsPoints(ctx context.Context, g *globals, group string, f groupsPointsFlags) error {
	if f.limit < 1 || f.limit > api.MaxPageSize {
		return usagef("--limit must be 1 to %d, not %d", api.MaxPageSize, f.limit)
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	page, err := c.ListGroupPoints(ctx, group, f.limit, "", !f.all)
	if err != nil {
		return err
	}
	return g.show(page, func(w *tabwriter.Writer) {
		row(w, "ID", "TIME", "AGE", "STATE", "MEMBERS", "PITS", "REASON")
		for _, p := range page.Items {
			at, age := "-", "-"
			if p.Time != nil {
				at, age = p.Time.Local().Format("2006-01-02 15:04:05.000"), time.Since(*p.Time).Round(time.Second).String()
			}
			row(w, p.ID, at, age, p.State, p.Members, len(p.Snapshots), orDash(p.Reason))
		}
	})
}
