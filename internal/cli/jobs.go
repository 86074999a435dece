package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newJobsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "jobs", Aliases: []string{"job"}, Short: "Drill, recovery and terminate jobs: status, servers, RTO, log"}
	cmd.AddCommand(newJobsListCmd(g), newJobsDescribeCmd(g), newJobsLogCmd(g))
	return cmd
}

func newJobsListCmd(g *globals) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use: "list", Short: "List jobs, newest first", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runJobsList(cmd.Context(), g, limit) },
	}
	cmd.Flags().IntVar(&limit, "limit", 50, "jobs to show")
	return cmd
}

func runJobsList(ctx context.Context, g *globals, limit int) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	l, err := c.Jobs(ctx, limit, "")
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
}

func newJobsDescribeCmd(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use: "describe JOB", Short: "Show a job: its status, each server's launch status and measured RTO", Args: exactArgs(1, "a job id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runJobsDescribe(cmd.Context(), g, args[0], wait) },
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the job to its end as drill --wait does (log, progress), then show it; exit 1 if a server failed")
	return cmd
}

func runJobsDescribe(ctx context.Context, g *globals, id string, wait bool) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	j, err := c.Job(ctx, id)
	if err != nil {
		return err
	}
	if wait {
		return followJob(ctx, g, c, j, false)
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
}

// jobsLogFlags are the flags of jobs log.
type jobsLogFlags struct {
	follow, noConsole bool
}

func newJobsLogCmd(g *globals) *cobra.Command {
	var f jobsLogFlags
	cmd := &cobra.Command{
		Use: "log JOB", Short: "Print a job's log of timed events (the instances' console lines included)", Args: exactArgs(1, "a job id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runJobsLog(cmd.Context(), g, args[0], f) },
	}
	cmd.Flags().BoolVarP(&f.follow, "follow", "f", false, "keep printing until the job completes")
	cmd.Flags().BoolVar(&f.noConsole, "no-console", false, "leave out the instances' console lines")
	return cmd
}

// runJobsLog prints a job's log; with --follow it reads on every second until the job
// completes, then once more for what was logged before the end.
func runJobsLog(ctx context.Context, g *globals, id string, f jobsLogFlags) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	var all []api.JobLogEvent
	emit := func(e api.JobLogEvent) (bool, error) {
		if e.Type == api.EventConsole && f.noConsole {
			return false, nil
		}
		if g.output == "json" {
			all = append(all, e)
		} else {
			printEvent(g.stdout, e)
		}
		return false, nil
	}
	token, follow := "", f.follow
	for {
		if token, err = api.EachPage(ctx, token, c.JobLogPages(id), emit); err != nil {
			return err
		}
		if !follow {
			break
		}
		j, err := c.Job(ctx, id)
		if err != nil {
			return err
		}
		if j.Status == api.JobCompleted {
			follow = false // one more read drains what was logged before the end
			continue
		}
		select {
		case <-ctx.Done():
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
}

// followJob prints a job's log as it runs, with the progress of its servers' steps
// (on stderr with -o json), then its result; it fails when a server failed.
func followJob(ctx context.Context, g *globals, c *api.Client, job api.Job, console bool) error {
	out := g.stdout
	if g.output == "json" {
		out = g.stderr
	}
	p := newProgress(out)
	defer p.Close()
	log := p.Above(out)
	fmt.Fprintln(log, job.ID)
	printLog := func(e api.JobLogEvent) (bool, error) {
		if e.Type != api.EventConsole || console {
			printEvent(log, e)
		}
		return false, nil
	}
	token := ""
	jp := &jobProgress{p: p}
	for {
		j, err := c.Job(ctx, job.ID)
		if err != nil {
			return err
		}
		if token, err = api.EachPage(ctx, token, c.JobLogPages(job.ID), printLog); err != nil {
			return err
		}
		jp.update(j)
		if j.Status == api.JobCompleted {
			p.Close()
			return showJobResult(g, j)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped following job %s, which goes on: follow it with lifeboat jobs log %s --follow", j.ID, j.ID)
		case <-time.After(time.Second):
		}
	}
}

// jobProgress shows, on one Progress, the steps of a job's servers that report how
// far they are (the PIT's volumes materialized, replication back, a failback written):
// those under way at once are summed, from when the first starts until the last ends.
type jobProgress struct {
	p     Progress
	parts map[string]api.JobProgress // by recovery instance and step, since the first started
}

// update shows how far the job's steps are.
func (jp *jobProgress) update(j api.Job) {
	now := map[string]api.JobProgress{}
	var servers, steps []string
	for _, s := range j.Servers {
		if s.Progress == nil || s.Progress.TotalBytes == 0 || s.LaunchStatus != api.LaunchInProgress {
			continue
		}
		now[s.RecoveryInstanceID+" "+s.Step] = *s.Progress
		servers = append(servers, s.SourceServerID)
		if !slices.Contains(steps, s.Step) {
			steps = append(steps, s.Step)
		}
	}
	if len(now) == 0 {
		if jp.parts != nil {
			jp.p.Finish()
			jp.parts = nil
		}
		return
	}
	if jp.parts == nil {
		jp.parts = map[string]api.JobProgress{}
		jp.p.Start(jobProgressLabel(servers, steps), unitBytes, 0)
	}
	var done, total int64
	for k, v := range jp.parts {
		if _, ok := now[k]; !ok {
			v.DoneBytes = v.TotalBytes // that step ended
			jp.parts[k] = v
		}
	}
	maps.Copy(jp.parts, now)
	for _, v := range jp.parts {
		done += min(v.DoneBytes, v.TotalBytes)
		total += v.TotalBytes
	}
	jp.p.Set(done, total)
}

// jobProgressLabel names what a job's progress is of: "s-… SNAPSHOT", "3 servers
// SNAPSHOT".
func jobProgressLabel(servers, steps []string) string {
	who := servers[0]
	if len(servers) > 1 {
		who = fmt.Sprintf("%d servers", len(servers))
	}
	return who + " " + strings.Join(steps, "+")
}

// showJobResult shows a completed job's servers; it fails when a server failed.
func showJobResult(g *globals, j api.Job) error {
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
	row(w, "SERVER", "STATUS", "RECOVERY INSTANCE", "PIT", "RPO", "RTO", "STEP", "ERROR")
	for _, s := range j.Servers {
		step := s.Step
		if s.Progress != nil && s.Progress.TotalBytes > 0 && s.LaunchStatus == api.LaunchInProgress {
			step += fmt.Sprintf(" %d%%", s.Progress.DoneBytes*100/s.Progress.TotalBytes)
		}
		row(w, s.SourceServerID, s.LaunchStatus, s.RecoveryInstanceID, pitText(s), rpoText(s), rtoText(s), orDash(step), orDash(s.Error))
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
