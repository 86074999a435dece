package db

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Notifications between the processes sharing a PostgreSQL database (control planes
// on two hosts): what one sends, every one listening receives at once. An SQLite
// database serves one process, so there both do nothing.

// Notify sends payload on channel to every process listening on the database.
func (d *DB) Notify(ctx context.Context, channel, payload string) error {
	if d.kind != Postgres {
		return nil
	}
	if _, err := d.sql.ExecContext(ctx, `SELECT pg_notify($1, $2)`, channel, payload); err != nil {
		return fmt.Errorf("notify the other control planes (%s): %w", channel, classify(err))
	}
	return nil
}

// Listen listens on channel on a connection of its own and calls fn with each
// notification's payload until ctx ends or the connection fails (the error is
// returned: listen again). It calls fn("") once it listens: notifications sent before
// were missed. On SQLite it only waits for ctx.
func (d *DB) Listen(ctx context.Context, channel string, fn func(payload string)) error {
	if d.kind != Postgres {
		<-ctx.Done()
		return nil
	}
	conn, err := d.sql.Conn(ctx)
	if err != nil {
		return fmt.Errorf("open a connection to listen for the other control planes: %w", err)
	}
	defer conn.Close()
	var failed error
	_ = conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			failed = fmt.Errorf("the PostgreSQL driver's connection is a %T, not pgx's", dc)
			return failed
		}
		pc := sc.Conn()
		if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			failed = fmt.Errorf("listen on %s: %w", channel, err)
			return driver.ErrBadConn
		}
		fn("")
		for {
			n, err := pc.WaitForNotification(ctx)
			if err != nil {
				failed = fmt.Errorf("wait for notifications on %s: %w", channel, err)
				// The connection listens: it must not go back to the pool.
				return driver.ErrBadConn
			}
			fn(n.Payload)
		}
	})
	if ctx.Err() != nil {
		return nil
	}
	if failed == nil {
		failed = errors.New("the listening connection ended")
	}
	return failed
}
