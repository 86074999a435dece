package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"
)

// migrations are applied in the order of their file names, NNNN_name.sql. Each runs in
// one transaction together with its row in schema_migrations, so a crash leaves it
// either applied or not. They use only SQL that SQLite and PostgreSQL both accept.
//
//go:embed migrations/*.sql
var migrations embed.FS

type migration struct {
	version int64
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "migrations/"), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %s is not named NNNN_name.sql", n)
		}
		body, err := migrations.ReadFile(n)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s have the same number %d", ms[i-1].name, ms[i].name, ms[i].version)
		}
	}
	return ms, nil
}

// statements splits a migration into statements at semicolons that end a line, and
// drops "--" comment lines.
func statements(script string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(script, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// migrate applies the migrations not yet applied. A database newer than this binary
// (a migration it does not know) is refused rather than used half-understood.
func (d *DB) migrate(ctx context.Context) error {
	list, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("load the embedded migrations: %w", err)
	}
	err = d.Update(ctx, func(t *Tx) error {
		_, err := t.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
			version BIGINT PRIMARY KEY,
			name TEXT NOT NULL,
			applied_at BIGINT NOT NULL)`)
		return err
	})
	if err != nil {
		return fmt.Errorf("create the schema_migrations table: %w", err)
	}
	applied, err := d.appliedMigrations(ctx)
	if err != nil {
		return err
	}
	known := map[int64]bool{}
	for _, m := range list {
		known[m.version] = true
	}
	for v := range applied {
		if !known[v] {
			return fmt.Errorf("the database has schema version %d, which this lifeboat binary does not know: run a newer lifeboat", v)
		}
	}
	for _, m := range list {
		if applied[m.version] {
			continue
		}
		err := d.Update(ctx, func(t *Tx) error {
			// Claim the version first: a second control plane migrating the same
			// PostgreSQL database at the same time waits here, then fails on the key.
			if _, err := t.exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, ms(time.Now())); err != nil {
				return err
			}
			for _, s := range statements(m.sql) {
				if _, err := t.exec(s); err != nil {
					return fmt.Errorf("%w\nin statement: %s", err, s)
				}
			}
			return nil
		})
		if errors.Is(err, ErrConflict) {
			continue // another process applied it meanwhile
		}
		if err != nil {
			return fmt.Errorf("apply migration %04d_%s: %w", m.version, m.name, err)
		}
	}
	return nil
}

func (d *DB) appliedMigrations(ctx context.Context) (map[int64]bool, error) {
	applied := map[int64]bool{}
	err := d.View(ctx, func(t *Tx) error {
		rows, err := t.query(`SELECT version FROM schema_migrations`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				return err
			}
			applied[v] = true
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("read the schema_migrations table: %w", err)
	}
	return applied, nil
}

// SchemaVersion returns the highest applied migration.
func (d *DB) SchemaVersion(ctx context.Context) (int64, error) {
	var v int64
	err := d.View(ctx, func(t *Tx) error {
		return t.queryRow(`SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	})
	return v, err
}
