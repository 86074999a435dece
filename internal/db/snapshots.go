package db

import (
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// Snapshot is a recovery snapshot row.
type Snapshot struct {
	api.RecoverySnapshot
	AccountID string
}

const snapshotCols = `id, account_id, source_server_id, replicator_id, taken_at, level, volumes, size_bytes, lock_until, created_at, manifest_digest, staging_store_id, group_point_id`

func scanSnapshot(row interface{ Scan(...any) error }) (Snapshot, error) {
	var s Snapshot
	var taken, created int64
	var volumes string
	var lock sql.NullInt64
	err := row.Scan(&s.ID, &s.AccountID, &s.SourceServerID, &s.ReplicatorID, &taken, &s.Level, &volumes, &s.SizeBytes,
		&lock, &created, &s.ManifestDigest, &s.StagingStoreID, &s.GroupPointID)
	if err != nil {
		return s, classify(err)
	}
	s.Time = fromMS(taken)
	s.CreatedAt = fromMS(created)
	s.LockUntil = optTime(lock)
	if err := json.Unmarshal([]byte(volumes), &s.Volumes); err != nil {
		return s, fmt.Errorf("snapshot %s: unreadable volumes: %w", s.ID, err)
	}
	return s, nil
}

// CreateSnapshot inserts a recovery snapshot. ErrConflict if its id exists.
func (t *Tx) CreateSnapshot(s Snapshot) error {
	volumes, err := jsonText(s.Volumes)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO recovery_snapshots (`+snapshotCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		s.ID, s.AccountID, s.SourceServerID, s.ReplicatorID, ms(s.Time), s.Level, volumes, s.SizeBytes,
		nullMS(s.LockUntil), ms(s.CreatedAt), s.ManifestDigest, s.StagingStoreID, s.GroupPointID)
	return err
}

// Snapshot returns a recovery snapshot by id.
func (t *Tx) Snapshot(id string) (Snapshot, error) {
	return scanSnapshot(t.queryRow(`SELECT `+snapshotCols+` FROM recovery_snapshots WHERE id = ?`, id))
}

// DeleteSnapshot deletes a recovery snapshot.
func (t *Tx) DeleteSnapshot(id string) error {
	return t.execOne(`DELETE FROM recovery_snapshots WHERE id = ?`, id)
}

// CountSnapshots counts a source server's recovery snapshots.
func (t *Tx) CountSnapshots(sourceServerID string) (int, error) {
	var n int
	err := t.queryRow(`SELECT COUNT(*) FROM recovery_snapshots WHERE source_server_id = ?`, sourceServerID).Scan(&n)
	return n, classify(err)
}

// CountLockedSnapshots counts a source server's snapshots locked beyond now.
func (t *Tx) CountLockedSnapshots(sourceServerID string, now time.Time) (int, error) {
	var n int
	err := t.queryRow(`SELECT COUNT(*) FROM recovery_snapshots WHERE source_server_id = ? AND lock_until > ?`,
		sourceServerID, ms(now)).Scan(&n)
	return n, classify(err)
}

// ListSnapshots returns a page of a source server's snapshots, newest first.
func (t *Tx) ListSnapshots(sourceServerID string, limit int, pageToken string) ([]Snapshot, string, error) {
	return t.FindSnapshots(sourceServerID, SnapshotFilter{}, limit, pageToken)
}

// SnapshotFilter narrows a listing of a server's snapshots. After is inclusive, Before
// exclusive (each only when given); Level, when given, is the only level listed.
type SnapshotFilter struct {
	After, Before *time.Time
	Level         *consistency.Level
}

// where is the filter as SQL conditions (each with a leading AND) and their arguments.
func (f SnapshotFilter) where() (string, []any) {
	cond, args := "", []any{}
	if f.After != nil {
		cond += ` AND taken_at >= ?`
		args = append(args, ms(*f.After))
	}
	if f.Before != nil {
		cond += ` AND taken_at < ?`
		args = append(args, ms(*f.Before))
	}
	if f.Level != nil {
		// Served by recovery_snapshots_level (0008_rpo.sql): a rare level among a
		// server's many PITs is found without reading the others.
		cond += ` AND level = ?`
		args = append(args, *f.Level)
	}
	return cond, args
}

// FindSnapshots returns a page of a source server's snapshots that pass f, newest first.
// A page token is a position in that order: the next page's request gives it with the
// same filter.
func (t *Tx) FindSnapshots(sourceServerID string, f SnapshotFilter, limit int, pageToken string) ([]Snapshot, string, error) {
	cond, fargs := f.where()
	args := append([]any{sourceServerID}, fargs...)
	if pageToken != "" {
		at, id, err := decodeTimeCursor(pageToken, api.PrefixSnapshot)
		if err != nil {
			return nil, "", err
		}
		// taken_at <= ? bounds the index range, so a deep page seeks to its place
		// instead of reading every newer PIT.
		cond += ` AND taken_at <= ? AND (taken_at < ? OR (taken_at = ? AND id > ?))`
		args = append(args, at, at, at, id)
	}
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	args = append(args, limit+1)
	rows, err := t.query(`SELECT `+snapshotCols+` FROM recovery_snapshots WHERE source_server_id = ?`+cond+
		` ORDER BY taken_at DESC, id LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	var out []Snapshot
	for rows.Next() {
		s, err := scanSnapshot(rows)
		if err != nil {
			return nil, "", err
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, "", classify(err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = encodeTimeCursor(ms(last.Time), last.ID)
	}
	return out, next, nil
}

func encodeTimeCursor(at int64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(at, 10) + "|" + id))
}

func decodeTimeCursor(tok, prefix string) (int64, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, "", ErrBadPageToken
	}
	a, id, ok := strings.Cut(string(b), "|")
	at, err := strconv.ParseInt(a, 10, 64)
	if !ok || err != nil || !api.ValidID(prefix, id) {
		return 0, "", ErrBadPageToken
	}
	return at, id, nil
}

// LaunchSettings returns a source server's launch settings and when they last changed;
// ErrNotFound when none were stored.
func (t *Tx) LaunchSettings(sourceServerID string) (api.LaunchSettings, time.Time, error) {
	var l api.LaunchSettings
	var doc string
	var updated int64
	err := t.queryRow(`SELECT settings, updated_at FROM launch_settings WHERE source_server_id = ?`, sourceServerID).
		Scan(&doc, &updated)
	if err != nil {
		return l, time.Time{}, classify(err)
	}
	if err := json.Unmarshal([]byte(doc), &l); err != nil {
		return l, time.Time{}, fmt.Errorf("launch settings of %s are unreadable: %w", sourceServerID, err)
	}
	return l, fromMS(updated), nil
}

// SetLaunchSettings stores a source server's launch settings.
func (t *Tx) SetLaunchSettings(sourceServerID string, l api.LaunchSettings, now time.Time) error {
	doc, err := jsonText(l)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO launch_settings (source_server_id, settings, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (source_server_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at`,
		sourceServerID, doc, ms(now))
	return err
}

// CountActiveRecoveryInstances counts a source server's recovery instances that are not
// terminated.
func (t *Tx) CountActiveRecoveryInstances(sourceServerID string) (int, error) {
	var n int
	err := t.queryRow(`SELECT COUNT(*) FROM recovery_instances WHERE source_server_id = ? AND terminated_at IS NULL`,
		sourceServerID).Scan(&n)
	return n, classify(err)
}

// InstanceExists reports whether an account has a registered instance with this id.
func (t *Tx) InstanceExists(accountID, id string) (bool, error) {
	var n int
	err := t.queryRow(`SELECT COUNT(*) FROM instances WHERE account_id = ? AND id = ?`, accountID, id).Scan(&n)
	return n > 0, classify(err)
}
