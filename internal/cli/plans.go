package cli

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/plan"
)

func newPlanCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "plan", Aliases: []string{"plans"},
		Short: "Recovery plans: waves of servers, health checks, DNS and load balancer steps, drills and reports (docs/plans.md)"}
	cmd.AddCommand(newPlanApplyCmd(g), newPlanListCmd(g), newPlanDescribeCmd(g), newPlanDiffCmd(g), newPlanDeleteCmd(g),
		newPlanReportsCmd(g), newPlanReportCmd(g), newPlanSecretsCmd(g), newPlanSchemaCmd(g))
	for _, mode := range []string{api.PlanDrill, api.PlanFailover, api.PlanFailback} {
		cmd.AddCommand(newPlanRunCmd(g, mode))
	}
	return cmd
}

func newPlanApplyCmd(g *globals) *cobra.Command {
	var file string
	var dry bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE [--dry-run]",
		Short: "Store a plan file as a new plan, or as the next version of its plan",
		Long: `Store a plan file (YAML, docs/plans.md) as a new plan or the next version of its
plan. Every server selector must match a source server, and every secret it names must
exist (lifeboat plan secrets set). --dry-run checks it and shows what would change.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runPlanApply(cmd.Context(), g, file, dry) },
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the plan file (YAML); - reads stdin")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "check the plan and show the difference; store nothing")
	return cmd
}

func runPlanApply(ctx context.Context, g *globals, file string, dry bool) error {
	if file == "" {
		return usagef("plan apply needs the plan file: -f FILE")
	}
	var src []byte
	var err error
	if file == "-" {
		src, err = readAllMax(g.stdin, api.MaxPlanFileBytes)
	} else {
		src, err = readFileMax(file, api.MaxPlanFileBytes)
	}
	if err != nil {
		return fmt.Errorf("read the plan file: %w", err)
	}
	if _, err := plan.Parse(src); err != nil { // say it before the round trip, with the line
		return fmt.Errorf("%s: %w", file, err)
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	out, err := c.ApplyPlan(ctx, api.ApplyPlanRequest{Source: string(src), DryRun: dry})
	if err != nil {
		return err
	}
	return g.show(out, func(w *tabwriter.Writer) {
		p := out.Plan
		switch {
		case !out.Changed:
			fmt.Fprintf(w, "plan %s is unchanged (version %d)\n", p.Name, p.Version)
		case dry:
			fmt.Fprintf(w, "plan %s would become version %d: %d servers in %d waves\n", p.Name, p.Version, p.Servers, p.Waves)
		default:
			fmt.Fprintf(w, "plan %s version %d applied: %d servers in %d waves\n", p.Name, p.Version, p.Servers, p.Waves)
		}
		if out.Diff != "" {
			fmt.Fprint(w, out.Diff)
		}
	})
}

func newPlanListCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "list", Short: "List recovery plans", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return query(g, func(c *api.Client) (api.PlanList, error) { return c.ListPlans(cmd.Context()) }, func(w *tabwriter.Writer, l api.PlanList) {
				row(w, "NAME", "VERSION", "WAVES", "SERVERS", "SCHEDULE", "LAST RUN")
				for _, p := range l.Items {
					last := "-"
					if r := p.LastRun; r != nil {
						last = fmt.Sprintf("%s %s %s", r.Mode, r.State, r.StartedAt.Local().Format(time.DateTime))
					}
					row(w, p.Name, p.Version, p.Waves, p.Servers, orDash(p.Schedule), last)
				}
			})
		}}
}

func newPlanDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "describe NAME", Short: "Show a plan: its newest version's file, schedule and last run",
		Args: exactArgs(1, "a plan name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(g, func(c *api.Client) (api.Plan, error) { return c.GetPlan(cmd.Context(), args[0]) }, func(w *tabwriter.Writer, p api.Plan) {
				fmt.Fprintf(w, "Plan %s, version %d (applied %s by %s): %d servers in %d waves\n", p.Name, p.Version,
					p.UpdatedAt.Local().Format(time.DateTime), p.CreatedBy, p.Servers, p.Waves)
				if p.NextDrillAt != nil {
					fmt.Fprintf(w, "Scheduled drills: %s; next %s\n", p.Schedule, p.NextDrillAt.Local().Format(time.DateTime))
				}
				if r := p.LastRun; r != nil {
					fmt.Fprintf(w, "Last run: %s %s %s (lifeboat plan report %s)\n", r.ID, r.Mode, r.State, r.ID)
				}
				fmt.Fprintf(w, "\n%s", p.Source)
			})
		}}
}

func newPlanDiffCmd(g *globals) *cobra.Command {
	var from, to int
	cmd := &cobra.Command{Use: "diff NAME [--from N] [--to M]", Short: "Compare two versions of a plan (default: the newest and the one before)",
		Args: exactArgs(1, "a plan name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(g, func(c *api.Client) (api.PlanDiff, error) { return c.DiffPlan(cmd.Context(), args[0], from, to) }, func(w *tabwriter.Writer, d api.PlanDiff) {
				if d.Diff == "" {
					fmt.Fprintf(w, "versions %d and %d of plan %s are the same\n", d.From, d.To, args[0])
					return
				}
				fmt.Fprint(w, d.Diff)
			})
		}}
	cmd.Flags().IntVar(&from, "from", 0, "the older version")
	cmd.Flags().IntVar(&to, "to", 0, "the newer version")
	return cmd
}

func newPlanDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "delete NAME", Short: "Delete a plan, its versions and its reports", Args: exactArgs(1, "a plan name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(g, func(c *api.Client) (struct{}, error) { return struct{}{}, c.DeletePlan(cmd.Context(), args[0]) }, func(*tabwriter.Writer, struct{}) {})
		}}
}

// planRunFlags are the flags of plan drill|failover|failback.
type planRunFlags struct {
	at   string
	dry  bool
	wait bool
}

func newPlanRunCmd(g *globals, mode string) *cobra.Command {
	var f planRunFlags
	short := map[string]string{
		api.PlanDrill:    "Drill a plan: launch its waves as drills (isolated), check them, set its drill records",
		api.PlanFailover: "Fail a plan over: recover its waves in order, check them, switch DNS and load balancers",
		api.PlanFailback: "Fail a plan back: replicate its recovery instances home, write them back, switch back",
	}[mode]
	cmd := &cobra.Command{Use: mode + " NAME [--at TIME] [--dry-run] [--wait]", Short: short, Args: exactArgs(1, "a plan name"),
		RunE: func(cmd *cobra.Command, args []string) error { return runPlanRun(cmd.Context(), g, args[0], mode, f) }}
	if mode != api.PlanFailback {
		cmd.Flags().StringVar(&f.at, "at", "", "one point in time for every server: RFC 3339, \"2006-01-02 15:04\" (local), or an age such as 30m")
	}
	cmd.Flags().BoolVar(&f.dry, "dry-run", false, "check every precondition and say what would happen; change nothing")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "follow the run to its end and print its report")
	return cmd
}

func runPlanRun(ctx context.Context, g *globals, name, mode string, f planRunFlags) error {
	req := api.StartPlanRunRequest{Mode: mode, DryRun: f.dry}
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
	run, err := c.StartPlanRun(ctx, name, req)
	if err != nil {
		return err
	}
	switch {
	case f.dry:
		return showPlanRun(g, run)
	case !f.wait:
		return g.show(run, func(w *tabwriter.Writer) { fmt.Fprintln(w, run.ID) })
	}
	return followPlanRun(ctx, g, c, run)
}

// followPlanRun prints a run's steps as they start and end, then its report.
func followPlanRun(ctx context.Context, g *globals, c *api.Client, run api.PlanRun) error {
	out := g.stdout
	if g.output == "json" {
		out = g.stderr
	}
	fmt.Fprintln(out, run.ID)
	seen := map[int]string{}
	for {
		for i, st := range run.Steps {
			if st.State == api.PlanStepPending || seen[i] == st.State {
				continue
			}
			seen[i] = st.State
			line := fmt.Sprintf("%s %-8s %s", time.Now().Format("15:04:05"), st.State, planStepName(st))
			if st.Message != "" && st.State != api.PlanStepRunning {
				line += ": " + st.Message
			}
			fmt.Fprintln(out, line)
		}
		if run.State != api.PlanRunRunning {
			return showPlanRun(g, run)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped following plan run %s, which goes on: see lifeboat plan report %s", run.ID, run.ID)
		case <-time.After(500 * time.Millisecond):
		}
		var err error
		if run, err = c.PlanRun(ctx, run.ID); err != nil {
			return err
		}
	}
}

func planStepName(st api.PlanRunStep) string {
	switch {
	case st.Name != "":
		return fmt.Sprintf("%s %s (wave %s)", st.Kind, st.Name, st.Wave)
	case st.Wave != "":
		return st.Kind + " wave " + st.Wave
	}
	return st.Kind
}

// showPlanRun prints a run's report (Markdown, or the JSON with -o json); a failed run
// (or a dry run whose preconditions do not hold) is a failed command.
func showPlanRun(g *globals, run api.PlanRun) error {
	if g.output == "json" {
		if err := g.show(run, nil); err != nil {
			return err
		}
	} else {
		fmt.Fprint(g.stdout, plan.Markdown(&run))
	}
	switch {
	case run.State == api.PlanRunFailed && run.DryRun:
		return fmt.Errorf("plan %s: the %s would not succeed: %s", run.Plan, run.Mode, run.Reason)
	case run.State == api.PlanRunFailed:
		return fmt.Errorf("plan %s: the %s failed: %s", run.Plan, run.Mode, run.Reason)
	}
	return nil
}

func newPlanReportsCmd(g *globals) *cobra.Command {
	var limit int
	cmd := &cobra.Command{Use: "reports NAME", Short: "List a plan's runs and their outcome, RTO and RPO, newest first",
		Args: exactArgs(1, "a plan name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(g, func(c *api.Client) (api.PlanRunList, error) { return c.PlanRuns(cmd.Context(), args[0], limit, "") }, func(w *tabwriter.Writer, l api.PlanRunList) {
				row(w, "RUN", "MODE", "STATE", "STARTED", "TOOK", "RTO", "RPO")
				for _, r := range l.Items {
					took := "-"
					if r.EndedAt != nil {
						took = r.EndedAt.Sub(r.StartedAt).Round(time.Second).String()
					}
					mode := r.Mode
					if r.Scheduled {
						mode += " (scheduled)"
					}
					row(w, r.ID, mode, r.State, r.StartedAt.Local().Format(time.DateTime), took, secondsText(r.RTOSeconds), secondsText(r.MaxRPOSeconds))
				}
			})
		}}
	cmd.Flags().IntVar(&limit, "limit", 20, "how many runs")
	return cmd
}

func secondsText(v *float64) string {
	if v == nil {
		return "-"
	}
	return time.Duration(*v * float64(time.Second)).Round(100 * time.Millisecond).String()
}

func newPlanReportCmd(g *globals) *cobra.Command {
	var html string
	cmd := &cobra.Command{Use: "report RUN [--html FILE]", Short: "Print a plan run's report (Markdown; -o json for the API's)",
		Args: exactArgs(1, "a plan run id (prun-…; see lifeboat plan reports NAME)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			run, err := c.PlanRun(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if html != "" {
				page, err := plan.HTML(&run)
				if err == nil {
					err = os.WriteFile(html, page, 0o644)
				}
				if err != nil {
					return fmt.Errorf("write the HTML report: %w", err)
				}
			}
			if g.output == "json" {
				return g.show(run, nil)
			}
			fmt.Fprint(g.stdout, plan.Markdown(&run))
			return nil
		}}
	cmd.Flags().StringVar(&html, "html", "", "also write the report as an HTML page to this file")
	return cmd
}

func newPlanSecretsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "secrets", Short: "Secrets plans name: TSIG keys, webhook signing keys, CA certificates"}
	var file string
	set := &cobra.Command{Use: "set NAME --from-file FILE", Short: "Store a secret from a file (a BIND key file: its secret)",
		Args: exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := readPlanSecret(g, file)
			if err != nil {
				return err
			}
			return query(g, func(c *api.Client) (api.PlanSecret, error) { return c.SetPlanSecret(cmd.Context(), args[0], v) },
				func(w *tabwriter.Writer, s api.PlanSecret) { fmt.Fprintf(w, "plan secret %s stored\n", s.Name) })
		}}
	set.Flags().StringVar(&file, "from-file", "", "the file holding the secret; - reads stdin")
	list := &cobra.Command{Use: "list", Short: "List plan secrets (names only)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return query(g, func(c *api.Client) (api.PlanSecretList, error) { return c.ListPlanSecrets(cmd.Context()) }, func(w *tabwriter.Writer, l api.PlanSecretList) {
				row(w, "NAME", "UPDATED")
				for _, s := range l.Items {
					row(w, s.Name, s.UpdatedAt.Local().Format(time.DateTime))
				}
			})
		}}
	del := &cobra.Command{Use: "delete NAME", Short: "Delete a plan secret", Args: exactArgs(1, "a secret name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(g, func(c *api.Client) (struct{}, error) { return struct{}{}, c.DeletePlanSecret(cmd.Context(), args[0]) }, func(*tabwriter.Writer, struct{}) {})
		}}
	cmd.AddCommand(set, list, del)
	return cmd
}

// bindKeySecret finds the secret of a BIND key file (tsig-keygen's output).
var bindKeySecret = regexp.MustCompile(`secret\s+"([^"]+)"`)

// readPlanSecret reads a secret from a file or stdin: the whole content, trimmed, or
// the secret of a BIND key file.
func readPlanSecret(g *globals, file string) (string, error) {
	if file == "" {
		return "", usagef("give the secret's file with --from-file FILE (or - for stdin): secrets never go on the command line")
	}
	var b []byte
	var err error
	if file == "-" {
		b, err = readAllMax(g.stdin, api.MaxPlanSecretBytes)
	} else {
		b, err = readFileMax(file, api.MaxPlanSecretBytes)
	}
	if err != nil {
		return "", fmt.Errorf("read the secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if m := bindKeySecret.FindStringSubmatch(s); m != nil && strings.Contains(s, "algorithm") {
		s = m[1]
	}
	if s == "" {
		return "", fmt.Errorf("%s holds no secret", describeSecretSource(file))
	}
	return s, nil
}

func newPlanSchemaCmd(g *globals) *cobra.Command {
	return &cobra.Command{Use: "schema", Short: "Print the JSON Schema of plan files (for editors)", Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := g.stdout.Write(plan.Schema())
			return err
		}}
}

// query makes one API call with a client and shows its answer: the API's JSON with -o
// json, else the table.
func query[T any](g *globals, call func(*api.Client) (T, error), table func(*tabwriter.Writer, T)) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	v, err := call(c)
	if err != nil {
		return err
	}
	return g.show(v, func(w *tabwriter.Writer) { table(w, v) })
}
