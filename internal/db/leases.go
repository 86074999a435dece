package db

import "time"

// Lease is who holds a named lease, and until when.
type Lease struct {
	Name    string
	Holder  string
	Until   time.Time
	Renewed time.Time
}

// TakeLease gives holder the lease name until until, when nobody holds it, holder
// does already, or the holder's claim lapsed before now. It reports whether holder
// has the lease afterwards. The update is one statement, so two control planes
// taking it at once cannot both succeed.
func (t *Tx) TakeLease(name, holder string, now, until time.Time) (bool, error) {
	res, err := t.exec(`INSERT INTO leases (name, holder, until_ms, renewed_ms) VALUES (?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms, renewed_ms = excluded.renewed_ms
		WHERE leases.holder = excluded.holder OR leases.until_ms < ?`,
		name, holder, ms(until), ms(now), ms(now))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, classify(err)
}

// DropLease ends holder's lease name (if holder holds it), so another may take it at
// once.
func (t *Tx) DropLease(name, holder string) error {
	_, err := t.exec(`DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
	return err
}

// LeaseHolder returns the lease name; ErrNotFound when nobody ever took it.
func (t *Tx) LeaseHolder(name string) (Lease, error) {
	var l Lease
	var until, renewed int64
	err := t.queryRow(`SELECT name, holder, until_ms, renewed_ms FROM leases WHERE name = ?`, name).
		Scan(&l.Name, &l.Holder, &until, &renewed)
	if err != nil {
		return l, classify(err)
	}
	l.Until, l.Renewed = time.UnixMilli(until), time.UnixMilli(renewed)
	return l, nil
}
