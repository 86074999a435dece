package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// recoveryFlags are drill's and recover's flags.
type recoveryFlags struct {
	pits          []string
	at, group     string
	wait, console bool
	force, net    bool
}

func newDrillCmd(g *globals) *cobra.Command {
	var f recoveryFlags
	cmd := &cobra.Command{
		Use:   "drill ID... | --group NAME [--pit PIT]... [--at TIME] [--wait]",
		Short: "Launch drill instances of source servers from a PIT, isolated from every network",
		Long: `Launch a drill: recovery instances of the source servers from a PIT (the newest consistent one,
or the one --pit names, or the newest consistent one at or before --at), without touching the
source servers. With --group, every member of a consistency group is launched at one group
point (all at one instant): the newest complete one, the one --pit names (gpit-…) or the
newest at or before --at. Drill instances run in an isolated network with no route anywhere, the source
included (port forwards still reach them), unless --network-access. It prints the job id; with
--wait it follows the job and prints each server's result and measured RTO.`,
		Args: func(cmd *cobra.Command, args []string) error {
			return checkRecoveryArgs("drill", args, f)
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runRecovery(cmd.Context(), g, args, f, true) },
	}
	f.register(cmd, true)
	return cmd
}

func newRecoverCmd(g *globals) *cobra.Command {
	var f recoveryFlags
	cmd := &cobra.Command{
		Use:   "recover ID... | --group NAME [--pit PIT]... [--at TIME] [--wait] [--force]",
		Short: "Recover source servers: launch recovery instances from a PIT",
		Long: `Recover source servers at the recovery site: launch recovery instances from a PIT (the newest
consistent one, or the one --pit names, or the newest consistent one at or before --at) with
each server's launch settings. With --group, every member of a consistency group is launched
at one group point (all at one instant): the newest complete one, the one --pit names
(gpit-…) or the newest at or before --at. A server that already has a recovery instance (not a drill) is
refused unless --force. It prints the job id; with --wait it follows the job and prints each
server's result and measured RTO, and exits 1 if any server failed to launch.`,
		Args: func(cmd *cobra.Command, args []string) error {
			return checkRecoveryArgs("recover", args, f)
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runRecovery(cmd.Context(), g, args, f, false) },
	}
	f.register(cmd, false)
	return cmd
}

func (f *recoveryFlags) register(cmd *cobra.Command, drill bool) {
	fl := cmd.Flags()
	fl.StringArrayVar(&f.pits, "pit", nil, "the PIT to launch (pit-…; repeatable, one per server; see lifeboat snapshots list ID), or with --group the group point (gpit-…)")
	fl.StringVar(&f.group, "group", "", "launch every member of this consistency group at one of its group points (see lifeboat groups points NAME)")
	fl.StringVar(&f.at, "at", "", "the newest consistent PIT at or before this time: RFC 3339, \"2006-01-02 15:04\" (local), or an age such as 30m")
	fl.BoolVar(&f.wait, "wait", false, "follow the job to its end and print each server's result and RTO")
	fl.BoolVar(&f.console, "console", false, "with --wait: print the instances' console lines too")
	if drill {
		fl.BoolVar(&f.net, "network-access", false, "give the drill instances the network of their launch settings instead of isolating them")
	} else {
		fl.BoolVar(&f.force, "force", false, "recover even though the server has a recovery instance already")
	}
}

// parseAt reads --at: an RFC 3339 time, a local "2006-01-02 15:04[:05]", or an age.
func parseAt(s string, now time.Time) (time.Time, error) { return parseTimeFlag("--at", s, now) }

// checkRecoveryArgs checks drill's and recover's arguments: server ids, or a group.
func checkRecoveryArgs(verb string, args []string, f recoveryFlags) error {
	switch {
	case f.group == "" && len(args) == 0:
		return usagef("%s takes one or more source server ids (see lifeboat source-servers list), or --group NAME", verb)
	case f.group != "" && len(args) > 0:
		return usagef("%s takes source server ids or --group, not both: a group launches all its members", verb)
	case f.group != "" && len(f.pits) > 1:
		return usagef("with --group, give one --pit: the group point (gpit-…)")
	}
	return nil
}

func runRecovery(ctx context.Context, g *globals, ids []string, f recoveryFlags, drill bool) error {
	if f.at != "" && len(f.pits) > 0 {
		return usagef("give --pit or --at, not both")
	}
	req := api.StartRecoveryRequest{IsDrill: drill, Force: f.force, NetworkAccess: f.net, ConsistencyGroup: f.group}
	for _, id := range ids {
		req.SourceServers = append(req.SourceServers, api.RecoveryServer{SourceServerID: id})
	}
	if f.group != "" && len(f.pits) == 1 {
		req.GroupPointID, f.pits = f.pits[0], nil
	}
	if f.at != "" {
		at, err := parseAt(f.at, time.Now())
		if err != nil {
			return err
		}
		req.At = &at
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := assignPITs(ctx, c, &req, f.pits); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	job, err := c.StartRecovery(ctx, req)
	if err != nil {
		return err
	}
	if !f.wait {
		return g.show(job, func(w *tabwriter.Writer) { fmt.Fprintln(w, job.ID) })
	}
	return followJob(ctx, g, c, job, f.console)
}

// assignPITs gives each --pit to the server it belongs to (with one server, to it).
func assignPITs(ctx context.Context, c *api.Client, req *api.StartRecoveryRequest, pits []string) error {
	if len(pits) == 0 {
		return nil
	}
	if len(req.SourceServers) == 1 && len(pits) == 1 {
		req.SourceServers[0].RecoverySnapshotID = pits[0]
		return nil
	}
	for _, p := range pits {
		if !api.ValidID(api.PrefixSnapshot, p) {
			return usagef("--pit %q is not a recovery snapshot id (pit-…)", p)
		}
		snap, err := c.RecoverySnapshot(ctx, p)
		if err != nil {
			return err
		}
		found := false
		for i := range req.SourceServers {
			s := &req.SourceServers[i]
			if s.SourceServerID == snap.SourceServerID {
				if s.RecoverySnapshotID != "" {
					return usagef("--pit %s and --pit %s are both PITs of %s: give one per server", s.RecoverySnapshotID, p, s.SourceServerID)
				}
				s.RecoverySnapshotID, found = p, true
			}
		}
		if !found {
			return usagef("--pit %s is a PIT of %s, which is not among the servers named", p, snap.SourceServerID)
		}
	}
	return nil
}
