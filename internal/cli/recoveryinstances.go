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

func newRecoveryInstancesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "recovery-instances", Aliases: []string{"recovery-instance", "ri"},
		Short: "Machines launched from PITs (drills and recoveries): list, describe, protect, terminate"}
	cmd.AddCommand(newRecoveryInstancesListCmd(g), newRecoveryInstancesDescribeCmd(g), newRecoveryInstancesTerminateCmd(g),
		newRecoveryInstancesProtectCmd(g), newRecoveryInstancesStartCmd(g), newReverseReplicationCmd(g))
	return cmd
}

// recoveryInstancesListFlags are the flags of recovery-instances list.
type recoveryInstancesListFlags struct {
	filter             api.RecoveryInstanceFilter
	drills, recoveries bool
}

func newRecoveryInstancesListCmd(g *globals) *cobra.Command {
	var f recoveryInstancesListFlags
	cmd := &cobra.Command{
		Use: "list", Short: "List recovery instances, newest first (ended ones with --all)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRecoveryInstancesList(cmd.Context(), g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.filter.SourceServerID, "source-server", "", "only this source server's")
	fl.BoolVar(&f.drills, "drills", false, "only drill instances")
	fl.BoolVar(&f.recoveries, "recoveries", false, "only recovery (not drill) instances")
	fl.BoolVar(&f.filter.All, "all", false, "include ended (terminated or failed) instances")
	return cmd
}

func runRecoveryInstancesList(ctx context.Context, g *globals, f recoveryInstancesListFlags) error {
	if f.drills && f.recoveries {
		return usagef("--drills and --recoveries exclude each other")
	}
	if f.drills || f.recoveries {
		f.filter.Drill = &f.drills
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	items, err := c.AllRecoveryInstances(ctx, f.filter)
	if err != nil {
		return err
	}
	return g.show(api.RecoveryInstanceList{Items: items}, func(w *tabwriter.Writer) {
		row(w, "ID", "SOURCE SERVER", "KIND", "STATE", "PROVIDER", "ADDRESS", "PIT", "PIT AGE", "PROTECTED", "JOB")
		for _, ri := range items {
			row(w, ri.ID, ri.SourceServerID, instanceKind(ri), ri.State, ri.Provider, addressText(ri), ri.SnapshotID,
				ageText(ri.PITAgeSeconds), yesNo(ri.TerminationProtection), ri.JobID)
		}
	})
}

func newRecoveryInstancesDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "describe ID", Short: "Show a recovery instance: its PIT and age, job, provider handle, address, state", Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecoveryInstancesDescribe(cmd.Context(), g, args[0])
		},
	}
}

func runRecoveryInstancesDescribe(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ri, err := c.RecoveryInstance(ctx, id)
	if err != nil {
		return err
	}
	return g.show(ri, func(w *tabwriter.Writer) { describeRecoveryInstance(w, ri) })
}

// terminateFlags are the flags of recovery-instances terminate.
type terminateFlags struct {
	drills, wait bool
}

func newRecoveryInstancesTerminateCmd(g *globals) *cobra.Command {
	var f terminateFlags
	cmd := &cobra.Command{
		Use:   "terminate ID... | --drills",
		Short: "Terminate recovery instances (a TERMINATE job): stop them and remove their files",
		Long: `Terminate recovery instances: a job stops each one and removes the files its launch made
(an existing instance's disks are left as they are). It is refused for an instance with
termination protection (lift it with protect ID --off). --drills terminates every drill
instance of the account. It prints the job id; --wait follows it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecoveryInstancesTerminate(cmd.Context(), g, args, f)
		},
	}
	cmd.Flags().BoolVar(&f.drills, "drills", false, "terminate every drill instance")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "follow the job to its end")
	return cmd
}

func runRecoveryInstancesTerminate(ctx context.Context, g *globals, ids []string, f terminateFlags) error {
	if (len(ids) == 0) == !f.drills {
		return usagef("give recovery instance ids, or --drills for every drill instance")
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	if f.drills {
		yes := true
		drills, err := c.AllRecoveryInstances(ctx, api.RecoveryInstanceFilter{Drill: &yes})
		if err != nil {
			return err
		}
		for _, ri := range drills {
			ids = append(ids, ri.ID)
		}
		if len(ids) == 0 {
			fmt.Fprintln(g.stderr, "there is no drill instance to terminate")
			return nil
		}
	}
	job, err := c.TerminateRecoveryInstances(ctx, api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: ids})
	if err != nil {
		return err
	}
	if !f.wait {
		return g.show(job, func(w *tabwriter.Writer) { fmt.Fprintln(w, job.ID) })
	}
	return followJob(ctx, g, c, job, false)
}

func newRecoveryInstancesProtectCmd(g *globals) *cobra.Command {
	var on, off bool
	cmd := &cobra.Command{
		Use: "protect ID --on|--off", Short: "Turn termination protection on or off", Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecoveryInstancesProtect(cmd.Context(), g, args[0], on, off)
		},
	}
	cmd.Flags().BoolVar(&on, "on", false, "protect the instance: terminate is refused")
	cmd.Flags().BoolVar(&off, "off", false, "lift the protection")
	return cmd
}

func runRecoveryInstancesProtect(ctx context.Context, g *globals, id string, on, off bool) error {
	if on == off {
		return usagef("give --on or --off")
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ri, err := c.SetTerminationProtection(ctx, id, on)
	if err != nil {
		return err
	}
	return g.show(ri, func(w *tabwriter.Writer) {
		row(w, "Recovery instance:", ri.ID)
		row(w, "Termination protection:", onOff(ri.TerminationProtection))
	})
}

func newRecoveryInstancesStartCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "start ID", Short: "Start a recovery instance launched stopped (launch settings: start after launch off)", Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecoveryInstancesStart(cmd.Context(), g, args[0])
		},
	}
}

func runRecoveryInstancesStart(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ri, err := c.StartRecoveryInstance(ctx, id)
	if err != nil {
		return err
	}
	return g.show(ri, func(w *tabwriter.Writer) { row(w, ri.ID, ri.State) })
}

func newReverseReplicationCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "reverse-replication ID",
		Short: "Replicate a recovery instance back to its origin's site, as a new (reversed) source server: the first step of failback",
		Long: `Start reversed replication of a recovery instance: the agent recovery placed on its disk
registers as a reversed source server linked to the instance and to the source server it
was recovered from, and replicates to the origin site's replication server. Its replica
starts as the PIT the instance was launched from, so only the blocks written since
travel. Follow it with lifeboat source-servers describe on the id this prints; when the
instance's failback state is FAILBACK_READY_FOR_LAUNCH, fail back (docs/failback.md).`,
		Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			rr, err := c.StartReverseReplication(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.show(rr, func(w *tabwriter.Writer) {
				row(w, "recovery instance", rr.RecoveryInstanceID)
				row(w, "reversed source server", rr.SourceServerID)
				row(w, "origin source server", rr.OriginSourceServerID)
				row(w, "replica starts as PIT", rr.SeedSnapshotID)
				row(w, "failback state", rr.FailbackState)
				row(w, "job", rr.JobID+" (lifeboat jobs log "+rr.JobID+" --follow)")
			})
		},
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func ageText(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Second).String()
}

// instanceKind is a recovery instance's kind: drill or recovery.
func instanceKind(ri api.RecoveryInstance) string {
	if ri.IsDrill {
		return "drill"
	}
	return "recovery"
}

func addressText(ri api.RecoveryInstance) string {
	if len(ri.PortForwards) == 0 {
		return orDash(ri.Address)
	}
	var parts []string
	for _, p := range ri.PortForwards {
		parts = append(parts, fmt.Sprintf("%s:%d→%d", p.HostAddr, p.HostPort, p.GuestPort))
	}
	return strings.Join(parts, ",")
}

func describeRecoveryInstance(w *tabwriter.Writer, ri api.RecoveryInstance) {
	row(w, "ID:", ri.ID)
	row(w, "Source server:", ri.SourceServerID)
	row(w, "Kind:", instanceKind(ri))
	row(w, "State:", ri.State)
	if !ri.IsDrill {
		fb := ri.FailbackState
		if ri.ReversedSourceServerID != "" {
			fb += " (reversed source server " + ri.ReversedSourceServerID + ")"
		}
		row(w, "Failback:", fb)
	}
	row(w, "PIT:", fmt.Sprintf("%s taken %s (%s old at launch)", ri.SnapshotID, ri.SnapshotTime.Local().Format(time.RFC3339), ageText(ri.PITAgeSeconds)))
	row(w, "Job:", ri.JobID)
	row(w, "Provider:", ri.Provider)
	row(w, "Address:", orDash(ri.Address))
	for _, p := range ri.PortForwards {
		row(w, "Port forward:", fmt.Sprintf("%s %s:%d -> %d", p.Protocol, p.HostAddr, p.HostPort, p.GuestPort))
	}
	h := ri.ProviderHandle
	row(w, "Host:", orDash(h.Host))
	row(w, "Files:", orDash(h.Dir))
	for _, d := range h.Disks {
		row(w, "Disk:", d)
	}
	if h.InstanceID != "" {
		row(w, "Launched into:", h.InstanceID)
	}
	if h.PID != 0 {
		row(w, "QEMU pid:", h.PID)
	}
	if h.ConsoleLog != "" {
		row(w, "Console log:", h.ConsoleLog)
	}
	row(w, "Termination protection:", onOff(ri.TerminationProtection))
	row(w, "Tags:", tagsText(ri.Tags))
	row(w, "Launched:", ri.CreatedAt.Local().Format(time.RFC3339))
	if ri.TerminatedAt != nil {
		row(w, "Ended:", ri.TerminatedAt.Local().Format(time.RFC3339))
	}
}
