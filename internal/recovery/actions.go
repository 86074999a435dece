package recovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/healthcheck"
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

// actionCheck is the health check that runs a post-launch action: a script runs once
// within its timeout; a tcp-check or http-check is tried every half second until it
// passes or its timeout passes.
func actionCheck(a api.PostLaunchAction, env map[string]string) (healthcheck.Check, error) {
	timeout := time.Duration(a.TimeoutSeconds) * time.Second
	c := healthcheck.Check{Name: a.Name, Interval: 500 * time.Millisecond, Attempts: -1, Deadline: timeout}
	switch a.Type {
	case "script":
		vars := make([]string, 0, len(env))
		for k, v := range env {
			vars = append(vars, k+"="+v)
		}
		c.Command = &healthcheck.Command{Run: a.Command, Env: vars}
		c.Timeout, c.Attempts, c.Deadline = timeout, 1, 0
	case "tcp-check":
		c.TCP = &healthcheck.TCP{Address: healthcheck.Expand(a.Address, env)}
		c.Timeout = 3 * time.Second
	case "http-check":
		c.HTTP = &healthcheck.HTTP{URL: healthcheck.Expand(a.URL, env)}
		c.Timeout = 5 * time.Second
	default:
		return c, fmt.Errorf("unknown action type %q", a.Type)
	}
	return c, nil
}

// runAction runs one post-launch action within its timeout and returns its output
// (scripts) or what answered (checks).
func runAction(ctx context.Context, a api.PostLaunchAction, env map[string]string) (string, error) {
	c, err := actionCheck(a, env)
	if err != nil {
		return "", err
	}
	res := healthcheck.Run(ctx, c, nil)
	switch {
	case !res.Passed:
		return res.Output, errors.New(res.Message)
	case c.Command != nil:
		return res.Output, nil
	}
	return res.Message, nil
}
