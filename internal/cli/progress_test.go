package cli

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// plainLines returns the lines a plain Progress printed, each checked to start with
// its time (15:04:05) and given without it.
func plainLines(t *testing.T, out string) []string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if l == "" {
			continue
		}
		stamp, rest, ok := strings.Cut(l, " ")
		if _, err := time.Parse("15:04:05", stamp); !ok || err != nil {
			t.Fatalf("line %q does not start with its time", l)
		}
		lines = append(lines, rest)
	}
	return lines
}

const mib = 1 << 20

// A plain Progress prints a line every 5% while that takes 1 s to 10 s, every 10 s
// when 5% takes longer, at most one a second when it takes less; each with the rate
// since the first report and the time left; then the step's summary.
func TestPlainProgressCadence(t *testing.T) {
	var out bytes.Buffer
	clk := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	p := newPlainProgress(&out, clk.now, 10*time.Second)
	p.Start("export vda", unitBytes, 100*mib)
	p.Set(0, 0)
	// 1 MiB a second: a line every 5 s, at 5% and 10%.
	for range 10 {
		clk.advance(time.Second)
		p.Set(p.step.done+mib, 0)
	}
	// 0.25 MiB a second: 5% would take 20 s, a line every 10 s instead.
	for range 20 {
		clk.advance(time.Second)
		p.Set(p.step.done+mib/4, 0)
	}
	// 20 MiB every 100 ms: at most a line a second.
	for range 20 {
		clk.advance(100 * time.Millisecond)
		p.Set(min(p.step.done+20*mib, 100*mib), 0)
	}
	p.Finish()
	want := []string{
		"export vda: 5% (5.0 MiB of 100.0 MiB), 1.0 MiB/s, ETA 1m35s",
		"export vda: 10% (10.0 MiB of 100.0 MiB), 1.0 MiB/s, ETA 1m30s",
		"export vda: 12% (12.5 MiB of 100.0 MiB), 640.0 KiB/s, ETA 2m20s",
		"export vda: 15% (15.0 MiB of 100.0 MiB), 512.0 KiB/s, ETA 2m50s",
		"export vda: 100% (100.0 MiB of 100.0 MiB), 3.2 MiB/s, ETA 0s",
		"export vda: done, 100.0 MiB in 32s (3.1 MiB/s)",
	}
	if got := plainLines(t, out.String()); !slices.Equal(got, want) {
		t.Fatalf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Steps without a total say what they did so far, or how long they have run; a step of
// seconds has no rate; a step over within a second prints nothing; reports that go
// back are ignored.
func TestPlainProgressOtherSteps(t *testing.T) {
	var out bytes.Buffer
	clk := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	p := newPlainProgress(&out, clk.now, 10*time.Second)

	p.Start("gc marking", "tree nodes", 0)
	for i := range 25 {
		clk.advance(time.Second)
		p.Set(int64(64*(i+1)), 0)
	}
	p.Set(10, 0) // back: from a goroutine that was late
	p.Finish()

	p.Start("waiting for a PIT of s-1", unitSeconds, 0)
	for range 12 {
		clk.advance(time.Second)
		p.Set(0, 0)
	}
	p.Close() // no summary

	p.Start("gc waiting for writers", unitSeconds, 600)
	clk.advance(30 * time.Second)
	p.Set(30, 600)
	clk.advance(570 * time.Second)
	p.Set(600, 600)
	p.Finish()

	p.Start("verify index", "index objects", 3)
	clk.advance(200 * time.Millisecond)
	p.Set(3, 3)
	p.Finish()

	want := []string{
		"gc marking: 640 tree nodes so far, 64.0 tree nodes/s",
		"gc marking: 1280 tree nodes so far, 64.0 tree nodes/s",
		"gc marking: done, 1600 tree nodes in 25s (64.0 tree nodes/s)",
		"waiting for a PIT of s-1: running for 10s",
		"gc waiting for writers: 5% (30s of 10m0s), ETA 9m30s",
		"gc waiting for writers: 100% (10m0s of 10m0s), ETA 0s",
		"gc waiting for writers: done in 10m0s",
	}
	if got := plainLines(t, out.String()); !slices.Equal(got, want) {
		t.Fatalf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A step followed from its middle (a job already running) is not credited with what
// was done before: its rate counts from the first report.
func TestProgressRateFromTheFirstReport(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := newMeter("s-1 SNAPSHOT", unitBytes, 100*mib, t0)
	m.set(50*mib, 0, t0)
	m.set(60*mib, 0, t0.Add(10*time.Second))
	if r := m.rate(t0.Add(10 * time.Second)); r != mib {
		t.Fatalf("rate %v, want 1 MiB/s", r)
	}
	if d, ok := m.left(t0.Add(10 * time.Second)); !ok || d != 40*time.Second {
		t.Fatalf("time left %v %v, want 40s", d, ok)
	}
}

// On a terminal, the bar is drawn with its label, percent, bytes, rate and time left;
// a line written above it clears it first; a total that comes to be known turns the
// spinner into a bar; the step ends cleared, with its summary.
func TestTerminalProgressRenders(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	w := writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(b)
	})
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
	p := newTermProgress(w)
	start := time.Now()
	p.Start("export vda", unitBytes, 0) // a spinner until the size is known
	p.Set(mib, 10*mib)
	time.Sleep(600 * time.Millisecond)
	p.Set(5*mib, 0)
	if !strings.Contains(output(), "export vda") {
		t.Fatalf("no label drawn: %q", output())
	}
	last := output()[strings.LastIndex(output(), "\r")+1:]
	for _, want := range []string{"export vda", "50%", "5.0/10 MiB", "MiB/s"} {
		if !strings.Contains(last, want) {
			t.Fatalf("the bar %q lacks %q (all: %q)", last, want, output())
		}
	}
	if !regexp.MustCompile(`\[[0-9hms]+:[0-9hms]+\]`).MatchString(last) {
		t.Fatalf("the bar %q shows no [elapsed:left]", last)
	}
	fmt.Fprintln(p.Above(w), "12:00:00 s-1 SNAPSHOT_START materializing")
	if !strings.HasSuffix(output(), "\r\033[K12:00:00 s-1 SNAPSHOT_START materializing\n") {
		t.Fatalf("a line above the bar was not written on a cleared line: %q", output())
	}
	time.Sleep(time.Until(start.Add(1100 * time.Millisecond))) // a summary is for steps of a second or more
	p.Set(10*mib, 0)
	// Full, then more to do (a job's next server): the bar is drawn again.
	full := len(output())
	p.Set(10*mib, 20*mib)
	if again := output()[full:]; !strings.Contains(again, "50%") || !strings.Contains(again, "10/20 MiB") {
		t.Fatalf("a full bar given more to do drew %q", again)
	}
	p.Set(20*mib, 0)
	p.Finish()
	end := output()
	if !strings.Contains(end, "\r\033[K") || !strings.HasSuffix(end, "\n") {
		t.Fatalf("the bar was not cleared at the end: %q", end)
	}
	summary := end[strings.LastIndex(strings.TrimSuffix(end, "\n"), "\n")+1:]
	summary = summary[strings.LastIndex(summary, "\033[K")+3:]
	if !strings.HasPrefix(summary, "export vda: done, 20.0 MiB in 1") || !strings.Contains(summary, "MiB/s)") {
		t.Fatalf("summary %q", summary)
	}
	p.Close() // nothing running: nothing written
	if output() != end {
		t.Fatalf("Close after Finish wrote %q", strings.TrimPrefix(output(), end))
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// recorder is a Progress that records its calls.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.calls = append(r.calls, s)
	r.mu.Unlock()
}
func (r *recorder) Start(label string, u unit, total int64) {
	r.add(fmt.Sprintf("start %s %s %d", label, u, total))
}
func (r *recorder) Set(done, total int64)       { r.add(fmt.Sprintf("set %d %d", done, total)) }
func (r *recorder) Above(w io.Writer) io.Writer { return w }
func (r *recorder) Finish()                     { r.add("finish") }
func (r *recorder) Close()                      { r.add("close") }

// stepReporter starts a step on each new name, with its unit, and reports the rest.
func TestStepReporter(t *testing.T) {
	r := &recorder{}
	report := stepReporter(r, "verify ", func(step string) unit { return unit(step + " things") })
	report("index", 0, 2)
	report("index", 1, 2)
	report("packs", 3, 9)
	report("references", 40, 0)
	want := []string{"start verify index index things 2", "set 0 2", "set 1 2", "finish",
		"start verify packs packs things 9", "set 3 9", "finish",
		"start verify references references things 0", "set 40 0"}
	if !slices.Equal(r.calls, want) {
		t.Fatalf("calls %q, want %q", r.calls, want)
	}
}
