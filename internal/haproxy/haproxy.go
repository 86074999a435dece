// Package haproxy changes HAProxy backend servers for recovery plans through HAProxy's
// runtime API (the socket of a "stats socket ... level admin" line): it reads a
// server's address and state, points the server at a recovered machine, and puts it
// in or out of maintenance. Each command goes on a connection of its own (the
// socket's non-interactive mode), with a deadline and a bounded answer, and backend
// and server names are checked so that nothing but the one intended command can
// reach HAProxy.
package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

const (
	defaultTimeout = 5 * time.Second
	maxAnswer      = 1 << 20 // bytes; "show servers state" of a large configuration fits
)

// Client talks to one HAProxy runtime API socket.
type Client struct {
	Network string        // "unix" (Address is the socket's path) or "tcp" (host:port)
	Address string        //
	Timeout time.Duration // bounds each command; 0: 5s
}

// Server is a backend server as HAProxy's "show servers state" reports it.
type Server struct {
	Backend     string
	Name        string
	Addr        string // the address HAProxy sends traffic to
	Port        int
	Admin       string // "ready", "drain" or "maint" (the administrative state)
	Operational string // "up", "down", "starting" or "stopping" (the health)
}

// Ping checks that the socket answers "show info" as HAProxy does, and that it is at
// level admin, which changing servers needs (for dry runs).
func (c *Client) Ping(ctx context.Context) error {
	out, err := c.command(ctx, "show info")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(out, "Name: ") && !strings.Contains(out, "\nName: ") {
		return fmt.Errorf("%s answered \"show info\" with %s: is it HAProxy's stats socket?", c, quote(out))
	}
	level, err := c.command(ctx, "show cli level")
	if err != nil {
		return err
	}
	if l := strings.TrimSpace(level); l == "operator" || l == "user" {
		return fmt.Errorf("%s is at level %s: changing servers needs \"level admin\" on its \"stats socket\" line", c, l)
	}
	return nil
}

// Server reads a backend server's address and states.
func (c *Client) Server(ctx context.Context, backend, name string) (Server, error) {
	if err := checkNames(backend, name); err != nil {
		return Server{}, err
	}
	out, err := c.command(ctx, "show servers state "+backend)
	if err != nil {
		return Server{}, err
	}
	rows, err := parseServersState(out)
	if err != nil {
		return Server{}, fmt.Errorf("%s, asked for the servers of backend %s: %w", c, backend, err)
	}
	var names []string
	for _, row := range rows {
		if row["srv_name"] == name {
			return serverOf(row)
		}
		names = append(names, row["srv_name"])
	}
	return Server{}, fmt.Errorf("HAProxy's backend %s has no server %s (it has: %s)", backend, name, strings.Join(names, ", "))
}

// SetAddr points a backend server at addr (an IPv4 or IPv6 address) and port.
func (c *Client) SetAddr(ctx context.Context, backend, name, addr string, port int) error {
	if err := checkNames(backend, name); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Zone() != "" {
		return fmt.Errorf("%q is not an IP address: HAProxy's servers are set to addresses, not names", addr)
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d is not a TCP port (1 to 65535)", port)
	}
	cmd := fmt.Sprintf("set server %s/%s addr %s port %d", backend, name, ip.Unmap(), port)
	out, err := c.command(ctx, cmd)
	if err != nil {
		return err
	}
	if !addrChanged(out) {
		return fmt.Errorf("HAProxy did not set server %s/%s to %s port %d: it answered %s", backend, name, ip.Unmap(), port, quote(out))
	}
	return nil
}

// SetState sets a backend server's administrative state: "ready" (takes traffic),
// "drain" (no new traffic but persistent sessions; still checked) or "maint" (no
// traffic, no checks).
func (c *Client) SetState(ctx context.Context, backend, name, state string) error {
	if err := checkNames(backend, name); err != nil {
		return err
	}
	if state != "ready" && state != "drain" && state != "maint" {
		return fmt.Errorf("%q is not a server state HAProxy can be set to (ready, drain or maint)", state)
	}
	out, err := c.command(ctx, fmt.Sprintf("set server %s/%s state %s", backend, name, state))
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != "" { // HAProxy says nothing when it did it
		return fmt.Errorf("HAProxy did not set server %s/%s to %s: it answered %s", backend, name, state, quote(out))
	}
	return nil
}

// String names the socket in messages.
func (c *Client) String() string {
	return fmt.Sprintf("the HAProxy runtime API at %s:%s", c.Network, c.Address)
}

// command sends one command on a connection of its own and returns the whole answer
// (HAProxy closes the connection after it, in non-interactive mode).
func (c *Client) command(ctx context.Context, cmd string) (string, error) {
	if c.Network != "unix" && c.Network != "tcp" {
		return "", fmt.Errorf("HAProxy runtime API: network %q: use unix (a socket's path) or tcp (host:port)", c.Network)
	}
	limit := c.Timeout
	if limit <= 0 {
		limit = defaultTimeout
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < limit {
		limit = time.Until(d)
	}
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(cctx, c.Network, c.Address)
	if err != nil {
		return "", c.transportError(ctx, cctx, cmd, limit, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(cctx, func() { conn.Close() }) // a cancelled ctx stops a read at once
	defer stop()
	if deadline, ok := cctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return "", fmt.Errorf("%s: %w", c, err)
		}
	}
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", c.transportError(ctx, cctx, cmd, limit, err)
	}
	out, err := io.ReadAll(io.LimitReader(conn, maxAnswer+1))
	if err != nil {
		return "", c.transportError(ctx, cctx, cmd, limit, err)
	}
	if len(out) > maxAnswer {
		return "", fmt.Errorf("%s answered %q with more than %d bytes", c, cmd, maxAnswer)
	}
	return string(out), nil
}

// transportError says in an operator's words why a command got no answer. cctx is
// ctx bounded by limit, the client's timeout or ctx's deadline if that came first.
func (c *Client) transportError(ctx, cctx context.Context, cmd string, limit time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("%s, %q: %w", c, cmd, ctx.Err())
	}
	var ne net.Error
	if cctx.Err() != nil || errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%s did not answer %q within %s", c, cmd, limit.Round(time.Millisecond))
	}
	return fmt.Errorf("%s could not be reached (is HAProxy running, with this stats socket?): %w", c, err)
}

// checkNames refuses backend and server names HAProxy would not accept in its
// configuration: they go into a command line, where a space, a ';' or a newline
// would start another argument or command.
func checkNames(backend, server string) error {
	for _, n := range [][2]string{{"backend", backend}, {"server", server}} {
		if n[1] == "" {
			return fmt.Errorf("no HAProxy %s name is given", n[0])
		}
		for _, r := range n[1] {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)
			if !ok {
				return fmt.Errorf("HAProxy %s name %q has a character HAProxy does not allow in names (letters, digits, '-', '_', '.', ':')", n[0], n[1])
			}
		}
	}
	return nil
}

// addrChanged reports whether an answer to "set server ... addr" says it was done:
// each part says the address or port changed or needed no change.
func addrChanged(out string) bool {
	s := strings.TrimSpace(out)
	if i := strings.LastIndex(s, " by '"); i >= 0 && strings.HasSuffix(s, "'") {
		s = s[:i] // " by 'stats socket command'": who did it
	}
	if s == "" {
		return false
	}
	for _, part := range strings.Split(s, ", ") {
		switch {
		case strings.HasPrefix(part, "IP changed from '"), strings.HasPrefix(part, "port changed from '"):
		case part == "no need to change the addr", part == "no need to change the port", part == "nothing changed":
		default:
			return false
		}
	}
	return true
}

// parseServersState reads the answer to "show servers state": a format version line,
// a header line naming the fields ("# be_id be_name ..."), then one line per server.
// Each server is a map from field name to value.
func parseServersState(out string) ([]map[string]string, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if _, err := strconv.Atoi(strings.TrimSpace(lines[0])); err != nil || len(lines) < 2 || !strings.HasPrefix(lines[1], "#") {
		return nil, fmt.Errorf("HAProxy answered %s", quote(out))
	}
	header := strings.Fields(strings.TrimPrefix(lines[1], "#"))
	var rows []map[string]string
	for _, line := range lines[2:] {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Fields(line)
		row := make(map[string]string, len(header))
		for i, name := range header {
			if i < len(fields) {
				row[name] = fields[i]
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// serverOf makes a Server of a row of "show servers state".
func serverOf(row map[string]string) (Server, error) {
	s := Server{Backend: row["be_name"], Name: row["srv_name"], Addr: row["srv_addr"]}
	if p, ok := row["srv_port"]; ok {
		port, err := strconv.Atoi(p)
		if err != nil {
			return Server{}, fmt.Errorf("HAProxy's server %s/%s has port %q", s.Backend, s.Name, p)
		}
		s.Port = port
	}
	admin, err1 := strconv.ParseUint(row["srv_admin_state"], 10, 32)
	op, err2 := strconv.Atoi(row["srv_op_state"])
	if err1 != nil || err2 != nil {
		return Server{}, fmt.Errorf("HAProxy's server %s/%s has states %q and %q, not numbers", s.Backend, s.Name, row["srv_admin_state"], row["srv_op_state"])
	}
	// srv_admin_state is a mask: forced, inherited or resolution maintenance (0x01,
	// 0x02, 0x20); forced or inherited drain (0x08, 0x10). 0x04 only remembers that
	// the configuration said "disabled": a server of such a line that was set ready
	// since keeps it, and takes traffic (HAProxy 2.6 shows admin state 4, op state 2).
	switch {
	case admin&0x23 != 0:
		s.Admin = "maint"
	case admin&0x18 != 0:
		s.Admin = "drain"
	default:
		s.Admin = "ready"
	}
	switch op {
	case 0:
		s.Operational = "down"
	case 1:
		s.Operational = "starting"
	case 2:
		s.Operational = "up"
	case 3:
		s.Operational = "stopping"
	default:
		s.Operational = "unknown (" + row["srv_op_state"] + ")"
	}
	return s, nil
}

// quote shows an answer of HAProxy in a message, shortened.
func quote(out string) string {
	s := strings.TrimSpace(out)
	if s == "" {
		return "nothing"
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return strconv.Quote(s)
}
