package db

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// newAuditID returns an id that sorts by time: 16 hex digits of unix nanoseconds and 8
// random ones.
func newAuditID(at time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%016x%08x", at.UnixNano(), binary.BigEndian.Uint32(b[:]))
}

// AddAudit records a change in the audit log (in the transaction that made it) and
// returns the entry as stored.
func (t *Tx) AddAudit(accountID string, e api.AuditEntry) (api.AuditEntry, error) {
	if e.ID == "" {
		e.ID = newAuditID(e.Time)
	}
	detail := "{}"
	if len(e.Detail) > 0 {
		b, err := json.Marshal(e.Detail)
		if err != nil {
			return e, err
		}
		detail = string(b)
	}
	_, err := t.exec(`INSERT INTO audit_log (id, account_id, at, actor_kind, actor_id, action, target_kind, target_id, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, accountID, ms(e.Time), e.ActorKind, e.ActorID, e.Action, e.TargetKind, e.TargetID, detail)
	return e, err
}

// ListAudit returns a page of an account's audit log, newest first.
func (t *Tx) ListAudit(accountID string, f api.AuditFilter) ([]api.AuditEntry, string, error) {
	q := `SELECT id, at, actor_kind, actor_id, action, target_kind, target_id, detail FROM audit_log WHERE account_id = ?`
	args := []any{accountID}
	if f.TargetID != "" {
		q += ` AND target_id = ?`
		args = append(args, f.TargetID)
	}
	if f.Action != "" {
		q += ` AND action = ?`
		args = append(args, f.Action)
	}
	if f.PageToken != "" {
		if len(f.PageToken) != 24 {
			return nil, "", ErrBadPageToken
		}
		q += ` AND id < ?`
		args = append(args, f.PageToken)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit+1)
	rows, err := t.query(q, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	out := []api.AuditEntry{}
	for rows.Next() {
		var e api.AuditEntry
		var at int64
		var detail string
		if err := rows.Scan(&e.ID, &at, &e.ActorKind, &e.ActorID, &e.Action, &e.TargetKind, &e.TargetID, &detail); err != nil {
			return nil, "", err
		}
		e.Time = fromMS(at)
		if detail != "{}" {
			if err := json.Unmarshal([]byte(detail), &e.Detail); err != nil {
				return nil, "", fmt.Errorf("audit entry %s: unreadable detail: %w", e.ID, err)
			}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify(err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	}
	return out, next, nil
}
