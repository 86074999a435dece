package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// serverProc is `lifeboat server` running as a child process (this test binary).
type serverProc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	addr   string
}

func startServerProc(t *testing.T, env []string, args ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"server"}, args...)...)
	cmd.Env = append(append(os.Environ(), "LIFEBOAT_TEST_EXEC=1"), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	testutil.StartProcess(t, cmd)
	p := &serverProc{cmd: cmd, stderr: &stderr}
	for i, a := range args {
		if a == "--listen" {
			p.addr = args[i+1]
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", stderr.String())
		}
	})
	return p
}

// adminClient waits for the server in dir to serve and write its admin token.
func adminClient(t *testing.T, dir, addr string) *api.Client {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		tok, err1 := os.ReadFile(filepath.Join(dir, "admin-token"))
		ca, err2 := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
		if err1 == nil && err2 == nil {
			c, err := api.NewClient(api.ClientConfig{Server: "https://" + addr, Token: strings.TrimSpace(string(tok)), CAPEM: ca})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Whoami(context.Background()); err == nil {
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not come up within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKill9MidWriteLeavesAConsistentDatabase registers source servers from several
// clients at once (each registration changes several tables in one transaction) and
// changes the replication template (which rewrites every server's row) while the server
// is killed with SIGKILL; restarted on the same data directory, every registration that
// was answered is there, and nothing half-written is: each server has its audit entry and
// counted its token use. Then SIGTERM stops it gracefully.
func TestKill9MidWriteLeavesAConsistentDatabase(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			dir := t.TempDir()
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testutil.FreePort(t)))
			args := []string{"--data", dir, "--listen", addr}
			dbURL := filepath.Join(dir, "lifeboat.db")
			var env []string
			if kind == db.Postgres {
				dbURL = dbtest.URL(t, kind)
				env = []string{envDB + "=" + dbURL} // it holds the password: not in argv
			}
			first := startServerProc(t, env, args...)
			admin := adminClient(t, dir, addr)
			ctx := context.Background()
			inst, err := admin.CreateToken(ctx, api.CreateTokenRequest{Kind: api.TokenInstall})
			if err != nil {
				t.Fatal(err)
			}
			key, _ := pki.NewKey()
			csr, _ := pki.NewCSR(key, "x")

			var mu sync.Mutex
			var answered []string
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					c, err := api.NewClient(api.ClientConfig{Server: "https://" + addr, Token: inst.Secret, Pin: pinOf(t, dir)})
					if err != nil {
						t.Error(err)
						return
					}
					for n := 0; n < 5000; n++ {
						select {
						case <-stop:
							return
						default:
						}
						m := fmt.Sprintf("w%d-%d", w, n)
						if _, err := c.RegisterSourceServer(ctx, api.RegisterSourceServerRequest{CSR: string(csr), MachineID: m, Hostname: m}); err != nil {
							continue // the server is being killed
						}
						mu.Lock()
						answered = append(answered, m)
						mu.Unlock()
					}
				})
			}
			wg.Go(func() { // template changes rewrite every server row in one transaction
				for bw := 1; bw < 100000; bw++ {
					select {
					case <-stop:
						return
					default:
					}
					s, err := admin.ReplicationTemplate(ctx)
					if err != nil {
						continue
					}
					s.BandwidthMbps = bw
					_, _ = admin.SetReplicationTemplate(ctx, s)
				}
			})
			// Let writes pile up, then kill in the middle of them.
			deadline := time.Now().Add(20 * time.Second)
			for {
				mu.Lock()
				n := len(answered)
				mu.Unlock()
				if n >= 100 || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_, _ = first.cmd.Process.Wait()
			close(stop)
			wg.Wait()
			mu.Lock()
			got := append([]string(nil), answered...)
			mu.Unlock()
			if len(got) == 0 {
				t.Fatal("no registration was answered before the kill")
			}

			second := startServerProc(t, env, args...)
			admin = adminClient(t, dir, addr)
			servers, err := admin.AllSourceServers(ctx, api.SourceServerFilter{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			have := map[string]bool{}
			for _, s := range servers {
				have[s.MachineID] = true
			}
			for _, m := range got {
				if !have[m] {
					t.Errorf("registration of %s was answered but is gone after the kill", m)
				}
			}
			f := api.AuditFilter{Action: "source-server.register", Limit: 1000}
			entries, err := api.AllPages(ctx, func(ctx context.Context, token string) ([]api.AuditEntry, string, error) {
				f.PageToken = token
				page, err := admin.Audit(ctx, f)
				return page.Items, page.NextPageToken, err
			})
			if err != nil {
				t.Fatal(err)
			}
			audited := len(entries)
			toks, err := admin.Tokens(ctx)
			if err != nil {
				t.Fatal(err)
			}
			uses := -1
			for _, tk := range toks.Items {
				if tk.ID == inst.Token.ID {
					uses = tk.Uses
				}
			}
			if audited != len(servers) || uses != len(servers) {
				t.Fatalf("%d servers, %d register audit entries, token used %d times: a transaction was half-applied",
					len(servers), audited, uses)
			}
			t.Logf("%d registrations answered before SIGKILL, %d servers after restart", len(got), len(servers))

			// SIGTERM: graceful stop with exit status 0.
			if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			state, err := second.cmd.Process.Wait()
			if err != nil || state.ExitCode() != 0 {
				t.Fatalf("after SIGTERM: %v, exit %d", err, state.ExitCode())
			}
			d, err := db.Open(ctx, dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := d.IntegrityCheck(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// pinOf returns the pin of the CA in dir.
func pinOf(t *testing.T, dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCertificatePEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return pki.Pin(c)
}
