package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// ClientConfig says where the control plane is and how to trust and authenticate to it.
type ClientConfig struct {
	Server string // https://host:port
	Token  string // API token (lbt_…) or install token (lbi_…), sent as a bearer token

	// Trust: CAPEM trusts exactly these CA certificates (and refuses certificates of
	// Lifeboat's other roles); Pin trusts a server whose chain has a certificate with
	// this pin and the control plane's identity (pki.VerifyPinned); with neither, an
	// install token's pin is used, else the system's roots.
	CAPEM []byte
	Pin   string

	// Client certificate of an agent or replicator. GetClientCertificate, when set, is
	// asked at each handshake (for certificates that are renewed while running).
	Certificate          *tls.Certificate
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)

	Timeout   time.Duration // per request, default 30s (event streams have none)
	UserAgent string

	// FailbackClient, when set, is a failback client's "ID SECRET", sent in
	// FailbackClientHeader.
	FailbackClient string

	// Transport, when set, carries the requests instead of TLS connections to Server
	// (whose URL then only names the paths): the console calls the control plane's
	// own handler in-process with it. Trust and client certificates are then unused.
	Transport http.RoundTripper
}

// Client calls the control plane's API. It is safe for concurrent use.
type Client struct {
	base      *url.URL
	token     string
	hc        *http.Client // requests with a timeout
	stream    *http.Client // event streams
	userAgent string
	// failbackClient is a failback client's credentials (ClientConfig.FailbackClient).
	failbackClient string
}

// NewClient returns a client for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(cfg.Server, "/"))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("the control plane URL %q is not valid: use https://host:port", cfg.Server)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("the control plane URL %q must start with https:// (the API is served over TLS only)", cfg.Server)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS13}
	pin := cfg.Pin
	if pin == "" && len(cfg.CAPEM) == 0 && strings.HasPrefix(cfg.Token, pki.InstallTokenPrefix) {
		if t, err := pki.ParseToken(cfg.Token); err == nil {
			pin = t.Pin
		}
	}
	switch {
	case len(cfg.CAPEM) > 0:
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, errors.New("the CA bundle holds no PEM certificate")
		}
		tc.RootCAs = pool
		// A Lifeboat certificate of another role (a replicator's, say) never passes
		// for the control plane, even if the bundle holds its CA.
		tc.VerifyConnection = pki.RefuseOtherRoles
	case pin != "":
		tc = pki.PinnedTLSConfig(pin)
	}
	if cfg.Certificate != nil {
		tc.Certificates = []tls.Certificate{*cfg.Certificate}
	}
	tc.GetClientCertificate = cfg.GetClientCertificate
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ua := cfg.UserAgent
	if ua == "" {
		ua = "lifeboat"
	}
	var rt http.RoundTripper = transport
	if cfg.Transport != nil {
		rt = cfg.Transport
	}
	return &Client{base: u, token: cfg.Token, hc: &http.Client{Transport: rt, Timeout: timeout},
		stream: &http.Client{Transport: rt}, userAgent: ua, failbackClient: cfg.FailbackClient}, nil
}

// Server returns the control plane URL.
func (c *Client) Server() string { return c.base.String() }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	u := *c.base
	u.Path = c.base.Path + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.failbackClient != "" {
		req.Header.Set(FailbackClientHeader, c.failbackClient)
	}
	return req, nil
}

// do sends a request and decodes a 2xx JSON answer into out (when not nil); any other
// answer becomes an *Error.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("the control plane's answer to %s %s could not be read: %w", method, path, err)
	}
	return nil
}

// transportError words a failure to talk to the control plane for an operator.
func (c *Client) transportError(err error) error {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	switch {
	case errors.Is(err, pki.ErrPinMismatch):
		return fmt.Errorf("the control plane at %s is not the one that made the install token (its CA does not match the token's pin): check --server, or create a new token there", c.base.Host)
	case errors.As(err, &ua):
		return fmt.Errorf("the certificate of %s is not signed by a CA this client trusts: pass the control plane's CA with --ca-cert (DATA/pki/ca.crt) (%w)", c.base.Host, err)
	case errors.As(err, &hn):
		return fmt.Errorf("the certificate of %s does not name this host: restart the server with --hostname %s, or use a name it has (%w)", c.base.Host, c.base.Hostname(), err)
	case errors.Is(err, context.Canceled):
		return err
	}
	return fmt.Errorf("cannot reach the control plane at %s: %w (is lifeboat server running? check --server)", c.base, err)
}

func decodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body ErrorBody
	if json.Unmarshal(data, &body) == nil && body.Error.Message != "" {
		return &Error{Status: resp.StatusCode, Code: body.Error.Code, Message: body.Error.Message}
	}
	return &Error{Status: resp.StatusCode, Code: CodeInternal,
		Message: fmt.Sprintf("the control plane answered %s without an error message", resp.Status)}
}

func esc(id string) string { return url.PathEscape(id) }

// Health reports the control plane's health (no credentials needed).
func (c *Client) Health(ctx context.Context) (Health, error) {
	var out Health
	return out, c.do(ctx, "GET", "/api/v1/health", nil, nil, &out)
}

// CA returns the CA certificate (PEM) that signs agents' and replicators' certificates.
// Fetched over a connection the client trusts, it is as trustworthy as that connection.
func (c *Client) CA(ctx context.Context) (string, error) {
	var out CAResponse
	return out.CACertificates, c.do(ctx, "GET", "/api/v1/ca", nil, nil, &out)
}

// Whoami says who the client is to the control plane.
func (c *Client) Whoami(ctx context.Context) (Whoami, error) {
	var out Whoami
	return out, c.do(ctx, "GET", "/api/v1/whoami", nil, nil, &out)
}

// OpenAPI returns the API's OpenAPI document.
func (c *Client) OpenAPI(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	return out, c.do(ctx, "GET", "/api/openapi.json", nil, nil, &out)
}

// Account returns the caller's account.
func (c *Client) Account(ctx context.Context) (Account, error) {
	var out Account
	return out, c.do(ctx, "GET", "/api/v1/account", nil, nil, &out)
}

// Accounts lists every account (system admins).
func (c *Client) Accounts(ctx context.Context) (AccountList, error) {
	var out AccountList
	return out, c.do(ctx, "GET", "/api/v1/accounts", nil, nil, &out)
}

// CreateAccount creates an account and its first admin token (system admins).
func (c *Client) CreateAccount(ctx context.Context, req CreateAccountRequest) (CreateAccountResponse, error) {
	var out CreateAccountResponse
	return out, c.do(ctx, "POST", "/api/v1/accounts", nil, req, &out)
}

// UpdateAccount changes an account (system admins).
func (c *Client) UpdateAccount(ctx context.Context, id string, req UpdateAccountRequest) (Account, error) {
	var out Account
	return out, c.do(ctx, "PATCH", "/api/v1/accounts/"+esc(id), nil, req, &out)
}

// Sites lists the account's sites.
func (c *Client) Sites(ctx context.Context) (SiteList, error) {
	var out SiteList
	return out, c.do(ctx, "GET", "/api/v1/sites", nil, nil, &out)
}

// Site describes one site of the account (whether it has credentials, never them).
func (c *Client) Site(ctx context.Context, id string) (Site, error) {
	var out Site
	return out, c.do(ctx, "GET", "/api/v1/sites/"+esc(id), nil, nil, &out)
}

// CreateSite creates a site.
func (c *Client) CreateSite(ctx context.Context, req CreateSiteRequest) (Site, error) {
	var out Site
	return out, c.do(ctx, "POST", "/api/v1/sites", nil, req, &out)
}

// DeleteSite deletes an unused site.
func (c *Client) DeleteSite(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/sites/"+esc(id), nil, nil, nil)
}

// Tokens lists the account's tokens.
func (c *Client) Tokens(ctx context.Context) (TokenList, error) {
	var out TokenList
	return out, c.do(ctx, "GET", "/api/v1/tokens", nil, nil, &out)
}

// CreateToken creates a token; the answer holds its secret, shown this once.
func (c *Client) CreateToken(ctx context.Context, req CreateTokenRequest) (CreateTokenResponse, error) {
	var out CreateTokenResponse
	return out, c.do(ctx, "POST", "/api/v1/tokens", nil, req, &out)
}

// RevokeToken revokes a token.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/tokens/"+esc(id), nil, nil, nil)
}

// RegisterSourceServer registers an agent (with an install token).
func (c *Client) RegisterSourceServer(ctx context.Context, req RegisterSourceServerRequest) (RegisterSourceServerResponse, error) {
	var out RegisterSourceServerResponse
	return out, c.do(ctx, "POST", "/api/v1/source-servers/register", nil, req, &out)
}

// RegisterReversed gets a recovery instance's reversed source server identity (its
// agent, proven by the instance's reverse key).
func (c *Client) RegisterReversed(ctx context.Context, req ReverseRegisterRequest) (RegisterSourceServerResponse, error) {
	var out RegisterSourceServerResponse
	return out, c.do(ctx, "POST", "/api/v1/source-servers/register-reversed", nil, req, &out)
}

// DisconnectSourceServer stops a source server's replication for good and revokes its
// agent's certificate; deleteData removes its unlocked PITs now.
func (c *Client) DisconnectSourceServer(ctx context.Context, id string, force, deleteData bool) (SourceServer, error) {
	q := url.Values{}
	if force {
		q.Set("force", "true")
	}
	if deleteData {
		q.Set("delete_data", "true")
	}
	var out SourceServer
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+url.PathEscape(id)+"/disconnect", q, nil, &out)
}

// RegisterFailbackClient registers a failback client (install token of scope failback).
func (c *Client) RegisterFailbackClient(ctx context.Context, req RegisterFailbackClientRequest) (RegisterFailbackClientResponse, error) {
	var out RegisterFailbackClientResponse
	return out, c.do(ctx, "POST", "/api/v1/failback-clients/register", nil, req, &out)
}

// FailbackClientSelf is a failback client's own record, with its assignment.
func (c *Client) FailbackClientSelf(ctx context.Context) (FailbackClient, error) {
	var out FailbackClient
	return out, c.do(ctx, "GET", "/api/v1/failback-clients/self", nil, nil, &out)
}

// FailbackProgress reports a failback client's write.
func (c *Client) FailbackProgress(ctx context.Context, p FailbackProgress) error {
	return c.do(ctx, "POST", "/api/v1/failback-clients/self/progress", nil, p, nil)
}

// FailbackClients lists the account's failback clients.
func (c *Client) FailbackClients(ctx context.Context) (FailbackClientList, error) {
	var out FailbackClientList
	return out, c.do(ctx, "GET", "/api/v1/failback-clients", nil, nil, &out)
}

// FailbackDiff sends a failback client's block hashes and returns the stream of the
// blocks that differ (DiffContentType, read with NewExtentReader).
func (c *Client) FailbackDiff(ctx context.Context, req FailbackDiffRequest) (io.ReadCloser, error) {
	return c.openStream(ctx, "POST", "/api/v1/failback-clients/self/diff", req, DiffContentType)
}

// StartFailback starts a recovery instance's failback launch (a FAILBACK job).
func (c *Client) StartFailback(ctx context.Context, id string, req FailbackRequest) (Job, error) {
	var out Job
	return out, c.do(ctx, "POST", "/api/v1/recovery-instances/"+url.PathEscape(id)+"/failback", nil, req, &out)
}

// CompleteFailback ends a recovery instance's failback: its reversed source server is
// deleted and the instance terminated (a TERMINATE job).
func (c *Client) CompleteFailback(ctx context.Context, id string) (Job, error) {
	var out Job
	return out, c.do(ctx, "POST", "/api/v1/recovery-instances/"+url.PathEscape(id)+"/failback-complete", nil, nil, &out)
}

// StartReverseReplication starts a recovery instance's reversed replication.
func (c *Client) StartReverseReplication(ctx context.Context, id string) (ReverseReplication, error) {
	var out ReverseReplication
	return out, c.do(ctx, "POST", "/api/v1/recovery-instances/"+url.PathEscape(id)+"/reverse-replication", nil, nil, &out)
}

func (f SourceServerFilter) query() url.Values {
	q := url.Values{}
	if len(f.States) > 0 {
		q.Set("state", strings.Join(f.States, ","))
	}
	if f.Hostname != "" {
		q.Set("hostname", f.Hostname)
	}
	if f.ReplicatorID != "" {
		q.Set("replicator", f.ReplicatorID)
	}
	if f.ReadyForRecovery != nil {
		q.Set("ready", strconv.FormatBool(*f.ReadyForRecovery))
	}
	for _, k := range slices.Sorted(maps.Keys(f.Tags)) {
		q.Add("tag", k+"="+f.Tags[k])
	}
	if f.Full {
		q.Set("view", "full")
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.PageToken != "" {
		q.Set("page_token", f.PageToken)
	}
	return q
}

// ListSourceServers returns one page of source servers.
func (c *Client) ListSourceServers(ctx context.Context, f SourceServerFilter) (SourceServerList, error) {
	var out SourceServerList
	return out, c.do(ctx, "GET", "/api/v1/source-servers", f.query(), nil, &out)
}

// AllSourceServers pages through every source server matching f (f.Limit is the page size).
func (c *Client) AllSourceServers(ctx context.Context, f SourceServerFilter) ([]SourceServer, error) {
	return AllPages(ctx, func(ctx context.Context, token string) ([]SourceServer, string, error) {
		f.PageToken = token
		page, err := c.ListSourceServers(ctx, f)
		return page.Items, page.NextPageToken, err
	})
}

// SourceServer describes a source server.
func (c *Client) SourceServer(ctx context.Context, id string) (SourceServer, error) {
	var out SourceServer
	return out, c.do(ctx, "GET", "/api/v1/source-servers/"+esc(id), nil, nil, &out)
}

// UpdateSourceServerTags sets and removes a source server's tags.
func (c *Client) UpdateSourceServerTags(ctx context.Context, id string, req UpdateSourceServerTagsRequest) (SourceServer, error) {
	var out SourceServer
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+esc(id)+"/tags", nil, req, &out)
}

// DeleteSourceServer deletes a source server's record; force deletes it even with
// recovery snapshots recorded.
func (c *Client) DeleteSourceServer(ctx context.Context, id string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, "DELETE", "/api/v1/source-servers/"+esc(id), q, nil, nil)
}

// RenewSourceServerCertificate renews the agent's certificate for the key of csrPEM.
func (c *Client) RenewSourceServerCertificate(ctx context.Context, id string, csrPEM []byte) (RenewCertificateResponse, error) {
	var out RenewCertificateResponse
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+esc(id)+"/certificate", nil, RenewCertificateRequest{CSR: string(csrPEM)}, &out)
}

// SetVolumes reports the source server's volumes (agents).
func (c *Client) SetVolumes(ctx context.Context, id string, volumes []Volume) (SourceServer, error) {
	var out SourceServer
	return out, c.do(ctx, "PUT", "/api/v1/source-servers/"+esc(id)+"/volumes", nil, UpdateVolumesRequest{Volumes: volumes}, &out)
}

// UpdateReplicationState reports replication state and progress (agents, replicators).
func (c *Client) UpdateReplicationState(ctx context.Context, id string, u ReplicationStateUpdate) (ReplicationState, error) {
	var out ReplicationState
	return out, c.do(ctx, "PATCH", "/api/v1/source-servers/"+esc(id)+"/replication-state", nil, u, &out)
}

// ReplicationConfig returns what an agent needs: effective settings, assigned replicator, CA.
func (c *Client) ReplicationConfig(ctx context.Context, id string) (ReplicationConfig, error) {
	var out ReplicationConfig
	return out, c.do(ctx, "GET", "/api/v1/source-servers/"+esc(id)+"/replication-config", nil, nil, &out)
}

// ServerReplicationSettings returns a server's overrides and effective settings.
func (c *Client) ServerReplicationSettings(ctx context.Context, id string) (ServerReplicationSettings, error) {
	var out ServerReplicationSettings
	return out, c.do(ctx, "GET", "/api/v1/source-servers/"+esc(id)+"/replication-settings", nil, nil, &out)
}

// SetServerReplicationSettings replaces a server's overrides.
func (c *Client) SetServerReplicationSettings(ctx context.Context, id string, o ReplicationSettingsOverrides) (ServerReplicationSettings, error) {
	var out ServerReplicationSettings
	return out, c.do(ctx, "PUT", "/api/v1/source-servers/"+esc(id)+"/replication-settings", nil, o, &out)
}

// ReplicationTemplate returns the account's replication settings template.
func (c *Client) ReplicationTemplate(ctx context.Context) (ReplicationSettings, error) {
	var out ReplicationSettings
	return out, c.do(ctx, "GET", "/api/v1/settings/replication", nil, nil, &out)
}

// SetReplicationTemplate replaces the account's template.
func (c *Client) SetReplicationTemplate(ctx context.Context, s ReplicationSettings) (ReplicationSettings, error) {
	var out ReplicationSettings
	return out, c.do(ctx, "PUT", "/api/v1/settings/replication", nil, s, &out)
}

// LaunchSettings returns a server's launch settings.
func (c *Client) LaunchSettings(ctx context.Context, id string) (LaunchSettingsResponse, error) {
	var out LaunchSettingsResponse
	return out, c.do(ctx, "GET", "/api/v1/source-servers/"+esc(id)+"/launch-settings", nil, nil, &out)
}

// SetLaunchSettings replaces a server's launch settings.
func (c *Client) SetLaunchSettings(ctx context.Context, id string, l LaunchSettings) (LaunchSettingsResponse, error) {
	var out LaunchSettingsResponse
	return out, c.do(ctx, "PUT", "/api/v1/source-servers/"+esc(id)+"/launch-settings", nil, l, &out)
}

// RecoverySnapshots returns one page of a server's PITs, newest first.
func (c *Client) RecoverySnapshots(ctx context.Context, serverID string, limit int, pageToken string) (RecoverySnapshotList, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if pageToken != "" {
		q.Set("page_token", pageToken)
	}
	var out RecoverySnapshotList
	return out, c.do(ctx, "GET", "/api/v1/source-servers/"+esc(serverID)+"/recovery-snapshots", q, nil, &out)
}

// RecoverySnapshotPages pages through a server's PITs, newest first, limit a page.
func (c *Client) RecoverySnapshotPages(serverID string, limit int) PageFunc[RecoverySnapshot] {
	return func(ctx context.Context, token string) ([]RecoverySnapshot, string, error) {
		page, err := c.RecoverySnapshots(ctx, serverID, limit, token)
		return page.Items, page.NextPageToken, err
	}
}

// CreateRecoverySnapshot records a PIT a replicator sealed.
func (c *Client) CreateRecoverySnapshot(ctx context.Context, serverID string, req CreateRecoverySnapshotRequest) (RecoverySnapshot, error) {
	var out RecoverySnapshot
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+esc(serverID)+"/recovery-snapshots", nil, req, &out)
}

// DeleteRecoverySnapshots deletes PITs of a server; locked ones are refused with the reason.
func (c *Client) DeleteRecoverySnapshots(ctx context.Context, serverID string, ids []string) (DeleteRecoverySnapshotsResponse, error) {
	var out DeleteRecoverySnapshotsResponse
	return out, c.do(ctx, "POST", "/api/v1/source-servers/"+esc(serverID)+"/recovery-snapshots/delete", nil,
		DeleteRecoverySnapshotsRequest{IDs: ids}, &out)
}

// RecoverySnapshot describes a PIT.
func (c *Client) RecoverySnapshot(ctx context.Context, id string) (RecoverySnapshot, error) {
	var out RecoverySnapshot
	return out, c.do(ctx, "GET", "/api/v1/recovery-snapshots/"+esc(id), nil, nil, &out)
}

// DeleteRecoverySnapshot deletes a PIT that is not locked.
func (c *Client) DeleteRecoverySnapshot(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/recovery-snapshots/"+esc(id), nil, nil, nil)
}

// RegisterReplicator registers a replicator (with a replicator install token).
func (c *Client) RegisterReplicator(ctx context.Context, req RegisterReplicatorRequest) (RegisterReplicatorResponse, error) {
	var out RegisterReplicatorResponse
	return out, c.do(ctx, "POST", "/api/v1/replicators/register", nil, req, &out)
}

// Replicators lists the account's replicators.
func (c *Client) Replicators(ctx context.Context) (ReplicatorList, error) {
	var out ReplicatorList
	return out, c.do(ctx, "GET", "/api/v1/replicators", nil, nil, &out)
}

// Replicator describes a replicator.
func (c *Client) Replicator(ctx context.Context, id string) (Replicator, error) {
	var out Replicator
	return out, c.do(ctx, "GET", "/api/v1/replicators/"+esc(id), nil, nil, &out)
}

// DeleteReplicator deletes a replicator; its servers are reassigned.
func (c *Client) DeleteReplicator(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/replicators/"+esc(id), nil, nil, nil)
}

// DrainReplicator drains a replicator (its servers move to the site's other live
// replicators; it takes no new ones), or with drain false puts it back in service.
func (c *Client) DrainReplicator(ctx context.Context, id string, drain bool) (Replicator, error) {
	var out Replicator
	err := c.do(ctx, "POST", "/api/v1/replicators/"+esc(id)+"/drain", nil, DrainReplicatorRequest{Drain: drain}, &out)
	return out, err
}

// Heartbeat sends a replicator's heartbeat.
func (c *Client) Heartbeat(ctx context.Context, id string, req HeartbeatRequest) (HeartbeatResponse, error) {
	var out HeartbeatResponse
	return out, c.do(ctx, "POST", "/api/v1/replicators/"+esc(id)+"/heartbeat", nil, req, &out)
}

// AssignedSourceServers lists a replicator's source servers with their effective settings.
func (c *Client) AssignedSourceServers(ctx context.Context, id string) (AssignedSourceServerList, error) {
	var out AssignedSourceServerList
	return out, c.do(ctx, "GET", "/api/v1/replicators/"+esc(id)+"/source-servers", nil, nil, &out)
}

// RenewReplicatorCertificate renews the replicator's certificate for the key of csrPEM.
func (c *Client) RenewReplicatorCertificate(ctx context.Context, id string, csrPEM []byte) (RenewCertificateResponse, error) {
	var out RenewCertificateResponse
	return out, c.do(ctx, "POST", "/api/v1/replicators/"+esc(id)+"/certificate", nil, RenewCertificateRequest{CSR: string(csrPEM)}, &out)
}

// Audit returns one page of the audit log, newest first.
func (c *Client) Audit(ctx context.Context, f AuditFilter) (AuditList, error) {
	q := url.Values{}
	if f.TargetID != "" {
		q.Set("target", f.TargetID)
	}
	if f.Action != "" {
		q.Set("action", f.Action)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.PageToken != "" {
		q.Set("page_token", f.PageToken)
	}
	var out AuditList
	return out, c.do(ctx, "GET", "/api/v1/audit", q, nil, &out)
}

// Events follows the event stream, calling fn for each event, until ctx ends, fn
// returns an error, or the server ends the stream (then it returns nil: reconnect with
// the last Seq seen as after). A "reset" event (events were missed) reaches fn with
// Type "reset".
func (c *Client) Events(ctx context.Context, after int64, fn func(Event) error) error {
	req, err := c.newRequest(ctx, "GET", "/api/v1/events", nil, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	if after > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(after, 10))
	}
	resp, err := c.stream.Do(req)
	if err != nil {
		return c.transportError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeError(resp)
	}
	return ReadEvents(resp.Body, fn)
}

// ReadEvents parses a server-sent event stream of API events.
func ReadEvents(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var typ, data string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if data != "" || typ != "" {
				var ev Event
				if typ == "reset" {
					ev = Event{Type: "reset"}
				} else if err := json.Unmarshal([]byte(data), &ev); err != nil {
					return fmt.Errorf("the event stream sent an unreadable event: %w", err)
				}
				if err := fn(ev); err != nil {
					return err
				}
			}
			typ, data = "", ""
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			typ = value
		case "data":
			if data != "" {
				data += "\n"
			}
			data += value
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("the event stream broke: %w", err)
	}
	return nil
}
