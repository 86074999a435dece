package db_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// TestLeases: a lease goes to the first taker, is renewed by its holder only, passes to
// another once it lapsed or was dropped; of many taking it at once, one gets it.
func TestLeases(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		take := func(holder string, now time.Time) bool {
			t.Helper()
			var ok bool
			if err := d.Update(ctx, func(tx *db.Tx) (err error) {
				ok, err = tx.TakeLease("coordinator", holder, now, now.Add(20*time.Second))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if err := d.View(ctx, func(tx *db.Tx) error { _, err := tx.LeaseHolder("coordinator"); return err }); !errors.Is(err, db.ErrNotFound) {
			t.Fatalf("holder of a lease never taken: %v", err)
		}
		if !take("cp-a", t0) {
			t.Fatal("a free lease was not given")
		}
		if take("cp-b", t0.Add(10*time.Second)) {
			t.Fatal("a held lease went to another")
		}
		if !take("cp-a", t0.Add(15*time.Second)) {
			t.Fatal("its holder could not renew it")
		}
		if take("cp-b", t0.Add(30*time.Second)) { // renewed until t0+35 s
			t.Fatal("a renewed lease went to another before it lapsed")
		}
		if !take("cp-b", t0.Add(36*time.Second)) {
			t.Fatal("a lapsed lease was not given to another")
		}
		var l db.Lease
		if err := d.View(ctx, func(tx *db.Tx) (err error) { l, err = tx.LeaseHolder("coordinator"); return err }); err != nil || l.Holder != "cp-b" {
			t.Fatalf("holder %+v (%v), want cp-b", l, err)
		}
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.DropLease("coordinator", "cp-a") }); err != nil {
			t.Fatal(err)
		}
		if take("cp-a", t0.Add(37*time.Second)) {
			t.Fatal("a lease dropped by one who does not hold it went away")
		}
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.DropLease("coordinator", "cp-b") }); err != nil {
			t.Fatal(err)
		}
		now := t0.Add(38 * time.Second)
		var got sync.Map
		var wg sync.WaitGroup
		for _, h := range []string{"cp-1", "cp-2", "cp-3", "cp-4"} {
			wg.Go(func() {
				var ok bool
				err := d.Update(ctx, func(tx *db.Tx) (err error) {
					ok, err = tx.TakeLease("coordinator", h, now, now.Add(time.Minute))
					return err
				})
				if err == nil && ok {
					got.Store(h, true)
				}
			})
		}
		wg.Wait()
		n := 0
		got.Range(func(any, any) bool { n++; return true })
		if n != 1 {
			t.Fatalf("%d control planes took one lease at once", n)
		}
	})
}
