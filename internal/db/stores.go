package db

import (
	"encoding/base64"
	"fmt"
	"time"
)

// AccountKey is an account's key as stored: wrapped by the control plane's master key.
type AccountKey struct {
	AccountID         string
	Wrapped           []byte
	MasterFingerprint string
	CreatedAt         time.Time
}

// AccountKey returns an account's wrapped key; ErrNotFound when it has none yet.
func (t *Tx) AccountKey(accountID string) (AccountKey, error) {
	k := AccountKey{AccountID: accountID}
	var wrapped string
	var created int64
	err := t.queryRow(`SELECT wrapped, master_fingerprint, created_at FROM account_keys WHERE account_id = ?`, accountID).
		Scan(&wrapped, &k.MasterFingerprint, &created)
	if err != nil {
		return k, classify(err)
	}
	k.CreatedAt = fromMS(created)
	if k.Wrapped, err = base64.StdEncoding.DecodeString(wrapped); err != nil {
		return k, fmt.Errorf("the key of account %s is unreadable in the database: %w", accountID, err)
	}
	return k, nil
}

// CreateAccountKey stores an account's wrapped key; ErrConflict when it has one.
func (t *Tx) CreateAccountKey(k AccountKey) error {
	_, err := t.exec(`INSERT INTO account_keys (account_id, wrapped, master_fingerprint, created_at) VALUES (?, ?, ?, ?)`,
		k.AccountID, base64.StdEncoding.EncodeToString(k.Wrapped), k.MasterFingerprint, ms(k.CreatedAt))
	return err
}

// MasterFingerprints lists the fingerprints of the master keys that wrapped account keys.
func (t *Tx) MasterFingerprints() ([]string, error) {
	rows, err := t.query(`SELECT DISTINCT master_fingerprint FROM account_keys ORDER BY master_fingerprint`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var fp string
		if err := rows.Scan(&fp); err != nil {
			return nil, err
		}
		out = append(out, fp)
	}
	return out, rows.Err()
}

// StagingStore is a staging store and the account it belongs to.
type StagingStore struct {
	URL       string // canonical
	AccountID string
	// Credentials are the store's own S3 credentials wrapped by the master key; nil:
	// the environment's.
	Credentials []byte
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

const stagingStoreCols = `url, account_id, credentials, created_at, updated_at`

func scanStagingStore(row interface{ Scan(...any) error }) (StagingStore, error) {
	var s StagingStore
	var creds string
	var created, updated int64
	if err := row.Scan(&s.URL, &s.AccountID, &creds, &created, &updated); err != nil {
		return s, classify(err)
	}
	s.CreatedAt, s.UpdatedAt = fromMS(created), fromMS(updated)
	if creds != "" {
		var err error
		if s.Credentials, err = base64.StdEncoding.DecodeString(creds); err != nil {
			return s, fmt.Errorf("the credentials of staging store %s are unreadable in the database: %w", s.URL, err)
		}
	}
	return s, nil
}

// StagingStore returns the store with this canonical URL; ErrNotFound when no account has it.
func (t *Tx) StagingStore(url string) (StagingStore, error) {
	return scanStagingStore(t.queryRow(`SELECT `+stagingStoreCols+` FROM staging_stores WHERE url = ?`, url))
}

// AddStagingStore gives an account a store; ErrConflict when the URL belongs to an account already.
func (t *Tx) AddStagingStore(s StagingStore) error {
	_, err := t.exec(`INSERT INTO staging_stores (`+stagingStoreCols+`) VALUES (?, ?, ?, ?, ?)`,
		s.URL, s.AccountID, encodeOptional(s.Credentials), ms(s.CreatedAt), ms(s.CreatedAt))
	return err
}

// StagingStores lists an account's stores by URL.
func (t *Tx) StagingStores(accountID string) ([]StagingStore, error) {
	rows, err := t.query(`SELECT `+stagingStoreCols+` FROM staging_stores WHERE account_id = ? ORDER BY url`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []StagingStore
	for rows.Next() {
		s, err := scanStagingStore(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// SetStagingStoreCredentials replaces a store's wrapped credentials (nil: none).
func (t *Tx) SetStagingStoreCredentials(url string, wrapped []byte, now time.Time) error {
	return t.execOne(`UPDATE staging_stores SET credentials = ?, updated_at = ? WHERE url = ?`, encodeOptional(wrapped), ms(now), url)
}

func encodeOptional(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}
