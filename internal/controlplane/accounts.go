package controlplane

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

func (cp *ControlPlane) health(c *call) (api.Health, error) {
	if err := cp.db.Ping(c.ctx); err != nil {
		return api.Health{}, api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable, "the database does not answer: %v", err)
	}
	return api.Health{Status: "ok", Version: cp.cfg.Version, Database: string(cp.db.Kind()), Coordinator: cp.Coordinating()}, nil
}

func (cp *ControlPlane) caCert(*call) (api.CAResponse, error) {
	return api.CAResponse{CACertificates: string(cp.ca.ControlPlane.CertPEM())}, nil
}

func whoami(c *call) (api.Whoami, error) {
	return api.Whoami{Kind: c.p.Kind, AccountID: c.p.AccountID, ID: c.p.ID, Role: c.p.Role, System: c.p.System}, nil
}

// accountView adds the live count of replicating servers and the staging stores to an
// account row (the template's store first).
func accountView(tx *db.Tx, a db.Account) (api.Account, error) {
	n, err := tx.CountReplicating(a.ID)
	if err != nil {
		return a.Account, err
	}
	a.ReplicatingSourceServers = n
	stores, err := tx.StagingStores(a.ID)
	a.StagingStores = []api.StagingStore{}
	for _, s := range stores {
		v := api.StagingStore{URL: s.URL, HasCredentials: s.Credentials != nil}
		if s.URL == a.Template.StagingStoreURL {
			a.StagingStores = append([]api.StagingStore{v}, a.StagingStores...)
		} else {
			a.StagingStores = append(a.StagingStores, v)
		}
	}
	return a.Account, err
}

func (c *call) getAccount() (api.Account, error) {
	var out api.Account
	err := c.view(func(tx *db.Tx) error {
		a, err := tx.Account(c.p.AccountID)
		if err != nil {
			return err
		}
		out, err = accountView(tx, a)
		return err
	})
	return out, err
}

func (c *call) listAccounts() (api.AccountList, error) {
	out := api.AccountList{Items: []api.Account{}}
	err := c.view(func(tx *db.Tx) error {
		as, err := tx.Accounts()
		if err != nil {
			return err
		}
		for _, a := range as {
			v, err := accountView(tx, a)
			if err != nil {
				return err
			}
			out.Items = append(out.Items, v)
		}
		return nil
	})
	return out, err
}

func (c *call) createAccount(req *api.CreateAccountRequest) (api.CreateAccountResponse, error) {
	now := c.cp.cfg.Now()
	quota := api.DefaultQuotaSourceServers
	if req.QuotaSourceServers != nil {
		quota = *req.QuotaSourceServers
	}
	var sys db.Account
	if err := c.view(func(tx *db.Tx) (err error) { sys, err = tx.Account(c.cp.system); return err }); err != nil {
		return api.CreateAccountResponse{}, err
	}
	// A new account starts from the system account's template, with its own staging
	// store: the one given, or its default one.
	a := db.Account{Account: api.Account{ID: api.NewID(api.PrefixAccount), Name: req.Name, QuotaSourceServers: quota, CreatedAt: now},
		Template: sys.Template}
	a.Template.TargetSite = api.DefaultSite
	a.Template.DedicatedReplicator = ""
	storeURL, err := c.accountStoreURL(a.ID, req.StagingStoreURL)
	if err != nil {
		return api.CreateAccountResponse{}, err
	}
	a.Template.StagingStoreURL = storeURL
	tok, row, err := c.cp.newToken(a.ID, api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin,
		Description: "first admin token of account " + req.Name}, c.p, now)
	if err != nil {
		return api.CreateAccountResponse{}, err
	}
	var out api.Account
	err = c.update(func(tx *db.Tx) error {
		if err := tx.CreateAccount(a); err != nil {
			if errors.Is(err, db.ErrConflict) {
				return api.Conflict("an account named %q exists already: choose another name", req.Name)
			}
			return err
		}
		if err := tx.CreateSite(a.ID, api.Site{ID: api.DefaultSite, Description: "created with the account",
			Provider: api.ProviderQEMU, CreatedAt: now}); err != nil {
			return err
		}
		if err := tx.CreateToken(row); err != nil {
			return err
		}
		if err := c.recordBoth(tx, a.ID, "account.create", "account", a.ID,
			map[string]any{"name": a.Name, "quotaSourceServers": quota, "stagingStore": storeURL}); err != nil {
			return err
		}
		if err := c.addStore(tx, a.ID, storeURL, req.StagingStoreCredentials); err != nil {
			return err
		}
		out, err = accountView(tx, a)
		return err
	})
	if err != nil {
		return api.CreateAccountResponse{}, err
	}
	return api.CreateAccountResponse{Account: out, AdminToken: tok.String()}, nil
}

// accountStoreURL is the canonical store URL a system admin asks for an account: the
// one given, or with "" or "default" the account's default store.
func (c *call) accountStoreURL(accountID, raw string) (string, error) {
	if raw == "" || raw == api.DefaultStagingStore {
		return c.cp.defaultStoreURL(accountID)
	}
	return canonicalStoreURL(raw)
}

func (c *call) updateAccount(req *api.UpdateAccountRequest) (api.Account, error) {
	var out api.Account
	err := c.update(func(tx *db.Tx) error {
		a, err := tx.Account(c.pathID())
		if errors.Is(err, db.ErrNotFound) {
			return api.NotFound("account %s was not found: see lifeboat accounts list", c.pathID())
		}
		if err != nil {
			return err
		}
		if req.QuotaSourceServers != nil {
			if err := tx.SetAccountQuota(a.ID, *req.QuotaSourceServers, c.cp.cfg.Now()); err != nil {
				return err
			}
			detail := map[string]any{"quotaSourceServers": *req.QuotaSourceServers, "previous": a.QuotaSourceServers}
			if err := c.recordBoth(tx, a.ID, "account.set-quota", "account", a.ID, detail); err != nil {
				return err
			}
			a.QuotaSourceServers = *req.QuotaSourceServers
		}
		if req.StagingStoreURL != nil {
			if err := c.setAccountStore(tx, &a, *req.StagingStoreURL, req.StagingStoreCredentials); err != nil {
				return err
			}
		}
		out, err = accountView(tx, a)
		return err
	})
	if err == nil && req.StagingStoreURL != nil {
		c.cp.serverChanged("")
	}
	return out, err
}

// setAccountStore gives an account a store (if it has it not yet) and makes it its
// template's; the account's earlier stores stay its own, so their PITs stay readable.
func (c *call) setAccountStore(tx *db.Tx, a *db.Account, raw string, creds *api.S3Credentials) error {
	u, err := c.accountStoreURL(a.ID, raw)
	if err != nil {
		return err
	}
	st, err := tx.StagingStore(u)
	switch {
	case errors.Is(err, db.ErrNotFound):
		err = c.addStore(tx, a.ID, u, creds)
	case err != nil:
	case st.AccountID != a.ID:
		err = api.Conflict("staging store %s is account %s's: each store belongs to one account; choose another URL", u, st.AccountID)
	case creds != nil:
		if err = checkCredentialsStore(u); err == nil {
			err = tx.SetStagingStoreCredentials(u, c.cp.wrapCredentials(u, *creds), c.cp.cfg.Now())
		}
		if err == nil {
			err = c.recordBoth(tx, a.ID, "staging-store.set-credentials", "staging-store", u, nil)
		}
	}
	if err != nil {
		return err
	}
	previous := a.Template.StagingStoreURL
	a.Template.StagingStoreURL = u
	if err := tx.SetReplicationTemplate(a.ID, a.Template, c.cp.cfg.Now()); err != nil {
		return err
	}
	return c.recordBoth(tx, a.ID, "account.set-staging-store", "account", a.ID, map[string]any{"stagingStore": u, "previous": previous})
}

// newToken makes a token and its row (not stored yet) from a validated request.
func (cp *ControlPlane) newToken(accountID string, req api.CreateTokenRequest, by principal, now time.Time) (pki.Token, db.Token, error) {
	tok, err := pki.NewToken(req.Kind == api.TokenInstall, cp.pin)
	if err != nil {
		return tok, db.Token{}, err
	}
	kind, id := by.actor()
	row := db.Token{Token: api.Token{ID: tok.ID, Kind: req.Kind, Role: req.Role, Scope: req.Scope, Description: req.Description,
		AllowReplace: req.AllowReplace, CreatedBy: kind + ":" + id, CreatedAt: now}, AccountID: accountID, SecretHash: tok.Hash()}
	ttl := time.Duration(req.TTLSeconds) * time.Second
	if req.Kind == api.TokenInstall {
		if row.Scope == "" {
			row.Scope = api.ScopeSourceServer
		}
		if ttl == 0 {
			ttl = api.DefaultInstallTokenTTL
		}
	}
	if ttl > 0 {
		exp := now.Add(ttl)
		row.ExpiresAt = &exp
	}
	if req.Uses > 0 {
		n := req.Uses
		row.UsesLeft = &n
	}
	return tok, row, nil
}

func (c *call) createToken(req api.CreateTokenRequest) (api.CreateTokenResponse, error) {
	if err := req.Validate(); err != nil {
		return api.CreateTokenResponse{}, err
	}
	tok, row, err := c.cp.newToken(c.p.AccountID, req, c.p, c.cp.cfg.Now())
	if err != nil {
		return api.CreateTokenResponse{}, err
	}
	err = c.update(func(tx *db.Tx) error {
		if err := tx.CreateToken(row); err != nil {
			return err
		}
		detail := map[string]any{"kind": row.Kind}
		if row.Role != "" {
			detail["role"] = row.Role
		}
		if row.Scope != "" {
			detail["scope"] = row.Scope
		}
		if row.ExpiresAt != nil {
			detail["expiresAt"] = row.ExpiresAt
		}
		if row.UsesLeft != nil {
			detail["uses"] = *row.UsesLeft
		}
		if row.AllowReplace {
			detail["allowReplace"] = true
		}
		return c.record(tx, c.p.AccountID, "token.create", "token", row.ID, detail, nil)
	})
	return api.CreateTokenResponse{Token: row.Token, Secret: tok.String()}, err
}

func (c *call) listTokens() (api.TokenList, error) {
	out := api.TokenList{Items: []api.Token{}}
	err := c.view(func(tx *db.Tx) error {
		ts, err := tx.Tokens(c.p.AccountID)
		for _, t := range ts {
			out.Items = append(out.Items, t.Token)
		}
		return err
	})
	return out, err
}

func (c *call) revokeToken() (noBody, error) {
	id := c.pathID()
	return noBody{}, c.update(func(tx *db.Tx) error {
		if err := tx.RevokeToken(c.p.AccountID, id, c.cp.cfg.Now()); errors.Is(err, db.ErrNotFound) {
			return api.NotFound("token %s was not found or is revoked already: see lifeboat tokens list", id)
		} else if err != nil {
			return err
		}
		return c.record(tx, c.p.AccountID, "token.revoke", "token", id, nil, nil)
	})
}

func (c *call) listAudit() (api.AuditList, error) {
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return api.AuditList{}, err
	}
	f := api.AuditFilter{TargetID: q.Get("target"), Action: q.Get("action"), Limit: limit, PageToken: q.Get("page_token")}
	var out api.AuditList
	err = c.view(func(tx *db.Tx) (err error) {
		out.Items, out.NextPageToken, err = tx.ListAudit(c.p.AccountID, f)
		return err
	})
	return out, err
}

// limitParam parses ?limit=.
func limitParam(s string) (int, error) {
	if s == "" {
		return api.DefaultPageSize, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > api.MaxPageSize {
		return 0, api.Invalid("limit must be 1 to %d, not %q", api.MaxPageSize, s)
	}
	return n, nil
}
