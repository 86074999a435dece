package plan

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Markdown is a run's report as Markdown: the outcome, the RTO and RPO, each server's
// PIT and times, each step's timing, each health check's result.
func Markdown(r *api.PlanRun) string {
	var b strings.Builder
	title := "Plan " + r.Plan + ": " + r.Mode
	if r.DryRun {
		title += " (dry run)"
	}
	fmt.Fprintf(&b, "# %s\n\n", title)
	fmt.Fprintf(&b, "- Run: %s (plan version %d%s), started %s by %s\n", r.ID, r.PlanVersion, scheduledNote(r), stamp(&r.StartedAt), r.CreatedBy)
	fmt.Fprintf(&b, "- Outcome: **%s**", r.State)
	if r.EndedAt != nil {
		fmt.Fprintf(&b, " after %s", r.EndedAt.Sub(r.StartedAt).Round(time.Millisecond))
	}
	b.WriteString("\n")
	if r.Reason != "" {
		fmt.Fprintf(&b, "- Reason: %s\n", r.Reason)
	}
	if r.RTOSeconds != nil {
		fmt.Fprintf(&b, "- RTO: %s (start to the last health check passed)\n", secs(r.RTOSeconds))
	}
	if r.MaxRPOSeconds != nil {
		fmt.Fprintf(&b, "- RPO: %s at most (the oldest PIT's data lost)\n", secs(r.MaxRPOSeconds))
	}
	if len(r.Checks) > 0 {
		b.WriteString("\n## Preconditions\n\n| | Check | Result |\n|---|---|---|\n")
		for _, c := range r.Checks {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", okMark(c.OK), cell(c.What), cell(c.Message))
		}
	}
	b.WriteString("\n## Servers\n\n| Server | Wave | PIT | PIT age | RPO | Instance | Launched | Healthy | RTO |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.Servers {
		name := s.SourceServerID
		if s.Hostname != "" {
			name += " (" + s.Hostname + ")"
		}
		inst := s.RecoveryInstID
		if s.FailbackInto != "" {
			inst += " → " + s.FailbackInto
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", cell(name), s.Wave, s.SnapshotID, secs(s.PITAgeSeconds),
			secs(s.RPOSeconds), inst, stamp(s.LaunchedAt), stamp(s.HealthyAt), secs(s.RTOSeconds))
	}
	b.WriteString("\n## Steps\n\n| Step | State | Started | Ended | Took | What |\n|---|---|---|---|---|---|\n")
	for _, st := range r.Steps {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", stepName(st), st.State, stamp(st.StartedAt), stamp(st.EndedAt), took(st), cell(st.Message))
	}
	var checks []api.PlanCheckResult
	for _, st := range r.Steps {
		checks = append(checks, st.Checks...)
	}
	if len(checks) > 0 {
		b.WriteString("\n## Health checks\n\n| | Check | Server | Attempts | Took | Answer |\n|---|---|---|---|---|---|\n")
		for _, c := range checks {
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %s |\n", okMark(c.Passed), c.Check, c.SourceServerID, c.Attempts,
				c.EndedAt.Sub(c.StartedAt).Round(time.Millisecond), cell(c.Message))
		}
	}
	return b.String()
}

func scheduledNote(r *api.PlanRun) string {
	if r.Scheduled {
		return ", scheduled"
	}
	return ""
}

// stepName names a step in a report.
func stepName(st api.PlanRunStep) string {
	switch {
	case st.Name != "":
		return fmt.Sprintf("%s %s (wave %s)", st.Kind, st.Name, st.Wave)
	case st.Wave != "":
		return fmt.Sprintf("%s wave %s", st.Kind, st.Wave)
	}
	return st.Kind
}

func took(st api.PlanRunStep) string {
	if st.StartedAt == nil || st.EndedAt == nil {
		return ""
	}
	return st.EndedAt.Sub(*st.StartedAt).Round(time.Millisecond).String()
}

func stamp(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format("15:04:05.000")
}

func secs(v *float64) string {
	if v == nil {
		return ""
	}
	return time.Duration(*v * float64(time.Second)).Round(time.Millisecond).String()
}

func okMark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// cell makes text safe in a Markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}

//go:embed report.html
var reportHTML string

// HTML is a run's report as a page of its own (the console shows it).
func HTML(r *api.PlanRun) ([]byte, error) {
	t, err := template.New("report").Funcs(template.FuncMap{"stamp": stampAny, "secs": secs, "took": took, "stepName": stepName,
		"ok": okMark, "scheduled": scheduledNote}).Parse(reportHTML)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = t.Execute(&b, r)
	return b.Bytes(), err
}

// stampAny is stamp for templates, which hold times and pointers to them.
func stampAny(v any) string {
	switch t := v.(type) {
	case time.Time:
		return stamp(&t)
	case *time.Time:
		return stamp(t)
	}
	return ""
}
