package controlplane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// clock is a settable clock for the control plane under test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is a control plane serving on 127.0.0.1 over TLS, with a real database.
type env struct {
	t       *testing.T
	kind    db.Kind
	cp      *controlplane.ControlPlane
	clock   *clock
	dataDir string
	dbURL   string
	admin   *api.Client // admin of the system account
	ctx     context.Context
	// stopCurrent stops the running control plane.
	stopCurrent func()
	// agentTimeout is the control plane's AgentTimeout (default: longer than any test,
	// so moving the clock does not mark agents AGENT_NOT_SEEN unless a test wants it).
	agentTimeout time.Duration
	// configure, when set, changes the configuration at each (re)start (see startWith).
	configure func(*controlplane.Config)
}

// eachDB runs fn on a fresh control plane over SQLite and over PostgreSQL.
func eachDB(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, k := range dbtest.Kinds {
		t.Run(string(k), func(t *testing.T) { fn(t, start(t, k)) })
	}
}

func start(t *testing.T, kind db.Kind) *env {
	t.Helper()
	return startWith(t, kind, nil)
}

// startWith starts a control plane whose configuration configure changes.
func startWith(t *testing.T, kind db.Kind, configure func(*controlplane.Config)) *env {
	t.Helper()
	e := &env{t: t, kind: kind, clock: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}, dataDir: t.TempDir(),
		ctx: context.Background(), agentTimeout: 10000 * time.Hour, configure: configure}
	e.dbURL = dbtest.URL(t, kind)
	e.open(e.dbURL)
	return e
}

// open starts (or restarts) the control plane on e's data directory.
func (e *env) open(dbURL string) {
	t := e.t
	t.Helper()
	cfg := controlplane.Config{DataDir: e.dataDir, DBURL: dbURL, Listen: "127.0.0.1:0",
		Now: e.clock.Now, HeartbeatInterval: time.Hour, ReplicatorTimeout: 45 * time.Second, AgentTimeout: e.agentTimeout}
	if e.configure != nil {
		e.configure(&cfg)
	}
	cp, err := controlplane.Open(e.ctx, cfg)
	if err != nil {
		t.Fatalf("open control plane: %v", err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()
	// stop may be called twice (by the test, then by the cleanup while e.cp is still
	// this control plane): the second call must not wait for Serve again.
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
			cp.Close()
		})
	}
	t.Cleanup(func() {
		if e.cp == cp {
			stop()
		}
	})
	e.stopCurrent = stop
	e.cp = cp
	e.admin = e.userClient(api.RoleAdmin)
}

// restart stops the control plane and opens it again on the same data and database.
func (e *env) restart(dbURL string) {
	e.stopCurrent()
	e.cp = nil
	e.open(dbURL)
}

// token creates a token in the system account directly.
func (e *env) token(req api.CreateTokenRequest) string {
	e.t.Helper()
	resp, err := e.cp.CreateToken(e.ctx, e.cp.SystemAccountID(), req)
	if err != nil {
		e.t.Fatalf("create token: %v", err)
	}
	return resp.Secret
}

// client returns an API client with a bearer token that trusts the control plane's CA.
func (e *env) client(token string) *api.Client {
	e.t.Helper()
	c, err := api.NewClient(api.ClientConfig{Server: e.cp.URL(), Token: token, CAPEM: e.cp.CACertPEM()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Close)
	return c
}

func (e *env) userClient(role api.Role) *api.Client {
	return e.client(e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: role}))
}

func (e *env) installToken(scope string, uses int) string {
	return e.token(api.CreateTokenRequest{Kind: api.TokenInstall, Scope: scope, Uses: uses})
}

var (
	sharedKeyOnce sync.Once
	sharedCSR     []byte
	sharedKeyPEM  []byte
)

// csr returns a CSR and its key's PEM. One key serves all tests: the control plane does
// not care, and key generation would dominate the 300-registration quota test.
func csr(t testing.TB) ([]byte, []byte) {
	sharedKeyOnce.Do(func() {
		k, err := pki.NewKey()
		if err != nil {
			panic(err)
		}
		sharedCSR, _ = pki.NewCSR(k, "test")
		sharedKeyPEM, _ = pki.EncodeKeyPEM(k)
	})
	return sharedCSR, sharedKeyPEM
}

// certClient returns a client authenticating with certPEM (for the shared key).
func (e *env) certClient(certPEM string) *api.Client {
	e.t.Helper()
	_, keyPEM := csr(e.t)
	cert, err := tls.X509KeyPair([]byte(certPEM), keyPEM)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := api.NewClient(api.ClientConfig{Server: e.cp.URL(), CAPEM: e.cp.CACertPEM(), Certificate: &cert})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Close)
	return c
}

// agent registers a machine with a fresh install token and returns its client.
func (e *env) agent(machineID string) (*api.Client, api.RegisterSourceServerResponse) {
	e.t.Helper()
	resp, err := e.register(e.installToken(api.ScopeSourceServer, 1), machineID, false)
	if err != nil {
		e.t.Fatalf("register %s: %v", machineID, err)
	}
	return e.certClient(resp.Certificate), resp
}

func (e *env) register(token, machineID string, replace bool) (api.RegisterSourceServerResponse, error) {
	csrPEM, _ := csr(e.t)
	c := e.client(token)
	return c.RegisterSourceServer(e.ctx, api.RegisterSourceServerRequest{CSR: string(csrPEM), MachineID: machineID,
		Hostname: "host-" + machineID, OS: "linux", Arch: "amd64", CPUs: 2, MemoryBytes: 2 << 30, Replace: replace,
		Volumes: []api.Volume{{Name: "vda", Path: "/dev/vda", SizeBytes: 10 << 30, MajorMinor: "253:0", MountPoints: []string{"/"}}}})
}

// replicator registers a replicator and returns its client.
func (e *env) replicator(name, site string) (*api.Client, api.RegisterReplicatorResponse) {
	e.t.Helper()
	csrPEM, _ := csr(e.t)
	c := e.client(e.installToken(api.ScopeReplicator, 1))
	resp, err := c.RegisterReplicator(e.ctx, api.RegisterReplicatorRequest{CSR: string(csrPEM), Name: name, Site: site,
		Address: "127.0.0.1:1500", Version: "test"})
	if err != nil {
		e.t.Fatalf("register replicator %s: %v", name, err)
	}
	return e.certClient(resp.Certificate), resp
}

// wantAPIError checks err is an API error with the status and code.
func wantAPIError(t *testing.T, err error, status int, code string) *api.Error {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want API error %d %s", err, status, code)
	}
	if ae.Status != status || (code != "" && ae.Code != code) {
		t.Fatalf("got %d %s (%s), want %d %s", ae.Status, ae.Code, ae.Message, status, code)
	}
	return ae
}

// httpClient returns a plain HTTP client trusting the CA, with an optional client certificate.
func (e *env) httpClient(certPEM string) *http.Client {
	tc := &tls.Config{RootCAs: e.cp.CAPool(), MinVersion: tls.VersionTLS13}
	if certPEM != "" {
		_, keyPEM := csr(e.t)
		cert, err := tls.X509KeyPair([]byte(certPEM), keyPEM)
		if err != nil {
			e.t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{TLSClientConfig: tc}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// status sends a request with an optional bearer token and returns the answer's status.
func (e *env) status(c *http.Client, method, path, token, body string) int {
	e.t.Helper()
	req, err := http.NewRequest(method, e.cp.URL()+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func parseLeaf(c tls.Certificate) (*x509.Certificate, error) {
	return x509.ParseCertificate(c.Certificate[0])
}
