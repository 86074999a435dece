package cli

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newFailbackCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "failback",
		Short: "Bring a recovery instance home: write it onto the origin's machine, then complete the cycle (docs/failback.md)"}
	cmd.AddCommand(newFailbackLaunchCmd(g), newFailbackCompleteCmd(g))
	return cmd
}

// failbackLaunchFlags are the flags of failback launch.
type failbackLaunchFlags struct {
	req  api.FailbackRequest
	wait bool
}

func newFailbackLaunchCmd(g *globals) *cobra.Command {
	var f failbackLaunchFlags
	cmd := &cobra.Command{
		Use:   "launch ID --into INSTANCE|FAILBACK-CLIENT|new",
		Short: "Fail back a recovery instance: its final consistency point written onto the origin's machine (a FAILBACK job)",
		Long: `Fail back a recovery instance whose reversed replication is CONTINUOUS (failback state
FAILBACK_READY_FOR_LAUNCH): a final consistency point of the instance is taken now (a
planned failback loses nothing written before it), then its PIT is written onto the
instance --into names — the origin's machine, registered with lifeboat instances add,
stopped and tagged AWSDRS=AllowLaunchingIntoThisInstance — writing only the blocks that
differ. The origin's own agent configuration is put back, the origin's replica is rebased
onto the PIT written, and the machine starts (unless --no-start). Stop the recovery
instance's applications first if they must not write after the point.`,
		Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFailbackLaunch(cmd.Context(), g, args[0], f)
		},
	}
	cmd.Flags().StringVar(&f.req.Into, "into", "", "the origin's machine: an instance (lifeboat instances list), a failback client (lifeboat failback-client list), or new (a new machine at the origin site)")
	cmd.Flags().StringVar(&f.req.Disk, "disk", "", "a failback client's disk to write (default: the smallest that holds the volume)")
	cmd.Flags().BoolVar(&f.req.NoStart, "no-start", false, "leave the machine stopped once written")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "follow the job until it ends; exit 1 if it failed")
	return cmd
}

func runFailbackLaunch(ctx context.Context, g *globals, id string, f failbackLaunchFlags) error {
	if f.req.Into == "" {
		return usagef("failback launch needs --into INSTANCE, --into FAILBACK-CLIENT or --into new (the origin's machine)")
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	job, err := c.StartFailback(ctx, id, f.req)
	if err != nil {
		return err
	}
	if f.wait {
		return followJob(ctx, g, c, job, false)
	}
	return g.show(job, func(w *tabwriter.Writer) { fmt.Fprintln(w, job.ID) })
}

func newFailbackCompleteCmd(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "complete ID",
		Short: "End a failed-back recovery instance's cycle: delete its reversed source server, terminate it (a TERMINATE job)",
		Long: `Complete a failback once the origin's machine runs and its agent replicates again: the
reversed source server is deleted (refused while it has locked PITs), then the recovery
instance is terminated (refused under termination protection).`,
		Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			job, err := c.CompleteFailback(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if wait {
				return followJob(cmd.Context(), g, c, job, false)
			}
			return g.show(job, func(w *tabwriter.Writer) { fmt.Fprintln(w, job.ID) })
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the termination job until it ends")
	return cmd
}
