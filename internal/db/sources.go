package db

import (
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// SourceServer is a source server row: the API's view plus what only the server uses.
type SourceServer struct {
	api.SourceServer
	Overrides           api.ReplicationSettingsOverrides
	DedicatedReplicator string // effective dedicated replicator name
	CertSerial          string // the current certificate's serial (hex)
	PrevCertSerial      string // the certificate before the last renewal, still accepted
	// RebaseSnapshotID is the PIT a failback wrote onto the server's machine: its
	// replica is rebased onto it (docs/failback.md).
	RebaseSnapshotID string
}

const sourceCols = `id, account_id, machine_id, hostname, os, arch, agent_version, cpus, memory_bytes,
	volumes, settings_overrides, site_id, dedicated_replicator, replicator_id, replication,
	cert_serial, prev_cert_serial, cert_not_after, last_seen_at, created_at, updated_at,
	reversed_from, origin_source_server_id, seed_snapshot_id, rebase_snapshot_id, tags`

func scanSource(row interface{ Scan(...any) error }) (SourceServer, error) {
	return scanSourceView(row, true)
}

// scanSourceView reads a row; a summary (full false) leaves out the volumes and the
// settings overrides, and the replication state's initiation steps.
func scanSourceView(row interface{ Scan(...any) error }, full bool) (SourceServer, error) {
	var s SourceServer
	var volumes, overrides, replication, tags string
	var replicator sql.NullString
	var certNotAfter, created, updated int64
	var lastSeen sql.NullInt64
	var rev api.ReversedLink
	err := row.Scan(&s.ID, &s.AccountID, &s.MachineID, &s.Hostname, &s.OS, &s.Arch, &s.AgentVersion, &s.CPUs,
		&s.MemoryBytes, &volumes, &overrides, &s.SiteID, &s.DedicatedReplicator, &replicator, &replication,
		&s.CertSerial, &s.PrevCertSerial, &certNotAfter, &lastSeen, &created, &updated,
		&rev.RecoveryInstanceID, &rev.OriginSourceServerID, &rev.SeedSnapshotID, &s.RebaseSnapshotID, &tags)
	if err != nil {
		return s, classify(err)
	}
	if err := json.Unmarshal([]byte(tags), &s.Tags); err != nil {
		return s, fmt.Errorf("source server %s: unreadable tags: %w", s.ID, err)
	}
	if len(s.Tags) == 0 {
		s.Tags = nil // as in the summaries, which leave tags out then
	}
	if rev.RecoveryInstanceID != "" {
		s.Reversed = &rev
	}
	s.ReplicatorID = replicator.String
	s.CertificateExpiresAt = fromMS(certNotAfter)
	s.LastSeenAt = optTime(lastSeen)
	s.CreatedAt = fromMS(created)
	s.UpdatedAt = fromMS(updated)
	if err := json.Unmarshal([]byte(replication), &s.Replication); err != nil {
		return s, fmt.Errorf("source server %s: unreadable replication state: %w", s.ID, err)
	}
	if !full {
		s.Replication.InitiationSteps = nil
		return s, nil
	}
	if err := json.Unmarshal([]byte(volumes), &s.Volumes); err != nil {
		return s, fmt.Errorf("source server %s: unreadable volumes: %w", s.ID, err)
	}
	if err := json.Unmarshal([]byte(overrides), &s.Overrides); err != nil {
		return s, fmt.Errorf("source server %s: unreadable settings overrides: %w", s.ID, err)
	}
	if s.Volumes == nil {
		s.Volumes = []api.Volume{}
	}
	return s, nil
}

func jsonText(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// CreateSourceServer inserts a source server. ErrConflict when its machine id is
// already registered in the account.
func (t *Tx) CreateSourceServer(s SourceServer) error {
	volumes, err := jsonText(nonNilVolumes(s.Volumes))
	if err != nil {
		return err
	}
	overrides, err := jsonText(s.Overrides)
	if err != nil {
		return err
	}
	var rev api.ReversedLink
	if s.Reversed != nil {
		rev = *s.Reversed
	}
	replication, err := jsonText(s.Replication)
	if err != nil {
		return err
	}
	tags, err := tagsText(s.Tags)
	if err != nil {
		return err
	}
	_, err = t.exec(`INSERT INTO source_servers (`+sourceCols+`, data_replication_state, ready_for_recovery, list_key)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		s.ID, s.AccountID, s.MachineID, s.Hostname, s.OS, s.Arch, s.AgentVersion, s.CPUs, s.MemoryBytes,
		volumes, overrides, s.SiteID, s.DedicatedReplicator, nullString(s.ReplicatorID), replication,
		s.CertSerial, s.PrevCertSerial, ms(s.CertificateExpiresAt), nullMS(s.LastSeenAt), ms(s.CreatedAt), ms(s.UpdatedAt),
		rev.RecoveryInstanceID, rev.OriginSourceServerID, rev.SeedSnapshotID, s.RebaseSnapshotID, tags,
		s.Replication.DataReplicationState, boolInt(s.Replication.ReadyForRecovery), listKey(s.Replication.ReadyForRecovery, s.ID))
	if err != nil {
		return err
	}
	return t.refreshSummary(s.ID)
}

// updateSource runs an UPDATE of one source server row and renders its summary again.
// Every change of a source_servers row goes through it (or refreshSummary).
func (t *Tx) updateSource(id, q string, args ...any) error {
	if err := t.execOne(q, args...); err != nil {
		return err
	}
	return t.refreshSummary(id)
}

// refreshSummary renders the summary column of a row from the row itself.
func (t *Tx) refreshSummary(id string) error {
	s, err := scanSourceView(t.queryRow(`SELECT `+sourceCols+` FROM source_servers WHERE id = ?`, id), false)
	if err != nil {
		return err
	}
	b, err := json.Marshal(s.SourceServer)
	if err != nil {
		return err
	}
	return t.execOne(`UPDATE source_servers SET summary = ? WHERE id = ?`, string(b), id)
}

func nonNilVolumes(v []api.Volume) []api.Volume {
	if v == nil {
		return []api.Volume{}
	}
	return v
}

// SourceServer returns a source server by id, whatever its account (callers check).
func (t *Tx) SourceServer(id string) (SourceServer, error) {
	return scanSource(t.queryRow(`SELECT `+sourceCols+` FROM source_servers WHERE id = ?`, id))
}

// SourceServerByMachine returns the source server of a machine id in an account.
func (t *Tx) SourceServerByMachine(accountID, machineID string) (SourceServer, error) {
	return scanSource(t.queryRow(`SELECT `+sourceCols+` FROM source_servers WHERE account_id = ? AND machine_id = ?`,
		accountID, machineID))
}

// ReregisterSourceServer replaces the registration of an existing source server (same
// id): new host facts and certificate; the previous certificate stops working.
func (t *Tx) ReregisterSourceServer(s SourceServer) error {
	volumes, err := jsonText(nonNilVolumes(s.Volumes))
	if err != nil {
		return err
	}
	return t.updateSource(s.ID, `UPDATE source_servers SET hostname = ?, os = ?, arch = ?, agent_version = ?, cpus = ?,
		memory_bytes = ?, volumes = ?, cert_serial = ?, prev_cert_serial = '', cert_not_after = ?, updated_at = ?
		WHERE id = ?`,
		s.Hostname, s.OS, s.Arch, s.AgentVersion, s.CPUs, s.MemoryBytes, volumes, s.CertSerial,
		ms(s.CertificateExpiresAt), ms(s.UpdatedAt), s.ID)
}

// RevokeSourceCertificate makes every certificate of a source server invalid (a
// disconnect): its agent can no longer call the control plane or a replicator.
func (t *Tx) RevokeSourceCertificate(id string, now time.Time) error {
	return t.updateSource(id, `UPDATE source_servers SET cert_serial = 'revoked', prev_cert_serial = '', updated_at = ? WHERE id = ?`, ms(now), id)
}

// SetRebase records the PIT a failback wrote onto a source server's machine.
func (t *Tx) SetRebase(id, snapshotID string, now time.Time) error {
	return t.updateSource(id, `UPDATE source_servers SET rebase_snapshot_id = ?, updated_at = ? WHERE id = ?`, snapshotID, ms(now), id)
}

// SetSourceCertificate records a renewed certificate; the current one stays accepted
// as the previous one until it expires.
func (t *Tx) SetSourceCertificate(id, serial string, notAfter, now time.Time) error {
	return t.updateSource(id, `UPDATE source_servers SET prev_cert_serial = cert_serial, cert_serial = ?, cert_not_after = ?,
		updated_at = ? WHERE id = ?`, serial, ms(notAfter), ms(now), id)
}

// SetReplicationState stores a source server's replication state.
func (t *Tx) SetReplicationState(id string, st api.ReplicationState, now time.Time) error {
	b, err := jsonText(st)
	if err != nil {
		return err
	}
	return t.updateSource(id, `UPDATE source_servers SET replication = ?, data_replication_state = ?, ready_for_recovery = ?,
		list_key = ?, updated_at = ? WHERE id = ?`, b, st.DataReplicationState, boolInt(st.ReadyForRecovery),
		listKey(st.ReadyForRecovery, id), ms(now), id)
}

// SetVolumes stores a source server's volumes.
func (t *Tx) SetVolumes(id string, vs []api.Volume, now time.Time) error {
	b, err := jsonText(nonNilVolumes(vs))
	if err != nil {
		return err
	}
	return t.updateSource(id, `UPDATE source_servers SET volumes = ?, updated_at = ? WHERE id = ?`, b, ms(now), id)
}

// SetSourceServerTags replaces a source server's tags.
func (t *Tx) SetSourceServerTags(id string, tags map[string]string, now time.Time) error {
	doc, err := tagsText(tags)
	if err != nil {
		return err
	}
	return t.updateSource(id, `UPDATE source_servers SET tags = ?, updated_at = ? WHERE id = ?`, doc, ms(now), id)
}

// SourceServersWithTags returns every source server of an account that carries all of
// tags (every server of the account when tags is empty), by id. An account has at
// most its quota of servers.
func (t *Tx) SourceServersWithTags(accountID string, tags map[string]string) ([]SourceServer, error) {
	where, args, err := t.tagsWhere(tags)
	if err != nil {
		return nil, err
	}
	rows, err := t.query(`SELECT `+sourceCols+` FROM source_servers WHERE account_id = ?`+where+` ORDER BY id`,
		append([]any{accountID}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []SourceServer{}
	for rows.Next() {
		s, err := scanSource(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, classify(rows.Err())
}

// tagsText is the tags column of tags: encoding/json's text, which sorts the keys and
// writes no spaces (tagPattern depends on it).
func tagsText(tags map[string]string) (string, error) {
	if tags == nil {
		tags = map[string]string{}
	}
	return jsonText(tags)
}

// tagPattern is the text a tags column holds when it has the tag key=value: "key":"value"
// as encoding/json writes them. Only the key's opening quote can start it, since tag
// keys have no quote or backslash (api.UpdateSourceServerTagsRequest checks), and
// its closing quote ends the value.
func tagPattern(key, value string) (string, error) {
	k, err := json.Marshal(key)
	if err != nil {
		return "", err
	}
	v, err := json.Marshal(value)
	if err != nil {
		return "", err
	}
	return string(k) + ":" + string(v), nil
}

// tagsWhere is the condition (" AND …", or "" for no tags) and arguments that keep the
// rows carrying every one of tags: a case-sensitive substring test of the tags column
// (instr in SQLite, strpos in PostgreSQL; LIKE ignores case in SQLite).
func (t *Tx) tagsWhere(tags map[string]string) (string, []any, error) {
	fn := "instr"
	if t.kind == Postgres {
		fn = "strpos"
	}
	var where strings.Builder
	args := make([]any, 0, len(tags))
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		p, err := tagPattern(k, tags[k])
		if err != nil {
			return "", nil, err
		}
		where.WriteString(` AND ` + fn + `(tags, ?) > 0`)
		args = append(args, p)
	}
	return where.String(), args, nil
}

// TouchSourceServer records that its agent called at now.
func (t *Tx) TouchSourceServer(id string, now time.Time) error {
	return t.updateSource(id, `UPDATE source_servers SET last_seen_at = ? WHERE id = ?`, ms(now), id)
}

// SetSourceSettings stores a source server's overrides and the effective target site and
// dedicated replicator they give.
func (t *Tx) SetSourceSettings(id string, o api.ReplicationSettingsOverrides, siteID, dedicated string, now time.Time) error {
	b, err := jsonText(o)
	if err != nil {
		return err
	}
	return t.updateSource(id, `UPDATE source_servers SET settings_overrides = ?, site_id = ?, dedicated_replicator = ?,
		updated_at = ? WHERE id = ?`, b, siteID, dedicated, ms(now), id)
}

// SetAssignment assigns a source server to a replicator ("" for none).
func (t *Tx) SetAssignment(id, replicatorID string, now time.Time) error {
	return t.updateSource(id, `UPDATE source_servers SET replicator_id = ?, updated_at = ? WHERE id = ?`,
		nullString(replicatorID), ms(now), id)
}

// DeleteSourceServer deletes a source server with its snapshots and launch settings.
func (t *Tx) DeleteSourceServer(id string) error {
	return t.execOne(`DELETE FROM source_servers WHERE id = ?`, id)
}

// SourceServerOverrides returns the overrides of each of an account's source servers (for
// recomputing effective settings when the template changes).
func (t *Tx) SourceServerOverrides(accountID string) (map[string]api.ReplicationSettingsOverrides, error) {
	rows, err := t.query(`SELECT id, settings_overrides FROM source_servers WHERE account_id = ?`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]api.ReplicationSettingsOverrides{}
	for rows.Next() {
		var id, o string
		if err := rows.Scan(&id, &o); err != nil {
			return nil, err
		}
		var ov api.ReplicationSettingsOverrides
		if err := json.Unmarshal([]byte(o), &ov); err != nil {
			return nil, fmt.Errorf("source server %s: unreadable settings overrides: %w", id, err)
		}
		out[id] = ov
	}
	return out, rows.Err()
}

// SetEffectiveSite updates the effective site and dedicated replicator of a server
// whose overrides did not change (the template did).
func (t *Tx) SetEffectiveSite(id, siteID, dedicated string, now time.Time) error {
	return t.updateSource(id, `UPDATE source_servers SET site_id = ?, dedicated_replicator = ?, updated_at = ?
		WHERE id = ? AND (site_id <> ? OR dedicated_replicator <> ?)`, siteID, dedicated, ms(now), id, siteID, dedicated)
}

// sourceListQuery builds the WHERE clause, arguments and page size of a list.
func (t *Tx) sourceListQuery(accountID string, f api.SourceServerFilter) (string, []any, int, error) {
	var where strings.Builder
	args := []any{accountID}
	where.WriteString(`account_id = ?`)
	if len(f.States) > 0 {
		where.WriteString(` AND data_replication_state IN (?` + strings.Repeat(`, ?`, len(f.States)-1) + `)`)
		for _, s := range f.States {
			args = append(args, s)
		}
	}
	if f.Hostname != "" {
		where.WriteString(` AND LOWER(hostname) LIKE ? ESCAPE '\'`)
		args = append(args, "%"+escapeLike(strings.ToLower(f.Hostname))+"%")
	}
	if f.ReplicatorID != "" {
		where.WriteString(` AND replicator_id = ?`)
		args = append(args, f.ReplicatorID)
	}
	if f.ReadyForRecovery != nil {
		where.WriteString(` AND ready_for_recovery = ?`)
		args = append(args, boolInt(*f.ReadyForRecovery))
	}
	tagsWhere, tagArgs, err := t.tagsWhere(f.Tags)
	if err != nil {
		return "", nil, 0, err
	}
	where.WriteString(tagsWhere)
	args = append(args, tagArgs...)
	if f.PageToken != "" {
		key, err := decodeSourceCursor(f.PageToken)
		if err != nil {
			return "", nil, 0, err
		}
		where.WriteString(` AND list_key > ?`)
		args = append(args, key)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = api.DefaultPageSize
	}
	args = append(args, limit+1)
	return where.String(), args, limit, nil
}

// ListSourceServers returns a page of an account's source servers matching f (whole
// rows), ready for recovery first, then by id, and the token of the next page ("" at
// the end).
func (t *Tx) ListSourceServers(accountID string, f api.SourceServerFilter) ([]SourceServer, string, error) {
	where, args, limit, err := t.sourceListQuery(accountID, f)
	if err != nil {
		return nil, "", err
	}
	rows, err := t.query(`SELECT `+sourceCols+` FROM source_servers WHERE `+where+
		` ORDER BY list_key LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	out := make([]SourceServer, 0, min(limit, 1024))
	for rows.Next() {
		s, err := scanSource(rows)
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
		next = encodeSourceCursor(listKey(last.Replication.ReadyForRecovery, last.ID))
	}
	return out, next, nil
}

// ListSourceServerSummaries is ListSourceServers for list views: it returns each row's
// stored JSON summary (an api.SourceServer without volumes and initiation steps), ready
// to be sent as is.
func (t *Tx) ListSourceServerSummaries(accountID string, f api.SourceServerFilter) ([]string, string, error) {
	where, args, limit, err := t.sourceListQuery(accountID, f)
	if err != nil {
		return nil, "", err
	}
	rows, err := t.query(`SELECT list_key, summary FROM source_servers WHERE `+where+
		` ORDER BY list_key LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	out := make([]string, 0, min(limit, 1024))
	var key, lastKey string
	for rows.Next() {
		var summary string
		if err := rows.Scan(&key, &summary); err != nil {
			return nil, "", err
		}
		if len(out) == limit { // a row beyond the page: there is a next page
			return out, encodeSourceCursor(lastKey), classify(rows.Err())
		}
		out = append(out, summary)
		lastKey = key
	}
	return out, "", classify(rows.Err())
}

// ErrBadPageToken is returned for a page token this server did not produce.
var ErrBadPageToken = fmt.Errorf("the page token is not valid: start again without page_token")

// listKey orders source servers in lists: ready for recovery first, then by id.
func listKey(ready bool, id string) string {
	if ready {
		return "0" + id
	}
	return "1" + id
}

func encodeSourceCursor(key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(key))
}

func decodeSourceCursor(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 2 || (b[0] != '0' && b[0] != '1') || !api.ValidID(api.PrefixSourceServer, string(b[1:])) {
		return "", ErrBadPageToken
	}
	return string(b), nil
}

func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
