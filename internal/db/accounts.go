package db

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Account is an account row: the API's view plus its replication settings template.
type Account struct {
	api.Account
	Template api.ReplicationSettings
}

const accountCols = `id, name, is_system, quota_source_servers, replication_template, created_at`

func scanAccount(row interface{ Scan(...any) error }) (Account, error) {
	var a Account
	var system int64
	var tmpl string
	var created int64
	if err := row.Scan(&a.ID, &a.Name, &system, &a.QuotaSourceServers, &tmpl, &created); err != nil {
		return a, classify(err)
	}
	a.System = system != 0
	a.CreatedAt = fromMS(created)
	if err := json.Unmarshal([]byte(tmpl), &a.Template); err != nil {
		return a, fmt.Errorf("account %s has an unreadable replication template: %w", a.ID, err)
	}
	return a, nil
}

// CreateAccount inserts an account.
func (t *Tx) CreateAccount(a Account) error {
	tmpl, err := json.Marshal(a.Template)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO accounts (`+accountCols+`, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		a.ID, a.Name, boolInt(a.System), a.QuotaSourceServers, string(tmpl), ms(a.CreatedAt), ms(a.CreatedAt))
	return err
}

// Account returns an account by id.
func (t *Tx) Account(id string) (Account, error) {
	return scanAccount(t.queryRow(`SELECT `+accountCols+` FROM accounts WHERE id = ?`, id))
}

// LockAccount returns an account and, on PostgreSQL, locks its row until the
// transaction ends, so checks against its quota cannot race.
func (t *Tx) LockAccount(id string) (Account, error) {
	return scanAccount(t.queryRow(`SELECT `+accountCols+` FROM accounts WHERE id = ?`+t.forUpdate(), id))
}

// SystemAccount returns the system account (the first one created).
func (t *Tx) SystemAccount() (Account, error) {
	return scanAccount(t.queryRow(`SELECT ` + accountCols + ` FROM accounts WHERE is_system = 1`))
}

// Accounts lists all accounts by name.
func (t *Tx) Accounts() ([]Account, error) {
	rows, err := t.query(`SELECT ` + accountCols + ` FROM accounts ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Account
	for rows.Next() {
		a, err := scanAccount(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// SetAccountQuota changes an account's source server quota.
func (t *Tx) SetAccountQuota(id string, quota int, now time.Time) error {
	return t.execOne(`UPDATE accounts SET quota_source_servers = ?, updated_at = ? WHERE id = ?`, quota, ms(now), id)
}

// SetReplicationTemplate replaces an account's replication settings template.
func (t *Tx) SetReplicationTemplate(id string, s api.ReplicationSettings, now time.Time) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return t.execOne(`UPDATE accounts SET replication_template = ?, updated_at = ? WHERE id = ?`, string(b), ms(now), id)
}

// CountReplicating counts an account's source servers that count against its quota:
// all but those whose replication is STOPPED.
func (t *Tx) CountReplicating(accountID string) (int, error) {
	var n int
	err := t.queryRow(`SELECT COUNT(*) FROM source_servers WHERE account_id = ? AND data_replication_state <> ?`,
		accountID, api.StateStopped).Scan(&n)
	return n, classify(err)
}
