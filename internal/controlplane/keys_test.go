package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// replicatorIn registers a replicator in an account and returns its client.
func (e *env) replicatorIn(accountID, name string) (*api.Client, api.RegisterReplicatorResponse) {
	e.t.Helper()
	tok, err := e.cp.CreateToken(e.ctx, accountID, api.CreateTokenRequest{Kind: api.TokenInstall, Scope: api.ScopeReplicator, Uses: 1})
	if err != nil {
		e.t.Fatal(err)
	}
	csrPEM, _ := csr(e.t)
	resp, err := e.client(tok.Secret).RegisterReplicator(e.ctx, api.RegisterReplicatorRequest{CSR: string(csrPEM), Name: name,
		Site: api.DefaultSite, Address: "127.0.0.1:1500", Version: "test"})
	if err != nil {
		e.t.Fatalf("register replicator %s: %v", name, err)
	}
	return e.certClient(resp.Certificate), resp
}

// openStore opens the repository at url with key, or returns why not.
func openStore(t *testing.T, url string, key store.MasterKey) (*store.Repo, error) {
	t.Helper()
	be, err := backendurl.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	r, err := store.Open(context.Background(), be, key, store.Options{})
	if err != nil {
		be.Close()
		return nil, err
	}
	t.Cleanup(func() { r.Close(); be.Close() })
	return r, nil
}

// storeKey asks, as a replicator, for the key of a store and returns it.
func storeKey(t *testing.T, e *env, rep *api.Client, id, url string) (store.MasterKey, error) {
	t.Helper()
	resp, err := rep.StagingStoreKey(e.ctx, id, api.StagingStoreKeyRequest{StagingStoreURL: url})
	if err != nil {
		return store.MasterKey{}, err
	}
	return resp.Key32()
}

func keyObjects(t *testing.T, url string) int {
	t.Helper()
	be, err := backendurl.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	n := 0
	if err := be.List(context.Background(), "keys/", func(backend.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReplicatorsGetOnlyTheirAccountsKeys: each account has its own store and key; a
// replicator gets the key of its own account's store (the store is made then, wrapped
// by the account key and by the master key) and is refused any other store's; one
// account's key does not open another's repository; the master key file alone opens
// every one; every key handed out is audited.
func TestReplicatorsGetOnlyTheirAccountsKeys(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		accounts := map[string]api.CreateAccountResponse{}
		for _, name := range []string{"a", "b"} {
			resp, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			accounts[name] = resp
		}
		a, b := accounts["a"], accounts["b"]
		urlA, urlB := a.Account.StagingStores[0].URL, b.Account.StagingStores[0].URL
		if want := e.cp.DefaultStoreURL() + "/" + a.Account.ID; urlA != want || len(a.Account.StagingStores) != 1 {
			t.Fatalf("account a's stores %+v, want its default store %s", a.Account.StagingStores, want)
		}
		repA, regA := e.replicatorIn(a.Account.ID, "rep-a")
		repB, regB := e.replicatorIn(b.Account.ID, "rep-b")
		keyA, err := storeKey(t, e, repA, regA.Replicator.ID, urlA)
		if err != nil {
			t.Fatal(err)
		}
		keyB, err := storeKey(t, e, repB, regB.Replicator.ID, urlB)
		if err != nil {
			t.Fatal(err)
		}
		if keyA == keyB {
			t.Fatal("two accounts were given the same key")
		}
		// A's replicator asks for B's store, the system account's, and stores no account has.
		for _, u := range []string{urlB, e.cp.DefaultStoreURL(), "file:///etc", "s3://bucket/x?endpoint=10.0.0.1:9000",
			"s3://bucket/y?ca=/etc/shadow&insecure-skip-verify=true"} {
			_, err := storeKey(t, e, repA, regA.Replicator.ID, u)
			if ae := wantAPIError(t, err, 403, api.CodeForbidden); !strings.Contains(ae.Message, "system administrator") {
				t.Errorf("refusal of %s does not say who can give a store: %s", u, ae.Message)
			}
		}
		// Asking for another replicator's keys with one's own certificate is refused too.
		_, err = storeKey(t, e, repA, regB.Replicator.ID, urlB)
		wantAPIError(t, err, 403, api.CodeForbidden)

		if _, err := openStore(t, urlB, keyA); !errors.Is(err, store.ErrWrongKey) {
			t.Fatalf("account a's key on account b's repository: %v, want ErrWrongKey", err)
		}
		if _, err := openStore(t, urlA, keyA); err != nil {
			t.Fatalf("account a's key on its own repository: %v", err)
		}
		master, err := store.LoadMasterKey(filepath.Join(e.dataDir, "staging.key"))
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{urlA, urlB} {
			if _, err := openStore(t, u, master); err != nil {
				t.Fatalf("the master key alone on %s: %v", u, err)
			}
		}
		audit, err := e.client(a.AdminToken).Audit(e.ctx, api.AuditFilter{Action: "staging-store.issue-key"})
		if err != nil || len(audit.Items) != 1 || audit.Items[0].TargetID != urlA || audit.Items[0].Detail["replicator"] != regA.Replicator.ID {
			t.Fatalf("audit of the key given to rep-a: %+v, %v", audit.Items, err)
		}
	})
}

// TestLegacyStoreGetsTheAccountKey: a store made with the master key alone (as
// replicators made them before accounts had keys) gets the account's key added when the
// control plane first hands it out, once.
func TestLegacyStoreGetsTheAccountKey(t *testing.T) {
	e := start(t, db.SQLite)
	master, err := store.LoadMasterKey(filepath.Join(e.dataDir, "staging.key"))
	if err != nil {
		t.Fatal(err)
	}
	url := e.cp.DefaultStoreURL()
	be, err := backendurl.Open(e.ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	r, err := store.Init(e.ctx, be, master, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	be.Close()
	rep, reg := e.replicatorIn(e.cp.SystemAccountID(), "local")
	for range 2 {
		key, err := storeKey(t, e, rep, reg.Replicator.ID, url)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := openStore(t, url, key); err != nil {
			t.Fatalf("the system account's key on the store made with the master key: %v", err)
		}
	}
	if n := keyObjects(t, url); n != 2 {
		t.Fatalf("%d key objects, want 2 (the master key's and the account key's)", n)
	}
}

// TestStoreURLsOnlyFromSystemAdmins: an account's admins may name only the account's
// own stores in its replication settings (template or per-server override), whatever the
// URL; a system admin gives an account a store, and names any new store for the system
// account, but no store of another account.
func TestStoreURLsOnlyFromSystemAdmins(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
		if err != nil {
			t.Fatal(err)
		}
		other, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "other"})
		if err != nil {
			t.Fatal(err)
		}
		ta := e.client(tenant.AdminToken)
		tmpl, err := ta.ReplicationTemplate(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		own := tmpl.StagingStoreURL
		srv := recoveryServerIn(t, e, tenant.Account.ID, "m1")
		hostile := []string{
			"s3://bucket/prefix?endpoint=127.0.0.1:9000",
			"s3://bucket/p?ca=/etc/shadow",
			"s3://bucket/p?endpoint=evil.example:443&insecure-skip-verify=true",
			"file:///etc",
			e.cp.DefaultStoreURL(),
			other.Account.StagingStores[0].URL,
		}
		for _, u := range hostile {
			s := tmpl
			s.StagingStoreURL = u
			_, err := ta.SetReplicationTemplate(e.ctx, s)
			if ae := wantAPIError(t, err, 403, api.CodeForbidden); !strings.Contains(ae.Message, "only a system administrator") {
				t.Errorf("template %s: refusal does not say who can change it: %s", u, ae.Message)
			}
			_, err = ta.SetServerReplicationSettings(e.ctx, srv, api.ReplicationSettingsOverrides{StagingStoreURL: &u})
			wantAPIError(t, err, 403, api.CodeForbidden)
		}
		if got, _ := ta.ReplicationTemplate(e.ctx); got.StagingStoreURL != own {
			t.Fatalf("the tenant's template store changed to %s", got.StagingStoreURL)
		}
		// Its own store, spelled differently, is accepted (and recorded canonically).
		s := tmpl
		s.BandwidthMbps = 50
		s.StagingStoreURL = own + "/"
		if got, err := ta.SetReplicationTemplate(e.ctx, s); err != nil || got.StagingStoreURL != own {
			t.Fatalf("the tenant naming its own store: %+v, %v", got, err)
		}

		// A system admin gives the tenant a new store; the tenant may then use both.
		given := "file://" + filepath.Join(t.TempDir(), "tenant-store")
		acct, err := e.admin.UpdateAccount(e.ctx, tenant.Account.ID, api.UpdateAccountRequest{StagingStoreURL: &given})
		if err != nil || len(acct.StagingStores) != 2 || acct.StagingStores[0].URL != given {
			t.Fatalf("system admin giving the tenant a store: %+v, %v", acct.StagingStores, err)
		}
		if got, _ := ta.ReplicationTemplate(e.ctx); got.StagingStoreURL != given {
			t.Fatalf("the tenant's template names %s, not the store it was given", got.StagingStoreURL)
		}
		if _, err := ta.SetServerReplicationSettings(e.ctx, srv, api.ReplicationSettingsOverrides{StagingStoreURL: &own}); err != nil {
			t.Fatalf("the tenant naming its first store for a server: %v", err)
		}
		// No store of another account, for anyone.
		_, err = e.admin.UpdateAccount(e.ctx, tenant.Account.ID, api.UpdateAccountRequest{StagingStoreURL: &other.Account.StagingStores[0].URL})
		wantAPIError(t, err, 409, api.CodeConflict)
		sys, err := e.admin.ReplicationTemplate(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		sys.StagingStoreURL = given
		_, err = e.admin.SetReplicationTemplate(e.ctx, sys)
		wantAPIError(t, err, 409, api.CodeConflict)
		// Any new store for the system account itself.
		sys.StagingStoreURL = "s3://bucket/system?endpoint=127.0.0.1:9000"
		if _, err := e.admin.SetReplicationTemplate(e.ctx, sys); err != nil {
			t.Fatalf("a system admin naming a new store for the system account: %v", err)
		}
		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{Action: "staging-store.add"})
		if err != nil || len(audit.Items) < 3 {
			t.Fatalf("audit of stores given: %+v, %v", audit.Items, err)
		}
	})
}

// recoveryServerIn registers a source server in an account and returns its id.
func recoveryServerIn(t *testing.T, e *env, accountID, machineID string) string {
	t.Helper()
	tok, err := e.cp.CreateToken(e.ctx, accountID, api.CreateTokenRequest{Kind: api.TokenInstall, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.register(tok.Secret, machineID, false)
	if err != nil {
		t.Fatal(err)
	}
	return resp.SourceServer.ID
}

// TestMasterKeyFileMustMatchTheDatabase: a control plane whose key file is missing, or
// another one, on a database whose account keys an earlier key wrapped, refuses to start
// rather than make stores no one can open.
func TestMasterKeyFileMustMatchTheDatabase(t *testing.T) {
	e := &env{t: t, kind: db.SQLite, clock: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}, dataDir: t.TempDir(),
		ctx: context.Background(), agentTimeout: time.Hour}
	dbURL := dbtest.URL(t, db.SQLite)
	e.open(dbURL)
	rep, reg := e.replicatorIn(e.cp.SystemAccountID(), "local")
	if _, err := storeKey(t, e, rep, reg.Replicator.ID, e.cp.DefaultStoreURL()); err != nil {
		t.Fatal(err)
	}
	e.stopCurrent()
	e.cp = nil
	keyFile := filepath.Join(e.dataDir, "staging.key")
	cfg := func(key string) error {
		cp, err := openControlPlane(e, dbURL, key)
		if err == nil {
			cp.Close()
		}
		return err
	}
	other := filepath.Join(t.TempDir(), "other.key")
	k, _ := store.NewMasterKey()
	if err := store.WriteMasterKey(other, k); err != nil {
		t.Fatal(err)
	}
	if err := cfg(other); err == nil || !strings.Contains(err.Error(), "not the one that wrapped") {
		t.Fatalf("another master key file: %v", err)
	}
	if err := cfg(filepath.Join(t.TempDir(), "missing.key")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("a missing master key file: %v", err)
	}
	if err := cfg(keyFile); err != nil {
		t.Fatalf("the right key file: %v", err)
	}
}

// openControlPlane opens (without serving) a control plane on e's data directory with
// another master key file.
func openControlPlane(e *env, dbURL, keyFile string) (*controlplane.ControlPlane, error) {
	return controlplane.Open(e.ctx, controlplane.Config{DataDir: e.dataDir, DBURL: dbURL, Listen: "127.0.0.1:0",
		Now: e.clock.Now, StoreKeyFile: keyFile})
}

// TestStoreCredentialsGoOnlyToTheAccountsReplicators: a system admin gives an account an
// S3 store with credentials of its own; neither the control plane's environment nor the
// replicator's holds any, yet the control plane makes the store and the account's
// replicator, given them with the key, opens it; the secret is in no answer but that
// one, nor in the audit log.
func TestStoreCredentialsGoOnlyToTheAccountsReplicators(t *testing.T) {
	s3 := testutil.StartVersitygw(t)
	bucket := s3.Bucket(t, false)
	for _, k := range []string{"LIFEBOAT_S3_ACCESS_KEY", "LIFEBOAT_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		t.Setenv(k, "")
	}
	e := start(t, db.SQLite)
	url := "s3://" + bucket + "/tenant?endpoint=" + s3.Endpoint + "&region=" + s3.Region + "&tls=false"
	creds := &api.S3Credentials{AccessKey: s3.AccessKey, SecretKey: s3.SecretKey}
	_, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "files", StagingStoreURL: "file:///srv/x", StagingStoreCredentials: creds})
	wantAPIError(t, err, 400, api.CodeInvalid)
	tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant", StagingStoreURL: url, StagingStoreCredentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	if st := tenant.Account.StagingStores; len(st) != 1 || st[0].URL != url || !st[0].HasCredentials {
		t.Fatalf("the tenant's stores: %+v", st)
	}
	if _, err := backendurl.Open(e.ctx, url); err == nil {
		t.Fatal("the store opens with the environment's credentials: the test proves nothing")
	}
	rep, reg := e.replicatorIn(tenant.Account.ID, "rep")
	resp, err := rep.StagingStoreKey(e.ctx, reg.Replicator.ID, api.StagingStoreKeyRequest{StagingStoreURL: url})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Credentials == nil || *resp.Credentials != *creds {
		t.Fatalf("the replicator was given credentials %+v", resp.Credentials)
	}
	key, err := resp.Key32()
	if err != nil {
		t.Fatal(err)
	}
	be, err := backendurl.Open(e.ctx, resp.StagingStoreURL, backendurl.WithCredentials(resp.Credentials.AccessKey, resp.Credentials.SecretKey))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	r, err := store.Open(e.ctx, be, key, store.Options{})
	if err != nil {
		t.Fatalf("the account's replicator opening its S3 store with what it was given: %v", err)
	}
	r.Close()
	tc := e.client(tenant.AdminToken)
	acct, err := tc.Account(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := e.admin.Audit(e.ctx, api.AuditFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	tenantAudit, err := tc.Audit(e.ctx, api.AuditFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := json.Marshal([]any{acct, audit, tenantAudit})
	if strings.Contains(string(blob), s3.SecretKey) {
		t.Fatal("the store's secret key is shown in the account or the audit log")
	}
}

// TestAccountMadeBeforeKeysGetsItsOwnStore: an account made before stores belonged to
// accounts inherited the system account's store. After the upgrade its replicators are
// refused that store's key, it has a default store of its own, and a system admin moves
// it there with one update.
func TestAccountMadeBeforeKeysGetsItsOwnStore(t *testing.T) {
	e := &env{t: t, kind: db.SQLite, clock: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}, dataDir: t.TempDir(),
		ctx: context.Background(), agentTimeout: time.Hour}
	dbURL := dbtest.URL(t, db.SQLite)
	e.open(dbURL)
	legacy := api.NewID(api.PrefixAccount)
	err := e.cp.DB().Update(e.ctx, func(tx *db.Tx) error {
		sys, err := tx.Account(e.cp.SystemAccountID())
		if err != nil {
			return err
		}
		if err := tx.CreateAccount(db.Account{Account: api.Account{ID: legacy, Name: "legacy", QuotaSourceServers: 10, CreatedAt: e.clock.Now()},
			Template: sys.Template}); err != nil {
			return err
		}
		return tx.CreateSite(legacy, api.Site{ID: api.DefaultSite, CreatedAt: e.clock.Now()})
	})
	if err != nil {
		t.Fatal(err)
	}
	e.restart(dbURL)
	rep, reg := e.replicatorIn(legacy, "rep")
	_, err = storeKey(t, e, rep, reg.Replicator.ID, e.cp.DefaultStoreURL())
	wantAPIError(t, err, 403, api.CodeForbidden)
	def := api.DefaultStagingStore
	acct, err := e.admin.UpdateAccount(e.ctx, legacy, api.UpdateAccountRequest{StagingStoreURL: &def})
	own := e.cp.DefaultStoreURL() + "/" + legacy
	if err != nil || len(acct.StagingStores) != 1 || acct.StagingStores[0].URL != own {
		t.Fatalf("moving the account to its default store: %+v, %v", acct.StagingStores, err)
	}
	if _, err := storeKey(t, e, rep, reg.Replicator.ID, own); err != nil {
		t.Fatalf("the account's replicator asking for its own store's key: %v", err)
	}
}
