package db_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// Source servers' tags: stored, read back (whole rows and list summaries), and
// selected by — exactly, case-sensitively, all of them, within one account — on both
// engines, however their values are quoted.
func TestSourceServerTags(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		fixture(t, d)
		ctx := context.Background()
		id := func(i int) string { return "s-0000000000000000" + string(rune('0'+i)) }
		tags := map[int]map[string]string{
			0: {"app": "web", "tier": "1", "note": `say "hi" <b>&\`},
			1: {"app": "web", "tier": "2"},
			2: {"app": "webx", "tier": "1"},
			3: {"xapp": "web"},
			4: {"App": "web", "APP": "WEB"},
			5: {"note": `"app":"web"`},
		}
		err := d.Update(ctx, func(tx *db.Tx) error {
			for i, tg := range tags {
				if err := tx.SetSourceServerTags(id(i), tg, t0); err != nil {
					return err
				}
			}
			if err := tx.SetSourceServerTags("s-00000000000000099", map[string]string{"a": "b"}, t0); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("tags of an unknown server: %v", err)
			}
			return otherAccountServer(tx, map[string]string{"app": "web"})
		})
		if err != nil {
			t.Fatal(err)
		}
		err = d.View(ctx, func(tx *db.Tx) error {
			for i := range 7 {
				s, err := tx.SourceServer(id(i))
				if err != nil {
					return err
				}
				if want := tags[i]; len(want)+len(s.Tags) > 0 && !reflect.DeepEqual(s.Tags, want) {
					t.Errorf("%s has tags %v, want %v", s.ID, s.Tags, want)
				}
			}
			for sel, want := range map[string][]string{
				"app=web":                 {id(0), id(1)},
				"app=web,tier=1":          {id(0)},
				"tier=1":                  {id(0), id(2)},
				"app=we":                  {},
				"app=WEB":                 {},
				"xapp=web":                {id(3)},
				"note=" + tags[0]["note"]: {id(0)},
				"note=" + tags[5]["note"]: {id(5)},
			} {
				got, err := tx.SourceServersWithTags(acct, selector(sel))
				if err != nil {
					return err
				}
				if !reflect.DeepEqual(ids(got), want) {
					t.Errorf("%s selects %v, want %v", sel, ids(got), want)
				}
				page, _, err := tx.ListSourceServers(acct, api.SourceServerFilter{Tags: selector(sel)})
				if err != nil {
					return err
				}
				if len(page) != len(want) {
					t.Errorf("the list filtered by %s has %v, want %v", sel, ids(page), want)
				}
			}
			all, err := tx.SourceServersWithTags(acct, nil)
			if err != nil || len(all) != 10 {
				t.Errorf("no tags select %d servers (%v), want the account's 10", len(all), err)
			}
			sums, _, err := tx.ListSourceServerSummaries(acct, api.SourceServerFilter{Tags: map[string]string{"tier": "2"}})
			if err != nil {
				return err
			}
			if len(sums) != 1 || !strings.Contains(sums[0], `"tags":{"app":"web","tier":"2"}`) {
				t.Errorf("summaries of tier=2: %v", sums)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// selector reads "k=v,k=v".
func selector(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

// otherAccountServer adds an account with one server carrying tags.
func otherAccountServer(tx *db.Tx, tags map[string]string) error {
	const other = "acct-00000000000000002"
	a := db.Account{Account: api.Account{ID: other, Name: "other", QuotaSourceServers: 10, CreatedAt: t0},
		Template: api.DefaultReplicationSettings("file:///var/lib/lifeboat/staging")}
	if err := tx.CreateAccount(a); err != nil {
		return err
	}
	if err := tx.CreateSite(other, api.Site{ID: "default", CreatedAt: t0}); err != nil {
		return err
	}
	return tx.CreateSourceServer(db.SourceServer{SourceServer: api.SourceServer{ID: "s-00000000000000100", AccountID: other,
		MachineID: "m-other", Hostname: "other", SiteID: "default", Replication: api.NewReplicationState(t0),
		CertificateExpiresAt: t0.AddDate(1, 0, 0), CreatedAt: t0, UpdatedAt: t0, Tags: tags}, CertSerial: "x"})
}
