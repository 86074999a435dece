package db

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// FailbackClient is a failback client row.
type FailbackClient struct {
	api.FailbackClient
	AccountID  string
	SecretHash string // hex SHA-256 of its secret
}

const failbackClientCols = `id, account_id, hostname, disks, secret_hash, assignment, progress, created_at, last_seen_at`

func scanFailbackClient(row interface{ Scan(...any) error }) (FailbackClient, error) {
	var c FailbackClient
	var disks, assignment, progress string
	var created, seen int64
	if err := row.Scan(&c.ID, &c.AccountID, &c.Hostname, &disks, &c.SecretHash, &assignment, &progress, &created, &seen); err != nil {
		return c, classify(err)
	}
	c.CreatedAt, c.LastSeenAt = fromMS(created), fromMS(seen)
	if err := json.Unmarshal([]byte(disks), &c.Disks); err != nil {
		return c, fmt.Errorf("failback client %s: unreadable disks: %w", c.ID, err)
	}
	for doc, v := range map[string]any{assignment: &c.Assignment, progress: &c.Progress} {
		if doc == "" {
			continue
		}
		if err := json.Unmarshal([]byte(doc), v); err != nil {
			return c, fmt.Errorf("failback client %s: unreadable column: %w", c.ID, err)
		}
	}
	return c, nil
}

// CreateFailbackClient records a failback client.
func (t *Tx) CreateFailbackClient(c FailbackClient) error {
	disks, err := jsonText(c.Disks)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO failback_clients (`+failbackClientCols+`) VALUES (?, ?, ?, ?, ?, '', '', ?, ?)`,
		c.ID, c.AccountID, c.Hostname, disks, c.SecretHash, ms(c.CreatedAt), ms(c.LastSeenAt))
	return err
}

// FailbackClient returns a failback client by id.
func (t *Tx) FailbackClient(id string) (FailbackClient, error) {
	return scanFailbackClient(t.queryRow(`SELECT `+failbackClientCols+` FROM failback_clients WHERE id = ?`, id))
}

// FailbackClients lists an account's failback clients, newest first.
func (t *Tx) FailbackClients(accountID string) ([]FailbackClient, error) {
	rows, err := t.query(`SELECT `+failbackClientCols+` FROM failback_clients WHERE account_id = ? ORDER BY created_at DESC, id LIMIT 1000`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []FailbackClient
	for rows.Next() {
		c, err := scanFailbackClient(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, classify(rows.Err())
}

// SetFailbackAssignment gives a failback client what to write (nil: nothing), and
// clears its progress.
func (t *Tx) SetFailbackAssignment(id string, a *api.FailbackAssignment) error {
	doc := ""
	if a != nil {
		b, err := json.Marshal(a)
		if err != nil {
			return err
		}
		doc = string(b)
	}
	return t.execOne(`UPDATE failback_clients SET assignment = ?, progress = '' WHERE id = ?`, doc, id)
}

// SetFailbackProgress records a failback client's report, and that it was seen.
func (t *Tx) SetFailbackProgress(id string, p *api.FailbackProgress, now time.Time) error {
	doc := ""
	if p != nil {
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		doc = string(b)
	}
	return t.execOne(`UPDATE failback_clients SET progress = ?, last_seen_at = ? WHERE id = ?`, doc, ms(now), id)
}

// TouchFailbackClient records that a failback client called.
func (t *Tx) TouchFailbackClient(id string, now time.Time) error {
	return t.execOne(`UPDATE failback_clients SET last_seen_at = ? WHERE id = ?`, ms(now), id)
}
