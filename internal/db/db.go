// Package db is the control plane's state: an embedded SQLite database by default, or
// PostgreSQL for several control-plane replicas. Both run the same embedded migrations,
// written in a portable SQL subset (times are BIGINT unix milliseconds, ids TEXT, JSON
// documents TEXT), and the same queries (written with ? placeholders, rebound for
// PostgreSQL). Every change of more than one row runs in one transaction (Update).
package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/lifeboat-dr/lifeboat/internal/secfile"
)

// Kind names a database engine.
type Kind string

// Supported engines.
const (
	SQLite   Kind = "sqlite"
	Postgres Kind = "postgres"
)

// Errors callers test for with errors.Is.
var (
	ErrNotFound   = errors.New("not found")
	ErrConflict   = errors.New("conflicts with an existing row")
	ErrReferenced = errors.New("still referenced")
)

// DB is an open database.
type DB struct {
	sql  *sql.DB
	kind Kind
	// writeMu serializes SQLite write transactions inside this process, so they queue
	// in Go instead of polling SQLite's busy handler. Unused for PostgreSQL.
	writeMu sync.Mutex
}

// IsPostgresURL reports whether url names a PostgreSQL database.
func IsPostgresURL(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}

// URLHasPassword reports whether a PostgreSQL URL holds a password, in its user
// information or as a password= parameter. The password belongs in PGPASSWORD or a
// passfile (~/.pgpass, PGPASSFILE), which the driver reads as libpq does.
func URLHasPassword(u string) bool {
	if !IsPostgresURL(u) {
		return false
	}
	p, err := url.Parse(u)
	if err != nil {
		return true // cannot tell: assume the worst
	}
	_, set := p.User.Password()
	return set || p.Query().Has("password")
}

// Option is an optional setting of Open.
type Option func(*options)

type options struct{ log *slog.Logger }

// WithLogger gives Open a logger, for what it changes on its own (file permissions).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Open opens the database named by url (postgres://… or postgresql://… for PostgreSQL,
// otherwise the path of an SQLite file, created mode 0600 if missing) and applies the
// migrations. A PostgreSQL password is best left out of url: the driver reads
// PGPASSWORD and the passfile (PGPASSFILE, default ~/.pgpass) as libpq does.
func Open(ctx context.Context, url string, opts ...Option) (*DB, error) {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	var d *DB
	if IsPostgresURL(url) {
		s, err := sql.Open("pgx", url)
		if err != nil {
			return nil, fmt.Errorf("open PostgreSQL: %w", err)
		}
		// 16 for queries, and the connections a control plane holds to listen for the
		// others' notifications (notify.go: wake-ups, group-point relay).
		s.SetMaxOpenConns(16 + 2)
		s.SetMaxIdleConns(16 + 2)
		d = &DB{sql: s, kind: Postgres}
	} else {
		path := strings.TrimPrefix(url, "sqlite://")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("create the database directory: %w", err)
		}
		if err := createPrivate(path, o.log); err != nil {
			return nil, err
		}
		// WAL lets readers run beside the writer; FULL sync makes a committed change
		// survive power loss; immediate transactions take the write lock at BEGIN, so a
		// transaction never fails half-way on lock upgrade.
		dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)" +
			"&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)&_txlock=immediate"
		s, err := sql.Open("sqlite", dsn)
		if err != nil {
			return nil, fmt.Errorf("open SQLite database %s: %w", path, err)
		}
		s.SetMaxOpenConns(8)
		s.SetMaxIdleConns(8)
		s.SetConnMaxIdleTime(0)
		d = &DB{sql: s, kind: SQLite}
	}
	pingCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := d.sql.PingContext(pingCtx); err != nil {
		d.sql.Close()
		if d.kind == Postgres {
			return nil, fmt.Errorf("connect to the PostgreSQL database: %w (check the --db URL or LIFEBOAT_DB, the password in PGPASSWORD or the passfile, and that the server runs)", err)
		}
		return nil, fmt.Errorf("open the SQLite database %s: %w (check the file and its directory)", url, err)
	}
	if err := d.migrate(ctx); err != nil {
		d.sql.Close()
		return nil, err
	}
	return d, nil
}

// createPrivate creates the SQLite database file with mode 0600 before SQLite opens it,
// since SQLite would create it 0644, and SQLite gives its -wal and -shm files the
// database file's mode. Files an older version created 0644 are made 0600.
func createPrivate(path string, log *slog.Logger) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("create the SQLite database %s: %w", path, err)
	}
	f.Close()
	return secfile.Tighten(log, path, path+"-wal", path+"-shm")
}

// Kind says which engine this is.
func (d *DB) Kind() Kind { return d.kind }

// Close closes the database.
func (d *DB) Close() error { return d.sql.Close() }

// Ping checks that the database answers.
func (d *DB) Ping(ctx context.Context) error { return d.sql.PingContext(ctx) }

// Tx is one transaction (or, from Read, a series of independent statements). It lives
// only inside the function given to View, Update or Read and carries that call's context.
type Tx struct {
	ctx  context.Context
	q    querier
	kind Kind
}

// querier is what *sql.Tx and *sql.DB both offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Read runs fn without a transaction: for a single read, where a transaction would
// only add round trips. Use View to read several things consistently.
func (d *DB) Read(ctx context.Context, fn func(*Tx) error) error {
	return fn(&Tx{ctx: ctx, q: d.sql, kind: d.kind})
}

// View runs fn in a read-only transaction: a consistent snapshot.
func (d *DB) View(ctx context.Context, fn func(*Tx) error) error {
	return d.run(ctx, true, fn)
}

// Update runs fn in a read-write transaction, committed if fn returns nil and rolled
// back otherwise.
func (d *DB) Update(ctx context.Context, fn func(*Tx) error) error {
	if d.kind == SQLite {
		d.writeMu.Lock()
		defer d.writeMu.Unlock()
	}
	return d.run(ctx, false, fn)
}

func (d *DB) run(ctx context.Context, readOnly bool, fn func(*Tx) error) error {
	sqlTx, err := d.sql.BeginTx(ctx, &sql.TxOptions{ReadOnly: readOnly})
	if err != nil {
		return fmt.Errorf("begin a database transaction: %w", err)
	}
	t := &Tx{ctx: ctx, q: sqlTx, kind: d.kind}
	if err := fn(t); err != nil {
		_ = sqlTx.Rollback()
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("commit a database transaction: %w", classify(err))
	}
	return nil
}

// rebind turns ? placeholders into $1, $2, … for PostgreSQL. Queries in this package
// never contain a literal question mark.
func (t *Tx) rebind(q string) string {
	if t.kind != Postgres || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

func (t *Tx) exec(q string, args ...any) (sql.Result, error) {
	r, err := t.q.ExecContext(t.ctx, t.rebind(q), args...)
	return r, classify(err)
}

// execOne runs a statement that must change exactly one row, or returns ErrNotFound.
func (t *Tx) execOne(q string, args ...any) error {
	r, err := t.exec(q, args...)
	if err != nil {
		return err
	}
	n, err := r.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

func (t *Tx) query(q string, args ...any) (*sql.Rows, error) {
	rows, err := t.q.QueryContext(t.ctx, t.rebind(q), args...)
	return rows, classify(err)
}

func (t *Tx) queryRow(q string, args ...any) *sql.Row {
	return t.q.QueryRowContext(t.ctx, t.rebind(q), args...)
}

// forUpdate returns the row-locking suffix of a SELECT: PostgreSQL needs it to serialize
// a read-then-write; SQLite's write transactions are serialized already.
func (t *Tx) forUpdate() string {
	if t.kind == Postgres {
		return " FOR UPDATE"
	}
	return ""
}

// classify maps unique and foreign-key violations of either engine to ErrConflict and
// ErrReferenced (wrapping the original) and sql.ErrNoRows to ErrNotFound.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w: %v", ErrConflict, err)
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return fmt.Errorf("%w: %v", ErrReferenced, err)
		}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505":
			return fmt.Errorf("%w: %v", ErrConflict, err)
		case "23503":
			return fmt.Errorf("%w: %v", ErrReferenced, err)
		}
	}
	return err
}

// ms converts a time to the stored form: unix milliseconds.
func ms(t time.Time) int64 { return t.UnixMilli() }

// fromMS converts a stored time back, in UTC.
func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

// nullMS stores an optional time.
func nullMS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMilli()
}

// optTime reads an optional time.
func optTime(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMS(v.Int64)
	return &t
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// IntegrityCheck verifies the database's structure: SQLite's integrity_check and
// foreign_key_check; for PostgreSQL, which checks itself, only that it answers.
func (d *DB) IntegrityCheck(ctx context.Context) error {
	if d.kind != SQLite {
		return d.sql.PingContext(ctx)
	}
	var res string
	if err := d.sql.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&res); err != nil {
		return fmt.Errorf("SQLite integrity check: %w", err)
	}
	if res != "ok" {
		return fmt.Errorf("the SQLite database is damaged: %s (restore it from a backup)", res)
	}
	rows, err := d.sql.QueryContext(ctx, `PRAGMA foreign_key_check`)
	if err != nil {
		return fmt.Errorf("SQLite foreign key check: %w", err)
	}
	defer rows.Close()
	if rows.Next() {
		return errors.New("the SQLite database has rows that refer to missing rows (restore it from a backup)")
	}
	return rows.Err()
}
