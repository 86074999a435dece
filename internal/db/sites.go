package db

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// siteCols are a site's columns; whether it has credentials is read from
// site_credentials without reading them.
const siteCols = `id, description, provider, uri, pool,
	(SELECT COUNT(*) FROM site_credentials c WHERE c.account_id = sites.account_id AND c.site_id = sites.id),
	created_at`

func scanSite(row interface{ Scan(...any) error }) (api.Site, error) {
	var s api.Site
	var creds int
	var created int64
	if err := row.Scan(&s.ID, &s.Description, &s.Provider, &s.URI, &s.Pool, &creds, &created); err != nil {
		return s, classify(err)
	}
	s.HasCredentials = creds > 0
	s.CreatedAt = fromMS(created)
	return s, nil
}

// CreateSite inserts a site (provider qemu when s.Provider is empty); its credentials,
// if any, are stored apart with PutSiteCredentials.
func (t *Tx) CreateSite(accountID string, s api.Site) error {
	if s.Provider == "" {
		s.Provider = api.ProviderQEMU
	}
	_, err := t.exec(`INSERT INTO sites (account_id, id, description, provider, uri, pool, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		accountID, s.ID, s.Description, s.Provider, s.URI, s.Pool, ms(s.CreatedAt))
	return err
}

// Site returns a site.
func (t *Tx) Site(accountID, id string) (api.Site, error) {
	return scanSite(t.queryRow(`SELECT `+siteCols+` FROM sites WHERE account_id = ? AND id = ?`, accountID, id))
}

// Sites lists an account's sites by id.
func (t *Tx) Sites(accountID string) ([]api.Site, error) {
	rows, err := t.query(`SELECT `+siteCols+` FROM sites WHERE account_id = ? ORDER BY id`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Site{}
	for rows.Next() {
		s, err := scanSite(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// DeleteSite deletes a site and its credentials; ErrReferenced if servers,
// replicators or instances use it.
func (t *Tx) DeleteSite(accountID, id string) error {
	return t.execOne(`DELETE FROM sites WHERE account_id = ? AND id = ?`, accountID, id)
}

// SiteCredentialsAAD binds a site's sealed credentials to its account and id: sealed
// for one site, they do not open for another (store.MasterKey.Wrap's aad).
func SiteCredentialsAAD(accountID, siteID string) string {
	return "lifeboat site credentials\x00" + accountID + "\x00" + siteID
}

// PutSiteCredentials stores or replaces a site's credentials, sealed by the master key
// with SiteCredentialsAAD. ErrReferenced when the site does not exist.
func (t *Tx) PutSiteCredentials(accountID, siteID string, sealed []byte, now time.Time) error {
	if _, err := t.exec(`DELETE FROM site_credentials WHERE account_id = ? AND site_id = ?`, accountID, siteID); err != nil {
		return err
	}
	_, err := t.exec(`INSERT INTO site_credentials (account_id, site_id, sealed, updated_at) VALUES (?, ?, ?, ?)`,
		accountID, siteID, encodeOptional(sealed), ms(now))
	return err
}

// SiteCredentials returns a site's sealed credentials; ErrNotFound when it has none.
func (t *Tx) SiteCredentials(accountID, siteID string) ([]byte, error) {
	var text string
	err := t.queryRow(`SELECT sealed FROM site_credentials WHERE account_id = ? AND site_id = ?`, accountID, siteID).Scan(&text)
	if err != nil {
		return nil, classify(err)
	}
	b, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("the credentials of site %s are unreadable in the database: %w", siteID, err)
	}
	return b, nil
}

// SiteTarget is where a site launches recovery instances: its provider, libvirt URI and
// storage pool, and the credentials for that URI.
type SiteTarget struct {
	api.Site
	// Credentials are the site's credentials, opened: PEM client certificate, key and
	// CA for qemu+tls, or an SSH private key for qemu+ssh. Nil when it has none.
	Credentials []byte
}

// Unsealer opens what the control plane's master key sealed (store.MasterKey).
type Unsealer interface {
	Unwrap(sealed []byte, aad string) ([]byte, error)
}

// SiteLaunchTarget reads a site and opens its credentials with key, for a recovery
// runner about to launch into it. ErrNotFound when the account has no such site.
func (d *DB) SiteLaunchTarget(ctx context.Context, accountID, siteID string, key Unsealer) (SiteTarget, error) {
	var out SiteTarget
	var sealed []byte
	err := d.View(ctx, func(tx *Tx) (err error) {
		if out.Site, err = tx.Site(accountID, siteID); err != nil {
			return err
		}
		if !out.HasCredentials {
			return nil
		}
		sealed, err = tx.SiteCredentials(accountID, siteID)
		return err
	})
	if err != nil || len(sealed) == 0 {
		return out, err
	}
	if out.Credentials, err = key.Unwrap(sealed, SiteCredentialsAAD(accountID, siteID)); err != nil {
		return SiteTarget{}, fmt.Errorf("the credentials of site %s do not open with this control plane's master key: %w", siteID, err)
	}
	return out, nil
}
