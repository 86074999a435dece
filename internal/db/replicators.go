package db

import (
	"database/sql"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Replicator is a replicator row: the API's view plus its certificate serials.
type Replicator struct {
	api.Replicator
	CertSerial     string
	PrevCertSerial string
}

const replicatorCols = `r.id, r.account_id, r.name, r.site_id, r.address, r.version, r.cert_serial, r.prev_cert_serial,
	r.cert_not_after, r.cpu_percent, r.rss_bytes, r.volumes_served, r.sessions, r.ingest_bytes_per_second,
	r.last_heartbeat_at, r.created_at, r.draining, (SELECT COUNT(*) FROM source_servers s WHERE s.replicator_id = r.id)`

// scanReplicator reads a row; its State is live when it beat at or after liveSince.
func scanReplicator(row interface{ Scan(...any) error }, liveSince time.Time) (Replicator, error) {
	var r Replicator
	var notAfter, created int64
	var hb sql.NullInt64
	var draining int64
	err := row.Scan(&r.ID, &r.AccountID, &r.Name, &r.SiteID, &r.Address, &r.Version, &r.CertSerial, &r.PrevCertSerial,
		&notAfter, &r.Metrics.CPUPercent, &r.Metrics.RSSBytes, &r.Metrics.VolumesServed, &r.Metrics.Sessions,
		&r.Metrics.IngestBytesPerSecond, &hb, &created, &draining,
		&r.AssignedSourceServers)
	if err != nil {
		return r, classify(err)
	}
	r.Draining = draining != 0
	r.CertificateExpiresAt = fromMS(notAfter)
	r.CreatedAt = fromMS(created)
	r.LastHeartbeatAt = optTime(hb)
	r.State = api.ReplicatorLost
	if hb.Valid && hb.Int64 >= ms(liveSince) {
		r.State = api.ReplicatorLive
	}
	return r, nil
}

// CreateReplicator inserts a replicator. ErrConflict when its name is taken in the
// account; ErrReferenced when its site does not exist.
func (t *Tx) CreateReplicator(r Replicator) error {
	_, err := t.exec(`INSERT INTO replicators (id, account_id, name, site_id, address, version, cert_serial,
		prev_cert_serial, cert_not_after, last_heartbeat_at, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.AccountID, r.Name, r.SiteID, r.Address, r.Version, r.CertSerial, r.PrevCertSerial,
		ms(r.CertificateExpiresAt), nullMS(r.LastHeartbeatAt), ms(r.CreatedAt), ms(r.CreatedAt))
	return err
}

// SetReplicatorDraining drains a replicator (it takes no servers, and its servers are
// to move) or puts it back in service.
func (t *Tx) SetReplicatorDraining(id string, on bool, now time.Time) error {
	return t.execOne(`UPDATE replicators SET draining = ?, updated_at = ? WHERE id = ?`, boolInt(on), ms(now), id)
}

// Replicator returns a replicator by id.
func (t *Tx) Replicator(id string, liveSince time.Time) (Replicator, error) {
	return scanReplicator(t.queryRow(`SELECT `+replicatorCols+` FROM replicators r WHERE r.id = ?`, id), liveSince)
}

// ReplicatorByName returns an account's replicator by name.
func (t *Tx) ReplicatorByName(accountID, name string, liveSince time.Time) (Replicator, error) {
	return scanReplicator(t.queryRow(`SELECT `+replicatorCols+` FROM replicators r WHERE r.account_id = ? AND r.name = ?`,
		accountID, name), liveSince)
}

// Replicators lists an account's replicators by name.
func (t *Tx) Replicators(accountID string, liveSince time.Time) ([]Replicator, error) {
	rows, err := t.query(`SELECT `+replicatorCols+` FROM replicators r WHERE r.account_id = ? ORDER BY r.name`, accountID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Replicator
	for rows.Next() {
		r, err := scanReplicator(rows, liveSince)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// ReregisterReplicator gives an existing replicator (same name) a new certificate,
// site and address; the previous certificate stops working.
func (t *Tx) ReregisterReplicator(r Replicator, now time.Time) error {
	return t.execOne(`UPDATE replicators SET site_id = ?, address = ?, version = ?, cert_serial = ?, prev_cert_serial = '',
		cert_not_after = ?, last_heartbeat_at = ?, updated_at = ? WHERE id = ?`,
		r.SiteID, r.Address, r.Version, r.CertSerial, ms(r.CertificateExpiresAt), ms(now), ms(now), r.ID)
}

// Heartbeat records a replicator's heartbeat and metrics.
func (t *Tx) Heartbeat(id string, m api.ReplicatorMetrics, version string, now time.Time) error {
	return t.execOne(`UPDATE replicators SET cpu_percent = ?, rss_bytes = ?, volumes_served = ?, sessions = ?,
		ingest_bytes_per_second = ?, version = ?, last_heartbeat_at = ?, updated_at = ? WHERE id = ?`,
		m.CPUPercent, m.RSSBytes, m.VolumesServed, m.Sessions, m.IngestBytesPerSecond, version, ms(now), ms(now), id)
}

// SetReplicatorCertificate records a renewed certificate.
func (t *Tx) SetReplicatorCertificate(id, serial string, notAfter, now time.Time) error {
	return t.execOne(`UPDATE replicators SET prev_cert_serial = cert_serial, cert_serial = ?, cert_not_after = ?,
		updated_at = ? WHERE id = ?`, serial, ms(notAfter), ms(now), id)
}

// DeleteReplicator deletes a replicator; its source servers become unassigned.
func (t *Tx) DeleteReplicator(id string) error {
	rows, err := t.query(`SELECT id FROM source_servers WHERE replicator_id = ?`, id)
	if err != nil {
		return err
	}
	var servers []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return err
		}
		servers = append(servers, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if err := t.execOne(`DELETE FROM replicators WHERE id = ?`, id); err != nil {
		return err
	}
	for _, s := range servers { // replicator_id became NULL (ON DELETE SET NULL)
		if err := t.refreshSummary(s); err != nil {
			return err
		}
	}
	return nil
}

// Unassigned is a source server that needs a (new) replicator.
type Unassigned struct {
	ID                  string
	SiteID              string
	DedicatedReplicator string // name; "" for automatic
	ReplicatorID        string // current, "" for none
}

// NeedingAssignment lists an account's source servers that have no replicator, or one
// that is lost (no heartbeat since liveSince), draining, in another site, or not the
// dedicated one.
func (t *Tx) NeedingAssignment(accountID string, liveSince time.Time) ([]Unassigned, error) {
	rows, err := t.query(`SELECT s.id, s.site_id, s.dedicated_replicator, COALESCE(s.replicator_id, '')
		FROM source_servers s LEFT JOIN replicators r ON r.id = s.replicator_id
		WHERE s.account_id = ? AND (
			s.replicator_id IS NULL
			OR (s.dedicated_replicator = '' AND (r.last_heartbeat_at IS NULL OR r.last_heartbeat_at < ? OR r.site_id <> s.site_id
				OR r.draining <> 0))
			OR (s.dedicated_replicator <> '' AND r.name <> s.dedicated_replicator))
		ORDER BY s.id`, accountID, ms(liveSince))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Unassigned
	for rows.Next() {
		var u Unassigned
		if err := rows.Scan(&u.ID, &u.SiteID, &u.DedicatedReplicator, &u.ReplicatorID); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// AccountsWithServers lists the ids of accounts that have source servers.
func (t *Tx) AccountsWithServers() ([]string, error) {
	rows, err := t.query(`SELECT DISTINCT account_id FROM source_servers ORDER BY account_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
