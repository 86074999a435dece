// Package healthcheck runs health checks against launched servers: an HTTP GET that
// must answer a status (and a body), a TCP address that must accept a connection, or a
// shell command that must exit 0. A check is tried again, Interval apart, until it
// passes, its attempts are spent, its Deadline passes or its context ends.
//
// Recovery plans gate their waves on health checks (internal/plan); post-launch actions
// run theirs, and their scripts, through it (internal/recovery). Run does not expand
// placeholders: callers expand addresses and URLs with Expand, and give commands their
// variables in Command.Env.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults of a Check's zero fields.
const (
	DefaultTimeout  = 5 * time.Second
	DefaultInterval = 5 * time.Second
	DefaultAttempts = 60
)

// Bounds of what a check reads.
const (
	// MaxBody is how much of an HTTP answer's body is read (and searched for Body).
	MaxBody = 1 << 20
	// MaxOutput is how much of a command's output is kept: its last bytes.
	MaxOutput = 4096
	// quoteBytes is how much of an unexpected body a failure quotes.
	quoteBytes = 200
)

// Check is one health check: exactly one of HTTP, TCP and Command is set.
type Check struct {
	Name    string
	HTTP    *HTTP
	TCP     *TCP
	Command *Command
	// Timeout bounds one attempt (default 5s).
	Timeout time.Duration
	// Interval is the wait between attempts (default 5s).
	Interval time.Duration
	// Attempts is how many attempts are made before the check fails (default 60); a
	// negative number sets no bound: the check then ends only when it passes, when
	// Deadline passes or when its context ends.
	Attempts int
	// Deadline, when set, bounds the whole check, attempts and waits included.
	Deadline time.Duration
}

// HTTP is a GET of URL. It passes when the answer's status is Status (0: any status
// below 400) and, when Body is set, the answer's body (its first MaxBody bytes)
// contains Body. Redirects are followed.
type HTTP struct {
	URL    string
	Status int
	Body   string
}

// TCP passes when Address (host:port) accepts a connection.
type TCP struct {
	Address string
}

// Command is run with /bin/sh -c on this host; it passes when it exits 0. Its
// environment is this process's plus Env ("NAME=value" entries). Its output (stdout
// and stderr, the last MaxOutput bytes) is kept in Result.Output. When an attempt's
// Timeout passes or the context ends, its whole process group is killed.
type Command struct {
	Run string
	Env []string
}

// Result is what a check came to.
type Result struct {
	Name     string
	Passed   bool
	Attempts int // attempts made
	Started  time.Time
	Ended    time.Time
	// Message says what answered (a pass) or the last failure.
	Message string
	// Output is a command's output in its last attempt (its last MaxOutput bytes, "…"
	// first when cut), trimmed of surrounding space.
	Output string
}

// Expand replaces ${NAME} (and $NAME) in s with env[NAME]; a name env does not have
// becomes "".
func Expand(s string, env map[string]string) string {
	return os.Expand(s, func(k string) string { return env[k] })
}

// withDefaults fills a check's zero fields.
func (c Check) withDefaults() Check {
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Attempts == 0 {
		c.Attempts = DefaultAttempts
	}
	return c
}

// validate refuses a check that no attempt could pass: it fails at once instead.
func (c Check) validate() error {
	n := 0
	for _, set := range []bool{c.HTTP != nil, c.TCP != nil, c.Command != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("health check %q must be exactly one of http, tcp and command, not %d of them", c.Name, n)
	}
	switch {
	case c.HTTP != nil:
		u, err := url.Parse(c.HTTP.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("health check %q: %q is not an http:// or https:// URL", c.Name, c.HTTP.URL)
		}
	case c.TCP != nil:
		if _, _, err := net.SplitHostPort(c.TCP.Address); err != nil {
			return fmt.Errorf("health check %q: %q is not a host:port address", c.Name, c.TCP.Address)
		}
	case strings.TrimSpace(c.Command.Run) == "":
		return fmt.Errorf("health check %q: the command is empty", c.Name)
	}
	return nil
}

// Run runs the check until it passes or it ends (see Check), and returns its result.
// progress, when not nil, is called with the result so far after each failed attempt
// (the last one included), so that a long check can be followed.
func Run(ctx context.Context, c Check, progress func(Result)) Result {
	c = c.withDefaults()
	res := Result{Name: c.Name, Started: time.Now()}
	finish := func(passed bool, msg string) Result {
		res.Passed, res.Message, res.Ended = passed, msg, time.Now()
		return res
	}
	if err := c.validate(); err != nil {
		return finish(false, err.Error())
	}
	runCtx := ctx
	if c.Deadline > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, c.Deadline)
		defer cancel()
	}
	try := newAttempter(c)
	defer try.close()
	var last string
	for {
		res.Attempts++
		msg, out, err := try.once(runCtx)
		res.Output = out
		if err == nil {
			return finish(true, msg)
		}
		// An attempt cut short by the check's end says less than the one before it.
		if last == "" || runCtx.Err() == nil {
			last = err.Error()
		}
		res.Message, res.Ended = last, time.Now()
		if progress != nil {
			progress(res)
		}
		if c.Attempts > 0 && res.Attempts >= c.Attempts {
			if res.Attempts == 1 {
				return finish(false, last)
			}
			return finish(false, fmt.Sprintf("no pass in %d attempts; the last: %s", res.Attempts, last))
		}
		wait := time.NewTimer(c.Interval)
		select {
		case <-runCtx.Done():
			wait.Stop()
			return finish(false, ended(ctx, c, res.Attempts, last))
		case <-wait.C:
		}
	}
}

// ended says why a check's context ended before it passed.
func ended(ctx context.Context, c Check, attempts int, last string) string {
	n := fmt.Sprintf("%d attempts", attempts)
	if attempts == 1 {
		n = "1 attempt"
	}
	if ctx.Err() != nil {
		return fmt.Sprintf("stopped after %s (%v); the last: %s", n, context.Cause(ctx), last)
	}
	return fmt.Sprintf("no pass within %s (%s); the last: %s", c.Deadline, n, last)
}

// errTimeout words an attempt that ran out of its time.
func errTimeout(what string, d time.Duration) error {
	return fmt.Errorf("%s did not answer within %s", what, d)
}

// attemptErr gives an attempt's error, worded as a timeout when the attempt's own
// time ran out.
func attemptErr(ctx context.Context, what string, d time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return errTimeout(what, d)
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
