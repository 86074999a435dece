package cli

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// TestImpostorControlPlaneIsRefused: someone who registered a replicator (with an
// ordinary replicator install token) serves its certificate — chain and all — as if it
// were the control plane. `agent install`, holding an install token that pins the real
// control plane, and a registered agent both refuse it during the TLS handshake: the
// impostor never sees a request, so never the token (docs/security.md).
func TestImpostorControlPlaneIsRefused(t *testing.T) {
	e := startCLIEnv(t)
	ctx := context.Background()
	repTok := strings.TrimSpace(e.must("tokens", "create", "--kind", "install", "--scope", "replicator"))
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, _ := pki.NewCSR(key, "impostor")
	keyPEM, _ := pki.EncodeKeyPEM(key)
	reg, err := api.NewClient(api.ClientConfig{Server: e.cp.URL(), Token: repTok})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := reg.RegisterReplicator(ctx, api.RegisterReplicatorRequest{CSR: string(csrPEM), Name: "impostor", Site: api.DefaultSite,
		Address: "127.0.0.1:1500"})
	if err != nil {
		t.Fatal(err)
	}
	// The replicators' CA is public (every agent holds it): the impostor sends it along.
	agentTok := strings.TrimSpace(e.must("tokens", "create", "--kind", "install"))
	agentCfg := filepath.Join(e.dir, "real-agent.yaml")
	if _, errs, code := runCLI("agent", "install", "--server", e.cp.URL(), "--token", agentTok, "--config", agentCfg,
		"--no-service", "--machine-id", "real"); code != 0 {
		t.Fatalf("agent install: %s", errs)
	}
	conf, err := api.LoadAgentConfig(agentCfg)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(rep.Certificate+conf.CACertificates), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int64
	fake := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		t.Errorf("the impostor received %s %s with Authorization %q", r.Method, r.URL.Path, r.Header.Get("Authorization"))
		http.Error(w, "{}", http.StatusTeapot)
	}))
	fake.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	fake.StartTLS()
	defer fake.Close()

	install := strings.TrimSpace(e.must("tokens", "create", "--kind", "install"))
	_, errs, code := runCLI("agent", "install", "--server", fake.URL, "--token", install, "--config",
		filepath.Join(e.dir, "a.yaml"), "--no-service", "--machine-id", "victim")
	if code == 0 || !strings.Contains(errs, "pin") {
		t.Fatalf("agent install against the impostor: exit %d, %q", code, errs)
	}
	// The registered agent, pointed at the impostor, refuses it the same way.
	conf.Server = fake.URL
	agent, err := conf.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.ReplicationConfig(ctx, conf.SourceServerID); err == nil {
		t.Fatal("the agent accepted the impostor")
	}
	if n := requests.Load(); n != 0 {
		t.Fatalf("the impostor received %d requests", n)
	}
}
