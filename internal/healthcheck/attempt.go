package healthcheck

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// attempter makes one attempt of a check at a time.
type attempter struct {
	c      Check
	client *http.Client // HTTP checks
}

func newAttempter(c Check) *attempter {
	a := &attempter{c: c}
	if c.HTTP != nil {
		a.client = &http.Client{Transport: &http.Transport{
			// A recovered server's certificate names the source server, not the address
			// it is reached at now, and is often self-signed: a health check asks whether
			// it answers, not who it is, so it does not verify the certificate.
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // health check only: nothing secret is sent
			DisableKeepAlives: true,
		}}
	}
	return a
}

func (a *attempter) close() {
	if a.client != nil {
		a.client.CloseIdleConnections()
	}
}

// once makes one attempt within the check's Timeout: what answered, and a command's
// output, or why it failed.
func (a *attempter) once(ctx context.Context) (msg, output string, err error) {
	ctx, cancel := context.WithTimeout(ctx, a.c.Timeout)
	defer cancel()
	switch {
	case a.c.HTTP != nil:
		msg, err = a.http(ctx)
	case a.c.TCP != nil:
		msg, err = a.tcp(ctx)
	default:
		output, err = a.command(ctx)
		msg = "the command exited 0"
	}
	return msg, output, err
}

func (a *attempter) tcp(ctx context.Context) (string, error) {
	addr := a.c.TCP.Address
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", attemptErr(ctx, addr, a.c.Timeout, err)
	}
	_ = conn.Close()
	return addr + " accepts connections", nil
}

func (a *attempter) http(ctx context.Context) (string, error) {
	h := a.c.HTTP
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", h.URL, err)
	}
	req.Header.Set("User-Agent", "lifeboat-healthcheck")
	resp, err := a.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // *url.Error repeats the method and the URL
		}
		return "", fmt.Errorf("GET %s: %w", h.URL, attemptErr(ctx, "the server", a.c.Timeout, err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if err != nil {
		return "", fmt.Errorf("%s answered %s, then its body could not be read: %w", h.URL, resp.Status, attemptErr(ctx, "the body", a.c.Timeout, err))
	}
	switch {
	case h.Status == 0 && resp.StatusCode >= 400:
		return "", fmt.Errorf("%s answered %s", h.URL, resp.Status)
	case h.Status != 0 && resp.StatusCode != h.Status:
		return "", fmt.Errorf("%s answered %s, not %d", h.URL, resp.Status, h.Status)
	case h.Body != "" && !bytes.Contains(body, []byte(h.Body)):
		return "", fmt.Errorf("%s answered %s without %q in its body, which began %s", h.URL, resp.Status, h.Body, quote(body))
	}
	return fmt.Sprintf("%s answered %s", h.URL, resp.Status), nil
}

// quote writes the start of an answer for a message.
func quote(b []byte) string {
	if len(b) == 0 {
		return "empty"
	}
	if len(b) > quoteBytes {
		return fmt.Sprintf("%q…", b[:quoteBytes])
	}
	return fmt.Sprintf("%q", b)
}

func (a *attempter) command(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", a.c.Command.Run)
	cmd.Env = append(os.Environ(), a.c.Command.Env...)
	out := &tail{max: MaxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	// Kill what the command started too, and stop waiting for output a background
	// process of it may hold open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("the command did not finish within %s", a.c.Timeout)
		} else {
			err = fmt.Errorf("the command was stopped: %w", ctx.Err())
		}
	} else if err != nil {
		err = fmt.Errorf("the command failed: %w", err)
	}
	return out.String(), err
}

// tail keeps the last max bytes written to it.
type tail struct {
	max int
	b   []byte
	cut bool
}

func (t *tail) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= t.max {
		t.b, t.cut = append(t.b[:0], p[len(p)-t.max:]...), true
		return n, nil
	}
	if over := len(t.b) + len(p) - t.max; over > 0 {
		t.b, t.cut = append(t.b[:0], t.b[over:]...), true
	}
	t.b = append(t.b, p...)
	return n, nil
}

// String is the output kept, trimmed, "…" first when its start was cut.
func (t *tail) String() string {
	s := strings.TrimSpace(string(t.b))
	if t.cut && s != "" {
		s = "…" + s
	}
	return s
}
