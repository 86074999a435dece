package db_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// TestSitesCarryTheirProvider: a site keeps its provider, libvirt URI and pool (qemu
// when none was given); its credentials are kept apart, sealed, and a site says only
// whether it has them; SiteLaunchTarget opens them with the master key, for that site
// of that account only; deleting a site deletes its credentials.
func TestSitesCarryTheirProvider(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		planFixture(t, d)
		key, err := store.NewMasterKey()
		if err != nil {
			t.Fatal(err)
		}
		creds := []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
		kvm := api.Site{ID: "kvm", Description: "rack 2", Provider: api.ProviderLibvirt, URI: "qemu+ssh://lifeboat@kvm1/system",
			Pool: "default", CreatedAt: t0}
		update(t, d, func(tx *db.Tx) error {
			if err := tx.CreateSite(acct, kvm); err != nil {
				return err
			}
			if err := tx.CreateSite(acct, api.Site{ID: "local", Provider: api.ProviderLibvirt, URI: "qemu:///system", Pool: "images", CreatedAt: t0}); err != nil {
				return err
			}
			if err := tx.CreateSite(planOther, api.Site{ID: "kvm", Provider: api.ProviderImage, CreatedAt: t0}); err != nil {
				return err
			}
			return tx.PutSiteCredentials(acct, "kvm", key.Wrap(creds, db.SiteCredentialsAAD(acct, "kvm")), t0)
		})
		kvm.HasCredentials = true
		err = d.View(ctx, func(tx *db.Tx) error {
			list, err := tx.Sites(acct)
			if err != nil {
				return err
			}
			if len(list) != 4 || list[0].ID != "default" || list[1].ID != "dr" || list[2].ID != "kvm" || list[3].ID != "local" {
				t.Fatalf("sites: %+v, want default, dr, kvm, local", list)
			}
			if list[0].Provider != api.ProviderQEMU || list[0].URI != "" || list[0].Pool != "" || list[0].HasCredentials {
				t.Errorf("a site made without a provider: %+v, want qemu without URI, pool or credentials", list[0])
			}
			if list[2] != kvm {
				t.Errorf("kvm listed: %+v, want %+v", list[2], kvm)
			}
			if list[3].HasCredentials || list[3].Pool != "images" {
				t.Errorf("local: %+v, want pool images and no credentials", list[3])
			}
			if s, err := tx.Site(acct, "kvm"); err != nil || s != kvm {
				t.Errorf("kvm: %+v, %v; want %+v", s, err, kvm)
			}
			if s, err := tx.Site(planOther, "kvm"); err != nil || s.Provider != api.ProviderImage || s.HasCredentials {
				t.Errorf("the other account's kvm: %+v, %v; want an image site without credentials", s, err)
			}
			if _, err := tx.SiteCredentials(planOther, "kvm"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("credentials read from another account: %v, want ErrNotFound", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		checkSiteLaunchTarget(t, d, key, kvm, creds)

		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.PutSiteCredentials(acct, "mars", []byte("x"), t0) }); !errors.Is(err, db.ErrReferenced) {
			t.Errorf("credentials for an unknown site: %v, want ErrReferenced", err)
		}
		update(t, d, func(tx *db.Tx) error { return tx.DeleteSite(acct, "kvm") })
		update(t, d, func(tx *db.Tx) error { return tx.CreateSite(acct, api.Site{ID: "kvm", CreatedAt: t0}) })
		err = d.View(ctx, func(tx *db.Tx) error {
			if _, err := tx.SiteCredentials(acct, "kvm"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("credentials of a deleted site: %v, want ErrNotFound", err)
			}
			if s, err := tx.Site(acct, "kvm"); err != nil || s.HasCredentials || s.Provider != api.ProviderQEMU {
				t.Errorf("kvm made again: %+v, %v; want a qemu site without credentials", s, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// checkSiteLaunchTarget: SiteLaunchTarget gives the site kvm (of the fixture's account)
// with its credentials opened, a site without credentials with none; it fails for an
// unknown site, another master key, or credentials sealed for another site.
func checkSiteLaunchTarget(t *testing.T, d *db.DB, key store.MasterKey, kvm api.Site, creds []byte) {
	t.Helper()
	ctx := context.Background()
	target, err := d.SiteLaunchTarget(ctx, acct, "kvm", key)
	if err != nil || target.Site != kvm || !bytes.Equal(target.Credentials, creds) {
		t.Errorf("launch target kvm: %+v, %v; want the site and its credentials opened", target, err)
	}
	if target, err := d.SiteLaunchTarget(ctx, acct, "local", key); err != nil || target.Credentials != nil || target.URI != "qemu:///system" {
		t.Errorf("launch target local: %+v, %v; want its URI and no credentials", target, err)
	}
	if _, err := d.SiteLaunchTarget(ctx, acct, "mars", key); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("launch target of an unknown site: %v, want ErrNotFound", err)
	}
	other, _ := store.NewMasterKey()
	if _, err := d.SiteLaunchTarget(ctx, acct, "kvm", other); !errors.Is(err, store.ErrWrongKey) {
		t.Errorf("credentials opened with another master key: %v, want ErrWrongKey", err)
	}
	// Sealed for one site, credentials do not open for another.
	update(t, d, func(tx *db.Tx) error {
		return tx.PutSiteCredentials(acct, "local", key.Wrap(creds, db.SiteCredentialsAAD(acct, "kvm")), t0)
	})
	if _, err := d.SiteLaunchTarget(ctx, acct, "local", key); !errors.Is(err, store.ErrWrongKey) {
		t.Errorf("credentials moved to another site: %v, want ErrWrongKey", err)
	}
}
