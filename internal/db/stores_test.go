package db_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// TestStagingStoresBelongToOneAccount: a URL given to one account cannot be given to
// another; account keys are stored once; credentials are kept and cleared.
func TestStagingStoresBelongToOneAccount(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		const other = "acct-00000000000000002"
		err := d.Update(ctx, func(tx *db.Tx) error {
			for i, id := range []string{acct, other} {
				a := db.Account{Account: api.Account{ID: id, Name: []string{"default", "tenant"}[i], System: i == 0, QuotaSourceServers: 1, CreatedAt: t0},
					Template: api.DefaultReplicationSettings("file:///s")}
				if err := tx.CreateAccount(a); err != nil {
					return err
				}
			}
			if err := tx.AddStagingStore(db.StagingStore{URL: "file:///s", AccountID: acct, CreatedAt: t0}); err != nil {
				return err
			}
			if err := tx.CreateAccountKey(db.AccountKey{AccountID: other, Wrapped: []byte{1, 2, 3}, MasterFingerprint: "fp", CreatedAt: t0}); err != nil {
				return err
			}
			return tx.AddStagingStore(db.StagingStore{URL: "file:///s/" + other, AccountID: other, Credentials: []byte("w"), CreatedAt: t0})
		})
		if err != nil {
			t.Fatal(err)
		}
		err = d.Update(ctx, func(tx *db.Tx) error {
			return tx.AddStagingStore(db.StagingStore{URL: "file:///s", AccountID: other, CreatedAt: t0})
		})
		if !errors.Is(err, db.ErrConflict) {
			t.Fatalf("a second account given the same store URL: %v, want ErrConflict", err)
		}
		err = d.Update(ctx, func(tx *db.Tx) error {
			return tx.CreateAccountKey(db.AccountKey{AccountID: other, Wrapped: []byte{4}, MasterFingerprint: "fp", CreatedAt: t0})
		})
		if !errors.Is(err, db.ErrConflict) {
			t.Fatalf("a second key for an account: %v, want ErrConflict", err)
		}
		err = d.Update(ctx, func(tx *db.Tx) error {
			s, err := tx.StagingStore("file:///s")
			if err != nil || s.AccountID != acct || s.Credentials != nil {
				t.Errorf("store file:///s: %+v, %v", s, err)
			}
			ss, err := tx.StagingStores(other)
			if err != nil || len(ss) != 1 || !bytes.Equal(ss[0].Credentials, []byte("w")) {
				t.Errorf("stores of %s: %+v, %v", other, ss, err)
			}
			if err := tx.SetStagingStoreCredentials(ss[0].URL, nil, t0); err != nil {
				return err
			}
			if s, err := tx.StagingStore(ss[0].URL); err != nil || s.Credentials != nil {
				t.Errorf("cleared credentials: %+v, %v", s, err)
			}
			k, err := tx.AccountKey(other)
			if err != nil || !bytes.Equal(k.Wrapped, []byte{1, 2, 3}) || k.MasterFingerprint != "fp" {
				t.Errorf("account key: %+v, %v", k, err)
			}
			if _, err := tx.AccountKey(acct); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("key of an account without one: %v, want ErrNotFound", err)
			}
			fps, err := tx.MasterFingerprints()
			if err != nil || len(fps) != 1 || fps[0] != "fp" {
				t.Errorf("master fingerprints %v, %v", fps, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
