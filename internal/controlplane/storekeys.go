package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
)

// Keys and staging stores (README "Keys and staging stores", docs/store-format.md §2).
// The control plane holds the master key. Each account has its own key, kept in the
// database wrapped by the master key. Each staging store belongs to one account; its
// repository secret is wrapped by that account's key, which is all the account's
// replicators are given, and by the master key, so that the master key file alone opens
// every repository when the database is lost.

const (
	accountKeyAAD       = "lifeboat account key v1 "
	storeCredentialsAAD = "lifeboat staging store credentials v1 "
)

// keyring is the master key and which stores this process has prepared.
type keyring struct {
	master    store.MasterKey
	mu        sync.Mutex
	prepared  map[string]bool        // canonical URL → its repository opens with both keys
	preparing map[string]*sync.Mutex // one preparation per store at a time
}

// openKeys loads the master key (creating it when the database is new) and makes sure
// every account has a staging store.
func (cp *ControlPlane) openKeys(ctx context.Context, fresh bool) error {
	if cp.cfg.StoreKeyFile == "" {
		cp.cfg.StoreKeyFile = filepath.Join(cp.cfg.DataDir, "staging.key")
	}
	keyFile := cp.cfg.StoreKeyFile
	var prints []string
	if err := cp.db.View(ctx, func(tx *db.Tx) (err error) { prints, err = tx.MasterFingerprints(); return err }); err != nil {
		return err
	}
	mk, err := store.LoadMasterKey(keyFile)
	if err != nil {
		if _, serr := os.Stat(keyFile); !errors.Is(serr, fs.ErrNotExist) {
			return err
		}
		if !fresh || len(prints) > 0 {
			return fmt.Errorf("%w; the control plane holds the staging stores' master key: copy the key file the stores were made with "+
				"(the replicators' DATA/staging.key before this version) to %s, or give its path with --store-key "+
				"(a database that never held data can be removed to start afresh)", err, keyFile)
		}
		if mk, err = store.LoadOrCreateMasterKey(keyFile); err != nil {
			return err
		}
		cp.log.Info("master key created: keep a copy elsewhere, it opens every staging store", "path", keyFile, "fingerprint", mk.Fingerprint())
	}
	if len(prints) > 0 && !slices.Contains(prints, mk.Fingerprint()) {
		return fmt.Errorf("the master key in %s (fingerprint %s) is not the one that wrapped the account keys in the database (%s): give the key file this control plane was set up with (--store-key)",
			keyFile, mk.Fingerprint(), strings.Join(prints, ", "))
	}
	cp.keys = &keyring{master: mk, prepared: map[string]bool{}, preparing: map[string]*sync.Mutex{}}
	return cp.registerStores(ctx)
}

// canonicalStoreURL is the one spelling of a store URL that ownership is recorded under.
func canonicalStoreURL(raw string) (string, error) {
	if err := api.ValidateStoreURL(raw); err != nil {
		return "", err
	}
	t, err := backendurl.Parse(raw)
	if err != nil {
		return "", api.Invalid("%s", err)
	}
	return t.String(), nil
}

// defaultStoreURL is an account's default store: the control plane's default store with
// the account id appended (a subdirectory, or an S3 prefix). Store object names never
// start with "acct-" (docs/store-format.md §1), so it cannot collide with the objects of
// a store at the default URL itself.
func (cp *ControlPlane) defaultStoreURL(accountID string) (string, error) {
	t, err := backendurl.Parse(cp.cfg.DefaultStoreURL)
	if err != nil {
		return "", fmt.Errorf("the default staging store: %w", err)
	}
	if t.Scheme == "file" {
		t.Dir = filepath.Join(t.Dir, accountID)
	} else {
		t.S3.Prefix = path.Join(t.S3.Prefix, accountID)
	}
	return t.String(), nil
}

// registerStores runs at every start: the system account owns the stores its settings
// name (system admins set them), and every account without a store gets its default
// one. An account whose settings name a store that is not its own (accounts made
// before stores belonged to accounts inherited the system account's) is reported: its
// replicators are refused that store's key until a system admin gives it a store.
func (cp *ControlPlane) registerStores(ctx context.Context) error {
	now := cp.cfg.Now()
	return cp.db.Update(ctx, func(tx *db.Tx) error {
		accounts, err := tx.Accounts()
		if err != nil {
			return err
		}
		for _, a := range accounts {
			urls := []string{a.Template.StagingStoreURL}
			if a.System {
				overrides, err := tx.SourceServerOverrides(a.ID)
				if err != nil {
					return err
				}
				for _, o := range overrides {
					if o.StagingStoreURL != nil {
						urls = append(urls, *o.StagingStoreURL)
					}
				}
				for _, u := range urls {
					if err := cp.claimStore(tx, a.ID, u, now); err != nil {
						return err
					}
				}
				continue
			}
			stores, err := tx.StagingStores(a.ID)
			if err != nil {
				return err
			}
			if len(stores) == 0 {
				u, err := cp.defaultStoreURL(a.ID)
				if err != nil {
					return err
				}
				if err := cp.claimStore(tx, a.ID, u, now); err != nil {
					return err
				}
			}
			if u, err := canonicalStoreURL(a.Template.StagingStoreURL); err == nil {
				if s, err := tx.StagingStore(u); err != nil || s.AccountID != a.ID {
					cp.log.Warn("an account's replication template names a staging store that is not its own: its replicators get no key for it until a system admin gives the account a store",
						"account", a.ID, "name", a.Name, "store", u, "fix", "lifeboat accounts update "+a.ID+" --staging-store default")
				}
			}
		}
		return nil
	})
}

// claimStore gives an account a store no account has (a store another account has, or
// a URL that does not parse, is left alone).
func (cp *ControlPlane) claimStore(tx *db.Tx, accountID, raw string, now time.Time) error {
	u, err := canonicalStoreURL(raw)
	if err != nil {
		cp.log.Warn("a staging store URL in the settings does not parse; ignored", "account", accountID, "store", raw, "err", err)
		return nil
	}
	if _, err := tx.StagingStore(u); !errors.Is(err, db.ErrNotFound) {
		return err
	}
	return tx.AddStagingStore(db.StagingStore{URL: u, AccountID: accountID, CreatedAt: now})
}

// accountKey returns an account's key, making it on first use.
func (cp *ControlPlane) accountKey(ctx context.Context, accountID string) (store.MasterKey, error) {
	var k store.MasterKey
	var row db.AccountKey
	err := cp.db.Read(ctx, func(tx *db.Tx) (err error) { row, err = tx.AccountKey(accountID); return err })
	if errors.Is(err, db.ErrNotFound) {
		if k, err = store.NewMasterKey(); err != nil {
			return k, err
		}
		now := cp.cfg.Now()
		row = db.AccountKey{AccountID: accountID, Wrapped: cp.keys.master.Wrap(k[:], accountKeyAAD+accountID),
			MasterFingerprint: cp.keys.master.Fingerprint(), CreatedAt: now}
		err = cp.db.Update(ctx, func(tx *db.Tx) error {
			if err := tx.CreateAccountKey(row); err != nil {
				return err
			}
			_, err := tx.AddAudit(accountID, api.AuditEntry{Time: now, ActorKind: "system", ActorID: "keys", Action: "account.create-key",
				TargetKind: "account", TargetID: accountID, Detail: map[string]any{"keyFingerprint": k.Fingerprint()}})
			return err
		})
		if err == nil {
			return k, nil
		}
		if !errors.Is(err, db.ErrConflict) {
			return k, err
		}
		// Another request (or control plane) made it first: use that one.
		err = cp.db.Read(ctx, func(tx *db.Tx) (err error) { row, err = tx.AccountKey(accountID); return err })
	}
	if err != nil {
		return k, err
	}
	plain, err := cp.keys.master.Unwrap(row.Wrapped, accountKeyAAD+accountID)
	if err != nil || len(plain) != len(k) {
		return k, fmt.Errorf("the key of account %s does not open with this master key (wrapped by master key %s): %v", accountID, row.MasterFingerprint, err)
	}
	copy(k[:], plain)
	return k, nil
}

// storeAccess returns what opens one of an account's staging stores: its canonical URL,
// the account's key and the store's own credentials. The store must be the account's,
// and its repository is made (or given the account's key) first when needed.
func (cp *ControlPlane) storeAccess(ctx context.Context, accountID, raw string) (recovery.StoreAccess, error) {
	var a recovery.StoreAccess
	u, err := canonicalStoreURL(raw)
	if err != nil {
		return a, err
	}
	var st db.StagingStore
	err = cp.db.Read(ctx, func(tx *db.Tx) (err error) { st, err = tx.StagingStore(u); return err })
	if errors.Is(err, db.ErrNotFound) || (err == nil && st.AccountID != accountID) {
		return a, api.Forbidden("staging store %s is not a store of account %s: only a system administrator gives an account a store (lifeboat accounts update %s --staging-store URL)",
			u, accountID, accountID)
	}
	if err != nil {
		return a, err
	}
	a.URL = u
	if a.Key, err = cp.accountKey(ctx, accountID); err != nil {
		return a, err
	}
	if st.Credentials != nil {
		c, err := cp.unwrapCredentials(st)
		if err != nil {
			return a, err
		}
		a.AccessKey, a.SecretKey = c.AccessKey, c.SecretKey
	}
	if err := cp.keys.prepare(ctx, a, cp.log); err != nil {
		return a, api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable, "the control plane cannot prepare staging store %s: %v", u, err)
	}
	return a, nil
}

// prepare makes sure the repository at a.URL exists and opens with a.Key and with the
// master key: it is created (with the master key first) when absent, and one made with
// the master key alone (before accounts had keys) gets the account's key added.
func (k *keyring) prepare(ctx context.Context, a recovery.StoreAccess, log *slog.Logger) error {
	k.mu.Lock()
	m := k.preparing[a.URL]
	if m == nil {
		m = &sync.Mutex{}
		k.preparing[a.URL] = m
	}
	k.mu.Unlock()
	m.Lock()
	defer m.Unlock()
	k.mu.Lock()
	done := k.prepared[a.URL]
	k.mu.Unlock()
	if done {
		return nil
	}
	be, err := backendurl.Open(ctx, a.URL, backendurl.WithCredentials(a.AccessKey, a.SecretKey), backendurl.WithLogger(log))
	if err != nil {
		return err
	}
	defer be.Close()
	opts := store.Options{Logger: log}
	repo, err := store.OpenWithoutIndex(ctx, be, a.Key, opts)
	switch {
	case errors.Is(err, store.ErrWrongKey):
		repo, err = store.OpenWithoutIndex(ctx, be, k.master, opts)
		if errors.Is(err, store.ErrWrongKey) {
			err = fmt.Errorf("%w: the repository was made with another master key than this control plane's; give the control plane that key file (--store-key)", err)
		}
	case errors.Is(err, store.ErrNotInitialized):
		repo, err = store.Init(ctx, be, k.master, opts)
		if errors.Is(err, store.ErrExists) { // made meanwhile by another control plane
			repo, err = store.OpenWithoutIndex(ctx, be, k.master, opts)
		}
	}
	if err != nil {
		return err
	}
	defer repo.Close()
	for _, key := range []store.MasterKey{k.master, a.Key} {
		if err := repo.AddKey(ctx, key); err != nil {
			return err
		}
	}
	k.mu.Lock()
	k.prepared[a.URL] = true
	k.mu.Unlock()
	return nil
}

// checkCredentialsStore refuses credentials for a store that takes none.
func checkCredentialsStore(url string) error {
	if !strings.HasPrefix(url, "s3://") {
		return api.Invalid("staging store %s takes no credentials: they are an S3 access key and secret key, for s3:// stores", url)
	}
	return nil
}

// wrapCredentials seals a store's credentials with the master key, bound to its URL.
func (cp *ControlPlane) wrapCredentials(url string, c api.S3Credentials) []byte {
	b, _ := json.Marshal(c)
	return cp.keys.master.Wrap(b, storeCredentialsAAD+url)
}

func (cp *ControlPlane) unwrapCredentials(st db.StagingStore) (api.S3Credentials, error) {
	var c api.S3Credentials
	b, err := cp.keys.master.Unwrap(st.Credentials, storeCredentialsAAD+st.URL)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil {
		return c, fmt.Errorf("the credentials of staging store %s do not open with this master key: %w", st.URL, err)
	}
	return c, nil
}

// checkSettingsStore checks the staging store URL of replication settings an admin
// sets, when it differs from the one in force: it must be one of the account's stores
// (a system admin naming a store no account has gives it to the system account). It
// returns the URL to record, in canonical form.
func (c *call) checkSettingsStore(tx *db.Tx, current, next string) (string, error) {
	if next == current {
		return next, nil
	}
	u, err := canonicalStoreURL(next)
	if err != nil {
		return "", err
	}
	st, err := tx.StagingStore(u)
	switch {
	case err == nil && st.AccountID == c.p.AccountID:
		return u, nil
	case err != nil && !errors.Is(err, db.ErrNotFound):
		return "", err
	case err != nil && c.p.System:
		return u, c.addStore(tx, c.p.AccountID, u, nil)
	case c.p.System:
		return "", api.Conflict("staging store %s is another account's: each store belongs to one account; choose another URL", u)
	}
	return "", api.Forbidden("staging store %s is not one of this account's stores (%s): only a system administrator gives an account a store (lifeboat accounts update %s --staging-store URL)",
		next, strings.Join(c.storeURLs(tx), ", "), c.p.AccountID)
}

// storeURLs lists the caller's account's stores, for messages.
func (c *call) storeURLs(tx *db.Tx) []string {
	stores, _ := tx.StagingStores(c.p.AccountID)
	var out []string
	for _, s := range stores {
		out = append(out, s.URL)
	}
	return out
}

// addStore gives an account a store (canonical URL) that no account has, and audits it.
func (c *call) addStore(tx *db.Tx, accountID, url string, creds *api.S3Credentials) error {
	st := db.StagingStore{URL: url, AccountID: accountID, CreatedAt: c.cp.cfg.Now()}
	if creds != nil {
		if err := checkCredentialsStore(url); err != nil {
			return err
		}
		st.Credentials = c.cp.wrapCredentials(url, *creds)
	}
	if err := tx.AddStagingStore(st); errors.Is(err, db.ErrConflict) {
		return api.Conflict("staging store %s is another account's: each store belongs to one account; choose another URL", url)
	} else if err != nil {
		return err
	}
	return c.recordBoth(tx, accountID, "staging-store.add", "staging-store", url, map[string]any{"credentials": creds != nil})
}

// recordBoth audits a change in the account it is about and, when a system admin of
// another account made it, in theirs too.
func (c *call) recordBoth(tx *db.Tx, accountID, action, targetKind, targetID string, detail map[string]any) error {
	if err := c.record(tx, accountID, action, targetKind, targetID, detail, nil); err != nil {
		return err
	}
	if accountID == c.p.AccountID {
		return nil
	}
	return c.record(tx, c.p.AccountID, action, targetKind, targetID, detail, nil)
}

// stagingStoreKey gives a replicator the key of a staging store of its account (and the
// store's credentials), once the store's repository opens with it. Audited.
func (c *call) stagingStoreKey(req *api.StagingStoreKeyRequest) (api.StagingStoreKeyResponse, error) {
	a, err := c.cp.storeAccess(c.ctx, c.p.AccountID, req.StagingStoreURL)
	if err != nil {
		return api.StagingStoreKeyResponse{}, err
	}
	out := api.StagingStoreKeyResponse{StagingStoreURL: a.URL, AccountID: c.p.AccountID, Key: a.Key[:], KeyFingerprint: a.Key.Fingerprint()}
	if a.AccessKey != "" {
		out.Credentials = &api.S3Credentials{AccessKey: a.AccessKey, SecretKey: a.SecretKey}
	}
	err = c.update(func(tx *db.Tx) error {
		return c.record(tx, c.p.AccountID, "staging-store.issue-key", "staging-store", a.URL,
			map[string]any{"replicator": c.p.ID, "keyFingerprint": out.KeyFingerprint, "credentials": out.Credentials != nil}, nil)
	})
	return out, err
}
