package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// recoveryFlags are drill's and recover's flags.
type recoveryFlags struct {
	pits          []string
	at            string
	wait, console bool
	force, net    bool
}

func newDrillCmd(g *globals) *cobra.Command {
	var f recoveryFlags
	cmd := &cobra.Command{
		Use:   "drill ID... [--pit PIT]... [--at TIME] [--wait]",
		Short: "Launch drill instances of source servers from a PIT, isolated from every network",
		Long: `Launch a drill: recovery instances of the source servers from a PIT (the newest consistent one,
or the one --pit names, or the newest consistent one at or before --at), without touching the
source servers. Drill instances run in an isolated network with no route anywhere, the source
included (port forwards still reach them), unless --network-access. It prints the job id; with
--wait it follows the job and prints each server's result and measured RTO.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("drill takes one or more source server ids (see lifeboat source-servers list)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runRecovery(cmd.Context(), g, args, f, true) },
	}
	f.register(cmd, true)
	return cmd
}

func newRecoverCmd(g *globals) *cobra.Command {
	var f recoveryFlags
	cmd := &cobra.Command{
		Use:   "recover ID... [--pit PIT]... [--at TIME] [--wait] [--force]",
		Short: "Recover source servers: launch recovery instances from a PIT",
		Long: `Recover source servers at the recovery site: launch recovery instances from a PIT (the newest
consistent one, or the one --pit names, or the newest consistent one at or before --at) with
each server's launch settings. A server that already has a recovery instance (not a drill) is
refused unless --force. It prints the job id; with --wait it follows the job and prints each
server's result and measured RTO, and exits 1 if any server failed to launch.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("recover takes one or more source server ids (see lifeboat source-servers list)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return runRecovery(cmd.Context(), g, args, f, false) },
	}
	f.register(cmd, false)
	return cmd
}

func (f *recoveryFlags) register(cmd *cobra.Command, drill bool) {
	fl := cmd.Flags()
	fl.StringArrayVar(&f.pits, "pit", nil, "the PIT to launch (pit-…; repeatable, one per server; see lifeboat snapshots list ID)")
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
func parseAt(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04:05", "2006-01-02T15:04"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "-")); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usagef("--at %q is not a time: use RFC 3339 (2025-01-02T15:04:05Z), \"2025-01-02 15:04\" (local time) or an age such as 30m", s)
}

func runRecovery(ctx context.Context, g *globals, ids []string, f recoveryFlags, drill bool) error {
	if f.at != "" && len(f.pits) > 0 {
		return usagef("give --pit or --at, not both")
	}
	req := api.StartRecoveryRequest{IsDrill: drill, Force: f.force, NetworkAccess: f.net}
	for _, id := range ids {
		req.SourceServers = append(req.SourceServers, api.RecoveryServer{SourceServerID: id})
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

// followJob prints a job's log as it runs (progress lines on stderr with -o json), then
// its result; it fails when a server failed.
func followJob(ctx context.Context, g *globals, c *api.Client, job api.Job, console bool) error {
	out := g.stdout
	if g.output == "json" {
		out = g.stderr
	}
	fmt.Fprintln(out, job.ID)
	token := ""
	lastProgress := map[string]string{}
	for {
		j, err := c.Job(ctx, job.ID)
		if err != nil {
			return err
		}
		for {
			log, err := c.JobLog(ctx, job.ID, 0, token)
			if err != nil {
				return err
			}
			for _, e := range log.Items {
				if e.Type != api.EventConsole || console {
					printEvent(out, e)
				}
			}
			token = log.NextPageToken
			if len(log.Items) == 0 {
				break
			}
		}
		for _, s := range j.Servers {
			if s.Progress == nil || s.Progress.TotalBytes == 0 || s.LaunchStatus != api.LaunchInProgress {
				continue
			}
			line := fmt.Sprintf("%s %s %d%% (%s of %s)", s.SourceServerID, s.Step, s.Progress.DoneBytes*100/s.Progress.TotalBytes,
				bytesText(s.Progress.DoneBytes), bytesText(s.Progress.TotalBytes))
			if lastProgress[s.RecoveryInstanceID] != line {
				lastProgress[s.RecoveryInstanceID] = line
				fmt.Fprintf(out, "%s %s\n", time.Now().Format("15:04:05"), line)
			}
		}
		if j.Status == api.JobCompleted {
			if err := g.show(j, func(w *tabwriter.Writer) { fmt.Fprintln(w); jobServersTable(w, j) }); err != nil {
				return err
			}
			failed := 0
			for _, s := range j.Servers {
				if s.LaunchStatus == api.LaunchFailed {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d servers failed: see lifeboat jobs log %s", failed, len(j.Servers), j.ID)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped following job %s, which goes on: follow it with lifeboat jobs log %s --follow", j.ID, j.ID)
		case <-time.After(time.Second):
		}
	}
}

func printEvent(w io.Writer, e api.JobLogEvent) {
	server := e.SourceServerID
	if server == "" {
		server = "-"
	}
	if e.Type == api.EventConsole {
		for _, l := range strings.Split(e.Message, "\n") {
			fmt.Fprintf(w, "%s %s console | %s\n", e.Time.Local().Format("15:04:05"), server, l)
		}
		return
	}
	fmt.Fprintf(w, "%s %s %s %s\n", e.Time.Local().Format("15:04:05"), server, e.Type, e.Message)
}

func rtoText(s api.JobServer) string {
	if s.RTOSeconds == nil {
		return "-"
	}
	return (time.Duration(*s.RTOSeconds * float64(time.Second))).Round(100 * time.Millisecond).String()
}

func jobServersTable(w *tabwriter.Writer, j api.Job) {
	row(w, "SERVER", "STATUS", "RECOVERY INSTANCE", "PIT", "RTO", "STEP", "ERROR")
	for _, s := range j.Servers {
		step := s.Step
		if s.Progress != nil && s.Progress.TotalBytes > 0 && s.LaunchStatus == api.LaunchInProgress {
			step += fmt.Sprintf(" %d%%", s.Progress.DoneBytes*100/s.Progress.TotalBytes)
		}
		row(w, s.SourceServerID, s.LaunchStatus, s.RecoveryInstanceID, orDash(s.SnapshotID), rtoText(s), orDash(step), orDash(s.Error))
	}
}

func jobKind(j api.Job) string {
	switch {
	case j.Type == api.JobTerminate:
		return "terminate"
	case j.IsDrill:
		return "drill"
	}
	return "recovery"
}

func newJobsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "jobs", Aliases: []string{"job"}, Short: "Drill, recovery and terminate jobs: status, servers, RTO, log"}
	var limit int
	list := &cobra.Command{
		Use: "list", Short: "List jobs, newest first", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			l, err := c.Jobs(cmd.Context(), limit, "")
			if err != nil {
				return err
			}
			return g.show(l, func(w *tabwriter.Writer) {
				row(w, "ID", "KIND", "STATUS", "SERVERS", "LAUNCHED", "FAILED", "CREATED", "BY")
				for _, j := range l.Items {
					n := map[string]int{}
					for _, s := range j.Servers {
						n[s.LaunchStatus]++
					}
					row(w, j.ID, jobKind(j), j.Status, len(j.Servers), n[api.LaunchLaunched]+n[api.LaunchTerminated], n[api.LaunchFailed],
						j.CreatedAt.Local().Format("2006-01-02 15:04:05"), j.CreatedBy)
				}
			})
		},
	}
	list.Flags().IntVar(&limit, "limit", 50, "jobs to show")
	describe := &cobra.Command{
		Use: "describe JOB", Short: "Show a job: its status, each server's launch status and measured RTO", Args: exactArgs(1, "a job id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			j, err := c.Job(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.show(j, func(w *tabwriter.Writer) {
				row(w, "ID:", j.ID)
				row(w, "Kind:", jobKind(j)+" ("+j.Type+", "+j.InitiatedBy+")")
				row(w, "Status:", j.Status)
				row(w, "Created:", j.CreatedAt.Local().Format(time.RFC3339)+" by "+j.CreatedBy)
				if j.EndedAt != nil {
					row(w, "Ended:", j.EndedAt.Local().Format(time.RFC3339)+" ("+j.EndedAt.Sub(j.CreatedAt).Round(time.Second).String()+")")
				}
				fmt.Fprintln(w)
				jobServersTable(w, j)
			})
		},
	}
	var follow, noConsole bool
	logCmd := &cobra.Command{
		Use: "log JOB", Short: "Print a job's log of timed events (the instances' console lines included)", Args: exactArgs(1, "a job id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			var all []api.JobLogEvent
			token := ""
			for {
				l, err := c.JobLog(cmd.Context(), args[0], 0, token)
				if err != nil {
					return err
				}
				for _, e := range l.Items {
					if e.Type == api.EventConsole && noConsole {
						continue
					}
					if g.output == "json" {
						all = append(all, e)
					} else {
						printEvent(g.stdout, e)
					}
				}
				token = l.NextPageToken
				if len(l.Items) > 0 {
					continue
				}
				if !follow {
					break
				}
				j, err := c.Job(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if j.Status == api.JobCompleted {
					follow = false // one more read drains what was logged before the end
					continue
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
			}
			if g.output == "json" {
				if all == nil {
					all = []api.JobLogEvent{}
				}
				return g.show(api.JobLog{Items: all}, nil)
			}
			return nil
		},
	}
	logCmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing until the job completes")
	logCmd.Flags().BoolVar(&noConsole, "no-console", false, "leave out the instances' console lines")
	cmd.AddCommand(list, describe, logCmd)
	return cmd
}

func newRecoveryInstancesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "recovery-instances", Aliases: []string{"recovery-instance", "ri"},
		Short: "Machines launched from PITs (drills and recoveries): list, describe, protect, terminate"}
	var f api.RecoveryInstanceFilter
	var drills, recoveries bool
	list := &cobra.Command{
		Use: "list", Short: "List recovery instances, newest first (ended ones with --all)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if drills && recoveries {
				return usagef("--drills and --recoveries exclude each other")
			}
			if drills || recoveries {
				f.Drill = &drills
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			var items []api.RecoveryInstance
			for {
				l, err := c.RecoveryInstances(cmd.Context(), f)
				if err != nil {
					return err
				}
				items = append(items, l.Items...)
				if f.PageToken = l.NextPageToken; f.PageToken == "" {
					break
				}
			}
			if items == nil {
				items = []api.RecoveryInstance{}
			}
			return g.show(api.RecoveryInstanceList{Items: items}, func(w *tabwriter.Writer) {
				row(w, "ID", "SOURCE SERVER", "KIND", "STATE", "PROVIDER", "ADDRESS", "PIT", "PIT AGE", "PROTECTED", "JOB")
				for _, ri := range items {
					kind := "recovery"
					if ri.IsDrill {
						kind = "drill"
					}
					row(w, ri.ID, ri.SourceServerID, kind, ri.State, ri.Provider, addressText(ri), ri.SnapshotID,
						ageText(ri.PITAgeSeconds), yesNo(ri.TerminationProtection), ri.JobID)
				}
			})
		},
	}
	fl := list.Flags()
	fl.StringVar(&f.SourceServerID, "source-server", "", "only this source server's")
	fl.BoolVar(&drills, "drills", false, "only drill instances")
	fl.BoolVar(&recoveries, "recoveries", false, "only recovery (not drill) instances")
	fl.BoolVar(&f.All, "all", false, "include ended (terminated or failed) instances")

	describe := &cobra.Command{
		Use: "describe ID", Short: "Show a recovery instance: its PIT and age, job, provider handle, address, state", Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ri, err := c.RecoveryInstance(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.show(ri, func(w *tabwriter.Writer) { describeRecoveryInstance(w, ri) })
		},
	}

	var onlyDrills, wait bool
	terminate := &cobra.Command{
		Use:   "terminate ID... | --drills",
		Short: "Terminate recovery instances (a TERMINATE job): stop them and remove their files",
		Long: `Terminate recovery instances: a job stops each one and removes the files its launch made
(an existing instance's disks are left as they are). It is refused for an instance with
termination protection (lift it with protect ID --off). --drills terminates every drill
instance of the account. It prints the job id; --wait follows it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 0) == !onlyDrills {
				return usagef("give recovery instance ids, or --drills for every drill instance")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ids := args
			if onlyDrills {
				yes := true
				rf := api.RecoveryInstanceFilter{Drill: &yes}
				for {
					l, err := c.RecoveryInstances(cmd.Context(), rf)
					if err != nil {
						return err
					}
					for _, ri := range l.Items {
						ids = append(ids, ri.ID)
					}
					if rf.PageToken = l.NextPageToken; rf.PageToken == "" {
						break
					}
				}
				if len(ids) == 0 {
					fmt.Fprintln(g.stderr, "there is no drill instance to terminate")
					return nil
				}
			}
			job, err := c.TerminateRecoveryInstances(cmd.Context(), api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: ids})
			if err != nil {
				return err
			}
			if !wait {
				return g.show(job, func(w *tabwriter.Writer) { fmt.Fprintln(w, job.ID) })
			}
			return followJob(cmd.Context(), g, c, job, false)
		},
	}
	terminate.Flags().BoolVar(&onlyDrills, "drills", false, "terminate every drill instance")
	terminate.Flags().BoolVar(&wait, "wait", false, "follow the job to its end")

	var on, off bool
	protect := &cobra.Command{
		Use: "protect ID --on|--off", Short: "Turn termination protection on or off", Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if on == off {
				return usagef("give --on or --off")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ri, err := c.SetTerminationProtection(cmd.Context(), args[0], on)
			if err != nil {
				return err
			}
			return g.show(ri, func(w *tabwriter.Writer) {
				row(w, "Recovery instance:", ri.ID)
				row(w, "Termination protection:", onOff(ri.TerminationProtection))
			})
		},
	}
	protect.Flags().BoolVar(&on, "on", false, "protect the instance: terminate is refused")
	protect.Flags().BoolVar(&off, "off", false, "lift the protection")
	start := &cobra.Command{
		Use: "start ID", Short: "Start a recovery instance launched stopped (launch settings: start after launch off)", Args: exactArgs(1, "a recovery instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ri, err := c.StartRecoveryInstance(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.show(ri, func(w *tabwriter.Writer) { row(w, ri.ID, ri.State) })
		},
	}
	cmd.AddCommand(list, describe, terminate, protect, start)
	return cmd
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
	kind := "recovery"
	if ri.IsDrill {
		kind = "drill"
	}
	row(w, "ID:", ri.ID)
	row(w, "Source server:", ri.SourceServerID)
	row(w, "Kind:", kind)
	row(w, "State:", ri.State)
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

func newInstancesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "instances", Aliases: []string{"instance"},
		Short: "Existing machines recoveries may launch into (stopped and tagged AWSDRS=AllowLaunchingIntoThisInstance)"}
	list := &cobra.Command{
		Use: "list", Short: "List instances", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			l, err := c.Instances(cmd.Context())
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
		},
	}
	var req api.CreateInstanceRequest
	var tags []string
	add := &cobra.Command{
		Use: "add --site S --disk PATH... [--tag K=V]...", Short: "Register an instance by its disks on the control plane's host (boot disk first)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			in, err := c.CreateInstance(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.show(in, func(w *tabwriter.Writer) { fmt.Fprintln(w, in.ID) })
		},
	}
	fl := add.Flags()
	fl.StringVar(&req.Site, "site", api.DefaultSite, "the site the instance is in")
	fl.StringVar(&req.Name, "name", "", "a name (default: its id)")
	fl.StringArrayVar(&req.Disks, "disk", nil, "a disk: a raw image file or a block device (repeatable, boot disk first)")
	fl.StringArrayVar(&tags, "tag", nil, "KEY=VALUE (repeatable), e.g. AWSDRS=AllowLaunchingIntoThisInstance")
	fl.StringVar(&req.BootMode, "boot-mode", api.BootBIOS, "bios, uefi or kernel (direct kernel boot from the disk)")

	var remove []string
	tag := &cobra.Command{
		Use: "tag ID K=V... [--remove K]...", Short: "Set (and remove) an instance's tags",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usagef("tag takes an instance id and KEY=VALUE tags")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			set, err := parseTags(args[1:])
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
			in, err := c.UpdateInstanceTags(cmd.Context(), args[0], r)
			if err != nil {
				return err
			}
			return g.show(in, func(w *tabwriter.Writer) { row(w, in.ID, tagsText(in.Tags)) })
		},
	}
	tag.Flags().StringArrayVar(&remove, "remove", nil, "a tag key to remove (repeatable)")
	startStop := func(use, short string, call func(*api.Client, context.Context, string) (api.Instance, error)) *cobra.Command {
		return &cobra.Command{
			Use: use + " ID", Short: short, Args: exactArgs(1, "an instance id"),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := g.client()
				if err != nil {
					return err
				}
				defer c.Close()
				in, err := call(c, cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return g.show(in, func(w *tabwriter.Writer) { row(w, in.ID, in.State) })
			},
		}
	}
	start := startStop("start", "Start an instance's VM", (*api.Client).StartInstance)
	stop := startStop("stop", "Stop an instance's VM (power button, then off)", (*api.Client).StopInstance)
	remove1 := &cobra.Command{
		Use: "remove ID", Short: "Remove an instance's registration (its disks are left alone)", Args: exactArgs(1, "an instance id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.DeleteInstance(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "instance %s removed\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, add, tag, start, stop, remove1)
	return cmd
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
