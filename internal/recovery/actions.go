package recovery

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
)

// actionEnv is the environment of post-launch actions: scripts get it, and checks'
// addresses and URLs may name its variables as ${NAME}. LIFEBOAT_INSTANCE_ADDRESS is
// where the instance is reached; LIFEBOAT_PORT_<PROTO>_<GUESTPORT> is the host:port a
// guest port is forwarded from.
func actionEnv(job db.Job, st *launchState, l launch.Launched) map[string]string {
	env := map[string]string{
		"LIFEBOAT_JOB_ID":               job.ID,
		"LIFEBOAT_RECOVERY_INSTANCE_ID": st.row.RecoveryInstanceID,
		"LIFEBOAT_SOURCE_SERVER_ID":     st.server.ID,
		"LIFEBOAT_SOURCE_HOSTNAME":      st.server.Hostname,
		"LIFEBOAT_RECOVERY_SNAPSHOT_ID": st.pit.ID,
		"LIFEBOAT_DRILL":                strconv.FormatBool(job.IsDrill),
		"LIFEBOAT_PROVIDER":             st.provider.Name(),
		"LIFEBOAT_INSTANCE_ADDRESS":     l.Address,
	}
	for _, p := range l.Ports {
		env[fmt.Sprintf("LIFEBOAT_PORT_%s_%d", strings.ToUpper(p.Protocol), p.GuestPort)] = net.JoinHostPort(p.HostAddr, strconv.Itoa(p.HostPort))
	}
	return env
}

// expand replaces ${NAME} with the action environment's values.
func expand(s string, env map[string]string) string {
	return os.Expand(s, func(k string) string { return env[k] })
}

// maxActionOutput bounds what a script's output adds to the job's log.
const maxActionOutput = 4096

// runAction runs one post-launch action within its timeout and returns its output
// (scripts) or what answered (checks).
func runAction(ctx context.Context, a api.PostLaunchAction, env map[string]string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(a.TimeoutSeconds)*time.Second)
	defer cancel()
	switch a.Type {
	case "script":
		cmd := exec.CommandContext(ctx, "/bin/sh", "-c", a.Command)
		cmd.Env = os.Environ()
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = 5 * time.Second
		err := cmd.Run()
		text := strings.TrimSpace(out.String())
		if len(text) > maxActionOutput {
			text = "…" + text[len(text)-maxActionOutput:]
		}
		if ctx.Err() != nil {
			return text, fmt.Errorf("the script did not finish within %d s", a.TimeoutSeconds)
		}
		return text, err
	case "tcp-check":
		addr := expand(a.Address, env)
		return retry(ctx, a.TimeoutSeconds, func() (string, error) {
			c, err := (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return "", err
			}
			c.Close()
			return addr + " accepts connections", nil
		})
	case "http-check":
		u := expand(a.URL, env)
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			// A recovered server's certificate names the source, not where it runs now.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}} //nolint:gosec // health check only
		return retry(ctx, a.TimeoutSeconds, func() (string, error) {
			req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
			if err != nil {
				return "", err
			}
			resp, err := client.Do(req)
			if err != nil {
				return "", err
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if resp.StatusCode >= 400 {
				return "", fmt.Errorf("%s answered %s", u, resp.Status)
			}
			return fmt.Sprintf("%s answered %s", u, resp.Status), nil
		})
	}
	return "", fmt.Errorf("unknown action type %q", a.Type)
}

// retry calls check until it succeeds or ctx ends, and says the last failure.
func retry(ctx context.Context, timeout int, check func() (string, error)) (string, error) {
	var last error
	for {
		out, err := check()
		if err == nil {
			return out, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no success within %d s; last: %w", timeout, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
