// Command apibench measures how fast the control plane lists source servers through its
// API. It starts a control plane in this process on a fresh database (SQLite in a
// temporary directory, or a new schema in the PostgreSQL server given with -postgres),
// records -servers source servers with the rows a replicating server has (through the
// database layer: registering 10,000 agents over the API would time the CA, not the
// list), then times, over -runs runs after two warm-up runs:
//
//   - the API itself: HTTPS GETs until the whole JSON body is received, in one call of
//     10,000 and paged 1,000 per call as the CLI pages;
//   - the Go client (what the CLI and console use) decoding every item, paged 1,000, in
//     one call, and paged at the API's default of 100;
//   - the command `lifeboat source-servers list` run in this process, table output
//     discarded;
//   - the web console's source servers page (signed in as a viewer): its first page,
//     a page far down the list, a hostname search, a state filter and a tag filter,
//     each timed until the whole HTML page is received (goal: under 300 ms).
//
// Usage: go run ./bench/api [-servers 10000] [-runs 20] [-postgres postgres://…]
package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/cli"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

func main() {
	n := flag.Int("servers", 10000, "source servers to record")
	runs := flag.Int("runs", 20, "timed runs per case (after 2 warm-up runs)")
	pg := flag.String("postgres", "", "PostgreSQL server URL; a schema is created there for the run and dropped after")
	flag.Parse()
	if err := run(*n, *runs, *pg); err != nil {
		log.Fatal(err)
	}
}

func run(n, runs int, pgURL string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "lifeboat-apibench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	dbURL := ""
	if pgURL != "" {
		var drop func()
		if dbURL, drop, err = pgSchema(ctx, pgURL); err != nil {
			return err
		}
		defer drop()
	}
	cp, err := controlplane.Open(ctx, controlplane.Config{DataDir: dir, DBURL: dbURL, Listen: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer cp.Close()
	if err := cp.Listen(); err != nil {
		return err
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cp.Serve(sctx) }()
	defer func() { stop(); <-done }()

	start := time.Now()
	if err := fill(ctx, cp, n); err != nil {
		return err
	}
	fillTime := time.Since(start)
	tok, err := cp.CreateToken(ctx, cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
	if err != nil {
		return err
	}
	c, err := api.NewClient(api.ClientConfig{Server: cp.URL(), Token: tok.Secret, CAPEM: cp.CACertPEM(), Timeout: time.Minute})
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cp.CAPool(), MinVersion: tls.VersionTLS13}}}
	caPath := filepath.Join(dir, "pki", "ca.crt")
	kind := string(cp.DB().Kind())

	fmt.Printf("%s: %d source servers recorded in %s; %d timed runs per case; %s/%s, %d CPUs, %s\n\n",
		kind, n, fillTime.Round(time.Millisecond), runs, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	fmt.Printf("| database | what is timed | calls | JSON | p50 | p95 | max |\n|---|---|---|---|---|---|---|\n")
	cases := []struct {
		name string
		fn   func() (count, calls, bytes int, err error)
	}{
		{"API, one call (limit=10000), body received", func() (int, int, int, error) { return rawList(ctx, hc, cp.URL(), tok.Secret, n) }},
		{"API, paged 1,000 per call as the CLI pages, bodies received", func() (int, int, int, error) { return rawList(ctx, hc, cp.URL(), tok.Secret, 1000) }},
		{"Go client, paged 1,000, items decoded", func() (int, int, int, error) { return clientList(ctx, c, 1000) }},
		{"Go client, one call, items decoded", func() (int, int, int, error) { return clientList(ctx, c, n) }},
		{"Go client, paged 100 (API default), items decoded", func() (int, int, int, error) { return clientList(ctx, c, 100) }},
		{"`lifeboat source-servers list` (table), in process", func() (int, int, int, error) {
			return cliList(ctx, cp.URL(), tok.Secret, caPath, n)
		}},
	}
	for _, cs := range cases {
		if err := timeCase(kind, cs.name, runs, n, cs.fn); err != nil {
			return err
		}
	}
	return consoleCases(ctx, cp, hc, c, kind, runs)
}

// timeCase runs fn two times, then runs times, and prints a row of the table; fn must
// count want servers.
func timeCase(kind, name string, runs, want int, fn func() (count, calls, bytes int, err error)) error {
	var times []time.Duration
	var calls, bytes int
	for i := 0; i < runs+2; i++ {
		t0 := time.Now()
		got, k, b, err := fn()
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if got != want {
			return fmt.Errorf("%s: listed %d servers, want %d", name, got, want)
		}
		if i >= 2 {
			times = append(times, d)
		}
		calls, bytes = k, b
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	size := "-"
	if bytes >= 1e6 {
		size = fmt.Sprintf("%.1f MB", float64(bytes)/1e6)
	} else if bytes > 0 {
		size = fmt.Sprintf("%.0f kB", float64(bytes)/1e3)
	}
	fmt.Printf("| %s | %s | %d | %s | %s | %s | %s |\n", kind, name, calls, size,
		ms(pct(times, 50)), ms(pct(times, 95)), ms(times[len(times)-1]))
	return nil
}

// rawList GETs every page with plain HTTPS and reads each body whole; it finds the next
// page's token without decoding the items.
func rawList(ctx context.Context, hc *http.Client, server, token string, size int) (count, calls, bytes int, err error) {
	pageToken := ""
	for {
		q := url.Values{"limit": {strconv.Itoa(size)}}
		if pageToken != "" {
			q.Set("page_token", pageToken)
		}
		req, err := http.NewRequestWithContext(ctx, "GET", server+"/api/v1/source-servers?"+q.Encode(), nil)
		if err != nil {
			return 0, 0, 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, 0, 0, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			return 0, 0, 0, fmt.Errorf("status %d: %v %.200s", resp.StatusCode, err, body)
		}
		calls++
		bytes += len(body)
		count += strings.Count(string(body), `"accountId"`)
		pageToken = ""
		if i := strings.LastIndex(string(body), `"nextPageToken":"`); i >= 0 {
			rest := string(body[i+len(`"nextPageToken":"`):])
			pageToken = rest[:strings.IndexByte(rest, '"')]
		}
		if pageToken == "" {
			return count, calls, bytes, nil
		}
	}
}

// clientList lists every server with the Go client, decoding the items.
func clientList(ctx context.Context, c *api.Client, size int) (count, calls, bytes int, err error) {
	f := api.SourceServerFilter{Limit: size}
	_, err = api.EachPage(ctx, "", func(ctx context.Context, token string) ([]api.SourceServer, string, error) {
		calls++
		f.PageToken = token
		page, err := c.ListSourceServers(ctx, f)
		return page.Items, page.NextPageToken, err
	}, func(api.SourceServer) (bool, error) {
		count++
		return false, nil
	})
	if err != nil {
		return 0, 0, 0, err
	}
	return count, calls, 0, nil
}

// cliList runs `lifeboat source-servers list` in this process with the table discarded.
func cliList(ctx context.Context, server, token, caPath string, n int) (count, calls, bytes int, err error) {
	var errb strings.Builder
	lines := &lineCounter{}
	code := cli.Main(ctx, []string{"--server", server, "--token", token, "--ca-cert", caPath, "source-servers", "list"},
		strings.NewReader(""), lines, &errb)
	if code != 0 {
		return 0, 0, 0, fmt.Errorf("exit %d: %s", code, errb.String())
	}
	return lines.n - 1, (n + 999) / 1000, 0, nil // minus the header line
}

type lineCounter struct{ n int }

func (l *lineCounter) Write(p []byte) (int, error) {
	l.n += strings.Count(string(p), "\n")
	return len(p), nil
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i, 1)-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// fill records n source servers in the system account, 1,000 per transaction, with the
// state a replicating server has: two volumes, a consistency point, lag and throughput.
func fill(ctx context.Context, cp *controlplane.ControlPlane, n int) error {
	acct := cp.SystemAccountID()
	now := time.Now().UTC()
	for base := 0; base < n; base += 1000 {
		err := cp.DB().Update(ctx, func(tx *db.Tx) error {
			for i := base; i < min(base+1000, n); i++ {
				lag, freeze := 0.8, 12.5
				st := api.NewReplicationState(now)
				st.DataReplicationState = api.StateContinuous
				st.InitiationSteps = []api.InitiationStep{{Name: "REGISTER_AGENT", Status: api.StepSucceeded},
					{Name: "CONNECT_AGENT_TO_REPLICATION_SERVER", Status: api.StepSucceeded}, {Name: "START_DATA_TRANSFER", Status: api.StepSucceeded}}
				st.LagSeconds, st.LastFreezeMs, st.Tracker = &lag, &freeze, "ebpf"
				st.BacklogBytes, st.ThroughputBytesPerSecond, st.ReplicatedBytes, st.TotalBytes = 65536, 1<<20, 40<<30, 40<<30
				if i%10 != 0 {
					st.LastConsistencyPoint = &api.ConsistencyPointInfo{Time: now, Level: consistency.Filesystem, SnapshotID: api.NewID(api.PrefixSnapshot)}
				}
				if i%100 == 0 { // 1% paused: what the console's state filter finds
					st.DataReplicationState = api.StatePaused
				}
				st.ReadyForRecovery = st.Ready()
				host := fmt.Sprintf("web-%05d.prod.example.com", i)
				tags := map[string]string{"tier": []string{"web", "db", "cache"}[i%3], "rack": fmt.Sprintf("r%02d", i%20)}
				s := db.SourceServer{SourceServer: api.SourceServer{ID: api.NewID(api.PrefixSourceServer), AccountID: acct,
					MachineID: fmt.Sprintf("%032x", i), Hostname: host, SiteID: api.DefaultSite, AgentVersion: "0.1.0", OS: "linux",
					Arch: "amd64", CPUs: 4, MemoryBytes: 8 << 30, Replication: st, CertificateExpiresAt: now.AddDate(1, 0, 0),
					CreatedAt: now, UpdatedAt: now, LastSeenAt: &now, Tags: tags,
					Volumes: []api.Volume{
						{Name: "vda", Path: "/dev/vda", SizeBytes: 40 << 30, MajorMinor: "253:0", MountPoints: []string{"/", "/boot"}},
						{Name: "vdb", Path: "/dev/vdb", SizeBytes: 200 << 30, MajorMinor: "253:16", MountPoints: []string{"/var/lib/data"}},
					}}, CertSerial: fmt.Sprintf("%x", i)}
				if err := tx.CreateSourceServer(s); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record source servers: %w", err)
		}
	}
	return nil
}

// pgSchema creates a schema for this run and returns a URL that uses it.
func pgSchema(ctx context.Context, base string) (string, func(), error) {
	admin, err := sql.Open("pgx", base)
	if err != nil {
		return "", nil, err
	}
	schema := "apibench_" + api.NewID("")
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		return "", nil, fmt.Errorf("create a schema in %s: %w", base, err)
	}
	drop := func() {
		_, _ = admin.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	}
	u, err := url.Parse(base)
	if err != nil {
		drop()
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), drop, nil
}
