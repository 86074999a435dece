package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// What one process notifies, a process listening on the database receives, on a
// channel whatever its name; on SQLite (one process) both do nothing, and Listen ends
// with its context.
func TestNotifyReachesAListener(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		const channel = `lifeboat "wake"; drop table x`
		got := make(chan string, 16)
		lctx, stop := context.WithCancel(ctx)
		ended := make(chan error, 1)
		go func() { ended <- d.Listen(lctx, channel, func(p string) { got <- p }) }()
		if d.Kind() == db.Postgres {
			if p := <-got; p != "" {
				t.Fatalf("first call %q, want \"\" once listening", p)
			}
		}
		if err := d.Notify(ctx, channel, "s-1"); err != nil {
			t.Fatal(err)
		}
		if d.Kind() == db.Postgres {
			select {
			case p := <-got:
				if p != "s-1" {
					t.Fatalf("received %q, want s-1", p)
				}
			case <-ctx.Done():
				t.Fatal("the notification did not arrive within 30 s")
			}
		}
		stop()
		if err := <-ended; err != nil {
			t.Fatalf("Listen after its context ended: %v", err)
		}
		if d.Kind() == db.SQLite && len(got) != 0 {
			t.Fatalf("SQLite delivered %d notifications", len(got))
		}
	})
}
