package cli

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	// progressbar/v3 rather than mpb/v8: every long operation here shows one step at a
	// time (a job's servers are summed on one bar), and progressbar draws a determinate
	// bar synchronously on our calls into any io.Writer, with its rate and time left,
	// throttled, so its output to a buffer is what a terminal gets and nothing of it runs
	// once a step is finished. mpb's strength, several bars redrawn together by its own
	// goroutine, is machinery we would only have to stop. Its dependencies (uniseg,
	// colorstring, x/term) are small, and x/term is ours already.
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Progress shows how far a long operation is: on a terminal, a bar redrawn in place
// with its rate and the time left; elsewhere (a pipe, a file, a journal), a plain line
// every 5% (at most one a second) or every 10 s while a step moves, so that logs stay
// readable, and nothing for a step over within a second. An operation goes through
// steps one after another. A Progress is safe for concurrent use.
type Progress interface {
	// Start begins a step: label says what it is, total its size in u (0: not known).
	// A step still running ends without a line.
	Start(label string, u unit, total int64)
	// Set says how far the step is: done of total (total 0 keeps the one known).
	Set(done, total int64)
	// Above returns a writer whose lines are printed above the bar, not through it.
	Above(w io.Writer) io.Writer
	// Finish ends the step with a line saying what it did, when it measured anything
	// and lasted a second or more.
	Finish()
	// Close ends the step, if one runs, without a line: the operation failed or stopped.
	Close()
}

// plainEvery is how often a plain Progress prints a line while a step moves; it also
// prints one every 5%, at most every plainGap.
const (
	plainEvery = 10 * time.Second
	plainGap   = time.Second
)

// newProgress returns the Progress for w: a bar when w is a terminal, lines otherwise.
func newProgress(w io.Writer) Progress {
	if isTerminal(w) {
		return newTermProgress(w)
	}
	return newPlainProgress(w, time.Now, plainEvery)
}

// isTerminal reports whether w is a terminal that can redraw a line.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd())) && os.Getenv("TERM") != "dumb"
}

// unit is what a step counts: bytes, seconds, or things named by a plural noun.
type unit string

const (
	unitBytes   unit = "bytes"
	unitSeconds unit = "seconds"
)

// amount formats n of u.
func (u unit) amount(n int64) string {
	switch u {
	case unitBytes:
		return bytesIEC(n)
	case unitSeconds:
		return (time.Duration(n) * time.Second).String()
	case "":
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("%d %s", n, u)
}

// rate formats a rate of u per second; "" for seconds, whose rate says nothing.
func (u unit) rate(perSecond float64) string {
	switch u {
	case unitBytes:
		return bytesIEC(int64(perSecond)) + "/s"
	case unitSeconds:
		return ""
	case "":
		return fmt.Sprintf("%.1f/s", perSecond)
	}
	return fmt.Sprintf("%.1f %s/s", perSecond, u)
}

// meter is one step as both kinds of Progress measure it: its rate is measured from
// the first Set, so that a step followed from its middle (a job already running) is
// not credited with what was done before.
type meter struct {
	label       string
	u           unit
	total, done int64
	started     time.Time
	base        int64     // done at the first Set …
	baseAt      time.Time // … and when (zero: no Set yet)
}

func newMeter(label string, u unit, total int64, now time.Time) *meter {
	return &meter{label: label, u: u, total: max(total, 0), started: now}
}

// set records done of total (total 0 keeps the one known); done never goes back.
func (m *meter) set(done, total int64, now time.Time) {
	if total > 0 {
		m.total = total
	}
	if m.baseAt.IsZero() {
		m.base, m.baseAt = done, now
	}
	m.done = max(m.done, done)
}

// worthSummary reports whether the step's summary says something: it counted anything
// and lasted long enough to be watched.
func (m *meter) worthSummary(now time.Time) bool {
	return (m.total > 0 || m.done > 0) && now.Sub(m.started) >= plainGap
}

// rate is the units done per second since the first Set (0: not known yet).
func (m *meter) rate(now time.Time) float64 {
	el := now.Sub(m.baseAt).Seconds()
	if m.baseAt.IsZero() || el < 0.5 || m.done <= m.base {
		return 0
	}
	return float64(m.done-m.base) / el
}

// left is the time the step should still take (false: not known).
func (m *meter) left(now time.Time) (time.Duration, bool) {
	if m.total <= 0 {
		return 0, false
	}
	rest := max(m.total-m.done, 0)
	if m.u == unitSeconds {
		return time.Duration(rest) * time.Second, true
	}
	r := m.rate(now)
	if r <= 0 {
		return 0, false
	}
	return time.Duration(float64(rest) / r * float64(time.Second)), true
}

// percent is how far the step is, 0 to 100 (0 when its total is not known).
func (m *meter) percent() int {
	if m.total <= 0 {
		return 0
	}
	return int(min(100, 100*m.done/m.total))
}

// status says how far the step is: "label: 45% (4.5 GiB of 10.0 GiB), 110.0 MiB/s,
// ETA 50s"; with no total, what it did so far or how long it has run.
func (m *meter) status(now time.Time) string {
	s := m.label + ": "
	switch {
	case m.total > 0:
		s += fmt.Sprintf("%d%% (%s of %s)", m.percent(), m.u.amount(m.done), m.u.amount(m.total))
	case m.done > 0:
		s += m.u.amount(m.done) + " so far"
	default:
		return s + "running for " + roundDuration(now.Sub(m.started))
	}
	if r := m.rate(now); r > 0 && m.u.rate(r) != "" {
		s += ", " + m.u.rate(r)
	}
	if d, ok := m.left(now); ok {
		s += ", ETA " + roundDuration(d)
	}
	return s
}

// summary says what the step did: "label: done, 10.0 GiB in 1m30s (113.8 MiB/s)".
func (m *meter) summary(now time.Time) string {
	took := roundDuration(now.Sub(m.started))
	n := m.done
	if n == 0 || m.u == unitSeconds {
		return m.label + ": done in " + took
	}
	s := fmt.Sprintf("%s: done, %s in %s", m.label, m.u.amount(n), took)
	if el := now.Sub(m.started).Seconds(); el >= 0.5 {
		s += " (" + m.u.rate(float64(n)/el) + ")"
	}
	return s
}

// roundDuration rounds d to the second (to the 100 ms under 10 s).
func roundDuration(d time.Duration) string {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// plainProgress prints lines, "15:04:05 LABEL: …": while a step moves, every 5% (at
// most every plainGap) or every interval; then its summary.
type plainProgress struct {
	mu    sync.Mutex
	w     io.Writer
	now   func() time.Time
	every time.Duration

	step     *meter
	lastLine time.Time // when the step last printed a line
	lastPct  int       // the percent it printed then
}

func newPlainProgress(w io.Writer, now func() time.Time, every time.Duration) *plainProgress {
	return &plainProgress{w: w, now: now, every: every}
}

func (p *plainProgress) line(now time.Time, s string) {
	fmt.Fprintf(p.w, "%s %s\n", now.Local().Format("15:04:05"), s)
}

func (p *plainProgress) Start(label string, u unit, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.step, p.lastLine, p.lastPct = newMeter(label, u, total, now), now, 0
}

func (p *plainProgress) Set(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.step == nil {
		return
	}
	now := p.now()
	p.step.set(done, total, now)
	pct, since := p.step.percent(), now.Sub(p.lastLine)
	if since < p.every && (p.step.total <= 0 || pct < p.lastPct+5 || since < plainGap) {
		return
	}
	p.lastLine, p.lastPct = now, pct
	p.line(now, p.step.status(now))
}

func (p *plainProgress) Above(w io.Writer) io.Writer { return w }

func (p *plainProgress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := p.now(); p.step != nil && p.step.worthSummary(now) {
		p.line(now, p.step.summary(now))
	}
	p.step = nil
}

func (p *plainProgress) Close() {
	p.mu.Lock()
	p.step = nil
	p.mu.Unlock()
}

// termProgress draws a bar with progressbar: the bytes or things done of the total,
// their rate and the time left, or, when the total is not known, a spinner with the
// time the step has run.
type termProgress struct {
	mu   sync.Mutex
	w    *lockedWriter // the bar's writes and the lines above it, one at a time
	now  func() time.Time
	step *meter
	bar  *progressbar.ProgressBar
}

// lockedWriter serializes writes: the bar of a step whose total is not known is
// redrawn by progressbar's own goroutine.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// above clears the bar's line, then writes b to w (the bar's writer or another one on
// the same terminal), with no redraw of the bar in between.
func (l *lockedWriter) above(w io.Writer, b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write([]byte("\r\033[K")); err != nil {
		return 0, err
	}
	return w.Write(b)
}

func newTermProgress(w io.Writer) *termProgress {
	return &termProgress{w: &lockedWriter{w: w}, now: time.Now}
}

// newBar makes the bar of a step; blank draws it at once, at 0.
func (t *termProgress) newBar(label string, u unit, total int64, blank bool) *progressbar.ProgressBar {
	limit := total
	if limit <= 0 {
		limit = -1 // a spinner
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(t.w),
		progressbar.OptionSetDescription(label + " "),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionSetPredictTime(total > 0),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionShowTotalBytes(total > 0),
		progressbar.OptionSetRenderBlankState(blank),
	}
	switch u {
	case unitBytes:
		opts = append(opts, progressbar.OptionShowBytes(true), progressbar.OptionShowCount())
	case unitSeconds, "": // the time it has run says it all
	default:
		opts = append(opts, progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString(string(u)))
	}
	return progressbar.NewOptions64(limit, opts...)
}

func (t *termProgress) Start(label string, u unit, total int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.end()
	t.step = newMeter(label, u, total, t.now())
	t.bar = t.newBar(label, u, total, true)
}

func (t *termProgress) Set(done, total int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.step == nil {
		return
	}
	known := t.step.total > 0
	t.step.set(done, total, t.now())
	if !known && t.step.total > 0 || t.bar.IsFinished() && t.step.done < t.step.total {
		// The total came to be known (a bar in place of the spinner), or grew once the
		// bar was full (a job's next server): progressbar draws nothing more once full.
		_ = t.bar.Finish()
		t.bar = t.newBar(t.step.label, t.step.u, t.step.total, false) // drawn by the Set below
	}
	if t.step.total > 0 && t.bar.GetMax64() != t.step.total {
		t.bar.ChangeMax64(t.step.total)
	}
	done = t.step.done
	if t.step.total > 0 {
		done = min(done, t.step.total) // progressbar refuses more than its max
	}
	_ = t.bar.Set64(done)
}

// Above returns a writer that clears the bar's line before each write; the bar is
// drawn again at its next change.
func (t *termProgress) Above(w io.Writer) io.Writer { return aboveBar{t: t, w: w} }

type aboveBar struct {
	t *termProgress
	w io.Writer
}

func (a aboveBar) Write(b []byte) (int, error) {
	a.t.mu.Lock()
	defer a.t.mu.Unlock()
	if a.t.bar == nil {
		return a.w.Write(b)
	}
	return a.t.w.above(a.w, b)
}

func (t *termProgress) Finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.step == nil {
		return
	}
	step := t.step
	t.end()
	if now := t.now(); step.worthSummary(now) {
		fmt.Fprintln(t.w, step.summary(now))
	}
}

func (t *termProgress) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.end()
}

// end clears the bar of the step running, if any, and stops its spinner.
func (t *termProgress) end() {
	if t.bar != nil {
		_ = t.bar.Finish() // cleared on finish
		_, _ = t.w.Write([]byte("\r\033[K"))
	}
	t.bar, t.step = nil, nil
}

// stepReporter adapts an operation's report of its step and how far it is (the
// store's verify and gc) to p: a step of another name starts anew, with the unit
// unitOf gives it. Reports that go back (from goroutines racing) change nothing. The
// function returned is safe for concurrent use.
func stepReporter(p Progress, prefix string, unitOf func(step string) unit) func(step string, done, total int64) {
	var mu sync.Mutex
	current := ""
	started := false
	return func(step string, done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if !started || step != current {
			if started {
				p.Finish()
			}
			current, started = step, true
			p.Start(prefix+step, unitOf(step), total)
		}
		p.Set(done, total)
	}
}
