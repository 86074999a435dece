package db_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

const planOther = "acct-00000000000000002"

func prunID(i int) string { return fmt.Sprintf("prun-%017d", i) }

// planRun is a run of plan in acct, started at t0+at.
func planRun(i int, plan, mode, state string, at time.Duration) db.PlanRun {
	return db.PlanRun{AccountID: acct, PlanRun: api.PlanRun{ID: prunID(i), Plan: plan, PlanVersion: 1, Mode: mode, State: state,
		CreatedBy: "alice", StartedAt: t0.Add(at), Servers: []api.PlanRunServer{{SourceServerID: srvID(1), Wave: "web"}},
		Steps: []api.PlanRunStep{{Kind: api.PlanStepResolve, State: api.PlanStepPending}}}}
}

// runIDs lists the ids of runs.
func runIDs(runs []db.PlanRun) []string {
	var out []string
	for _, r := range runs {
		out = append(out, r.ID)
	}
	return out
}

// planFixture adds a second account (for what must stay within one) to the fixture.
func planFixture(t *testing.T, d *db.DB) {
	t.Helper()
	fixture(t, d)
	update(t, d, func(tx *db.Tx) error {
		return tx.CreateAccount(db.Account{Account: api.Account{ID: planOther, Name: "tenant", QuotaSourceServers: 10, CreatedAt: t0},
			Template: api.DefaultReplicationSettings("file:///var/lib/lifeboat/staging")})
	})
}

// TestPlansAndVersions: a plan's versions are kept, the plan reads as its newest, a
// version is stored once, and scheduled drills are found when due, in every account.
func TestPlansAndVersions(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		planFixture(t, d)
		v1 := db.Plan{AccountID: acct, Name: "shop", Version: 1, Source: "name: shop # v1\n", Servers: 2, CreatedBy: "alice", CreatedAt: t0, UpdatedAt: t0}
		v2 := v1
		v2.Version, v2.Source, v2.Servers, v2.CreatedBy, v2.UpdatedAt = 2, "name: shop # v2\n", 3, "bob", t0.Add(time.Minute)
		update(t, d, func(tx *db.Tx) error {
			if err := tx.PutPlan(v1); err != nil {
				return err
			}
			return tx.PutPlan(v2)
		})
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.PutPlan(v2) }); !errors.Is(err, db.ErrConflict) {
			t.Fatalf("storing version 2 twice: %v, want ErrConflict", err)
		}
		// A version 1 of a plan that exists: the plan is there already.
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.PutPlan(v1) }); !errors.Is(err, db.ErrConflict) {
			t.Fatalf("storing version 1 again: %v, want ErrConflict", err)
		}
		err := d.View(ctx, func(tx *db.Tx) error {
			p, err := tx.Plan(acct, "shop")
			if err != nil {
				return err
			}
			if p.Version != 2 || p.Source != v2.Source || p.Servers != 3 || p.CreatedBy != "alice" || !p.CreatedAt.Equal(t0) ||
				!p.UpdatedAt.Equal(v2.UpdatedAt) || !p.NextDrillAt.IsZero() || p.Schedule != "" {
				t.Errorf("plan shop reads %+v, want version 2 as created by alice", p)
			}
			vs, err := tx.PlanVersions(acct, "shop")
			if err != nil {
				return err
			}
			if len(vs) != 2 || vs[0].Version != 2 || vs[0].Source != v2.Source || vs[0].CreatedBy != "bob" || !vs[0].CreatedAt.Equal(v2.UpdatedAt) ||
				vs[1].Version != 1 || vs[1].Source != v1.Source || vs[1].CreatedBy != "alice" || !vs[1].CreatedAt.Equal(t0) {
				t.Errorf("versions of shop: %+v, want 2 then 1", vs)
			}
			if _, err := tx.Plan(planOther, "shop"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("shop in another account: %v, want ErrNotFound", err)
			}
			if vs, err := tx.PlanVersions(acct, "nope"); err != nil || vs == nil || len(vs) != 0 {
				t.Errorf("versions of no plan: %+v, %v, want an empty list", vs, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		// Scheduled drills: one of another account, due earlier; one without a schedule.
		update(t, d, func(tx *db.Tx) error {
			other := db.Plan{AccountID: planOther, Name: "lab", Version: 1, Source: "name: lab\n", Schedule: "@every 1h",
				NextDrillAt: t0.Add(30 * time.Minute), CreatedBy: "carol", CreatedAt: t0, UpdatedAt: t0}
			if err := tx.PutPlan(other); err != nil {
				return err
			}
			app := db.Plan{AccountID: acct, Name: "app", Version: 1, Source: "name: app\n", CreatedBy: "alice", CreatedAt: t0, UpdatedAt: t0}
			if err := tx.PutPlan(app); err != nil {
				return err
			}
			return tx.SetNextDrill(acct, "shop", t0.Add(time.Hour))
		})
		due := func(at time.Duration) []string {
			t.Helper()
			var ps []db.Plan
			if err := d.View(ctx, func(tx *db.Tx) (err error) { ps, err = tx.PlansDue(t0.Add(at)); return err }); err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, p := range ps {
				out = append(out, p.AccountID+"/"+p.Name)
			}
			return out
		}
		if got := due(29 * time.Minute); len(got) != 0 {
			t.Errorf("due before any drill: %v", got)
		}
		if got, want := due(time.Hour), []string{planOther + "/lab", acct + "/shop"}; !slices.Equal(got, want) {
			t.Errorf("due at t0+1h: %v, want %v (the earliest first)", got, want)
		}
		update(t, d, func(tx *db.Tx) error { return tx.SetNextDrill(planOther, "lab", time.Time{}) })
		if got, want := due(2*time.Hour), []string{acct + "/shop"}; !slices.Equal(got, want) {
			t.Errorf("due once lab has no drill scheduled: %v, want %v", got, want)
		}
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.SetNextDrill(acct, "nope", t0) }); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("the next drill of no plan: %v, want ErrNotFound", err)
		}
		err = d.View(ctx, func(tx *db.Tx) error {
			ps, err := tx.Plans(acct)
			if err != nil {
				return err
			}
			if len(ps) != 2 || ps[0].Name != "app" || ps[1].Name != "shop" || !ps[1].NextDrillAt.Equal(t0.Add(time.Hour)) {
				t.Errorf("plans of the account: %+v, want app and shop (due t0+1h)", ps)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestPlanRuns: one running run per plan (the database refuses a second), runs paged
// newest first, the running ones of every account, the last run of a mode and state,
// trimming that spares running runs, and deletion of a plan with its versions and runs.
func TestPlanRuns(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		planFixture(t, d)
		update(t, d, func(tx *db.Tx) error {
			for _, p := range []db.Plan{{AccountID: acct, Name: "shop"}, {AccountID: acct, Name: "app"}, {AccountID: planOther, Name: "shop"}} {
				p.Version, p.Source, p.CreatedBy, p.CreatedAt, p.UpdatedAt = 1, "name: "+p.Name+"\n", "alice", t0, t0
				if err := tx.PutPlan(p); err != nil {
					return err
				}
			}
			return nil
		})
		create := func(r db.PlanRun) error {
			return d.Update(ctx, func(tx *db.Tx) error { return tx.CreatePlanRun(r, r.StartedAt) })
		}
		r1 := planRun(1, "shop", api.PlanDrill, api.PlanRunRunning, time.Second)
		r2 := planRun(2, "shop", api.PlanFailover, api.PlanRunRunning, 2*time.Second)
		app := planRun(10, "app", api.PlanDrill, api.PlanRunRunning, 0)
		other := planRun(20, "shop", api.PlanDrill, api.PlanRunRunning, 0)
		other.AccountID = planOther
		if err := create(r1); err != nil {
			t.Fatal(err)
		}
		if err := create(r2); !errors.Is(err, db.ErrConflict) {
			t.Fatalf("a second running run of shop: %v, want ErrConflict", err)
		}
		// Other plans, and a plan of the same name in another account, run beside it.
		for _, r := range []db.PlanRun{app, other} {
			if err := create(r); err != nil {
				t.Fatalf("run %s of %s/%s beside shop's: %v", r.ID, r.AccountID, r.Plan, err)
			}
		}
		// Once r1 ended, another run of shop may start.
		r1.State = api.PlanRunSucceeded
		r1.Steps[0].State, r1.Steps[0].Message = api.PlanStepDone, "1 server in 1 wave"
		update(t, d, func(tx *db.Tx) error { return tx.UpdatePlanRun(r1, t0.Add(time.Minute)) })
		if err := create(r2); err != nil {
			t.Fatalf("a run of shop once the first ended: %v", err)
		}
		// Ended runs: r4 and r5 start at one instant (the id orders them).
		for _, r := range []db.PlanRun{
			planRun(3, "shop", api.PlanFailover, api.PlanRunSucceeded, 3*time.Second),
			planRun(5, "shop", api.PlanDrill, api.PlanRunSucceeded, 4*time.Second),
			planRun(4, "shop", api.PlanDrill, api.PlanRunFailed, 4*time.Second),
			planRun(6, "shop", api.PlanFailover, api.PlanRunFailed, 5*time.Second),
		} {
			if err := create(r); err != nil {
				t.Fatal(err)
			}
		}
		gone := planRun(99, "shop", api.PlanDrill, api.PlanRunFailed, 0)
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.UpdatePlanRun(gone, t0) }); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("updating a run that does not exist: %v, want ErrNotFound", err)
		}

		err := d.View(ctx, func(tx *db.Tx) error {
			got, err := tx.PlanRunByID(acct, r1.ID)
			if err != nil {
				return err
			}
			if got.AccountID != acct || got.State != api.PlanRunSucceeded || got.Plan != "shop" || !got.StartedAt.Equal(r1.StartedAt) ||
				len(got.Steps) != 1 || got.Steps[0].Message != "1 server in 1 wave" || len(got.Servers) != 1 || got.Servers[0].SourceServerID != srvID(1) {
				t.Errorf("run 1 reads %+v", got)
			}
			if _, err := tx.PlanRunByID(planOther, r1.ID); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("run 1 read from another account: %v, want ErrNotFound", err)
			}

			// Paging: newest first, ties by id, two at a time.
			var all []string
			token := ""
			for page := 0; ; page++ {
				runs, next, err := tx.PlanRuns(acct, "shop", 2, token)
				if err != nil {
					return err
				}
				if len(runs) != 2 {
					t.Errorf("page %d holds %d runs, want 2", page, len(runs))
				}
				all = append(all, runIDs(runs)...)
				if next == "" {
					break
				}
				if page > 5 {
					t.Fatalf("paging does not end: %v", all)
				}
				token = next
			}
			if want := []string{prunID(6), prunID(4), prunID(5), prunID(3), prunID(2), prunID(1)}; !slices.Equal(all, want) {
				t.Errorf("runs of shop, paged: %v, want %v", all, want)
			}
			if runs, next, err := tx.PlanRuns(acct, "shop", 0, ""); err != nil || len(runs) != 6 || next != "" {
				t.Errorf("runs of shop at the default page size: %v, %q, %v", runIDs(runs), next, err)
			}
			if _, _, err := tx.PlanRuns(acct, "shop", 2, "bogus"); !errors.Is(err, db.ErrBadPageToken) {
				t.Errorf("a bad page token: %v, want ErrBadPageToken", err)
			}

			running, err := tx.RunningPlanRuns()
			if err != nil {
				return err
			}
			if got := runIDs(running); len(got) != 3 || !slices.Contains(got, app.ID) || !slices.Contains(got, other.ID) || got[2] != r2.ID {
				t.Errorf("running runs: %v, want %s and %s (at t0) then %s", got, app.ID, other.ID, r2.ID)
			}

			for _, c := range []struct {
				mode, state, want string
			}{
				{"", api.PlanRunSucceeded, prunID(5)},
				{api.PlanFailover, api.PlanRunSucceeded, prunID(3)},
				{api.PlanDrill, api.PlanRunFailed, prunID(4)},
				{"", api.PlanRunFailed, prunID(6)},
				{"", api.PlanRunRunning, prunID(2)},
				{api.PlanFailback, api.PlanRunSucceeded, ""},
			} {
				r, err := tx.LastPlanRun(acct, "shop", c.mode, c.state)
				if err != nil {
					return err
				}
				got := ""
				if r != nil {
					got = r.ID
				}
				if got != c.want {
					t.Errorf("last %q run of shop that is %s: %q, want %q", c.mode, c.state, got, c.want)
				}
			}
			if r, err := tx.LastPlanRun(planOther, "shop", "", api.PlanRunSucceeded); r != nil || err != nil {
				t.Errorf("the other account's last succeeded run of shop: %+v, %v, want none", r, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		// Trimming keeps the newest two and the running one, which is older.
		shopRuns := func() []string {
			t.Helper()
			var runs []db.PlanRun
			if err := d.View(ctx, func(tx *db.Tx) (err error) { runs, _, err = tx.PlanRuns(acct, "shop", 100, ""); return err }); err != nil {
				t.Fatal(err)
			}
			return runIDs(runs)
		}
		update(t, d, func(tx *db.Tx) error { return tx.TrimPlanRuns(acct, "shop", 2) })
		if got, want := shopRuns(), []string{prunID(6), prunID(4), prunID(2)}; !slices.Equal(got, want) {
			t.Errorf("runs kept by a trim to 2: %v, want %v", got, want)
		}
		update(t, d, func(tx *db.Tx) error { return tx.TrimPlanRuns(acct, "shop", 0) })
		if got, want := shopRuns(), []string{prunID(2)}; !slices.Equal(got, want) {
			t.Errorf("runs kept by a trim to 0: %v, want only the running %v", got, want)
		}

		// Deleting shop takes its versions and runs (running or not), and nothing else.
		update(t, d, func(tx *db.Tx) error { return tx.DeletePlan(acct, "shop") })
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.DeletePlan(acct, "shop") }); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("deleting shop twice: %v, want ErrNotFound", err)
		}
		err = d.View(ctx, func(tx *db.Tx) error {
			if _, err := tx.Plan(acct, "shop"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("shop after its deletion: %v", err)
			}
			if vs, err := tx.PlanVersions(acct, "shop"); err != nil || len(vs) != 0 {
				t.Errorf("versions of a deleted plan: %+v, %v", vs, err)
			}
			if _, err := tx.PlanRunByID(acct, r2.ID); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("a run of a deleted plan: %v, want ErrNotFound", err)
			}
			running, err := tx.RunningPlanRuns()
			if err != nil {
				return err
			}
			if got := runIDs(running); len(got) != 2 || !slices.Contains(got, app.ID) || !slices.Contains(got, other.ID) {
				t.Errorf("running runs after shop's deletion: %v, want app's and the other account's", got)
			}
			if _, err := tx.Plan(planOther, "shop"); err != nil {
				t.Errorf("the other account's shop after ours was deleted: %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestPlanSecrets: secrets are stored, replaced, read, listed by name and deleted, within
// their account.
func TestPlanSecrets(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		planFixture(t, d)
		later := t0.Add(time.Minute)
		update(t, d, func(tx *db.Tx) error {
			if err := tx.PutPlanSecret(acct, "tsig", []byte("sealed-one"), t0); err != nil {
				return err
			}
			if err := tx.PutPlanSecret(acct, "hook", []byte{0, 1, 2, 255}, t0); err != nil {
				return err
			}
			if err := tx.PutPlanSecret(planOther, "tsig", []byte("theirs"), t0); err != nil {
				return err
			}
			return tx.PutPlanSecret(acct, "tsig", []byte("sealed-two"), later)
		})
		err := d.View(ctx, func(tx *db.Tx) error {
			if b, err := tx.PlanSecret(acct, "tsig"); err != nil || string(b) != "sealed-two" {
				t.Errorf("tsig once replaced: %q, %v", b, err)
			}
			if b, err := tx.PlanSecret(acct, "hook"); err != nil || !slices.Equal(b, []byte{0, 1, 2, 255}) {
				t.Errorf("hook: %v, %v", b, err)
			}
			if b, err := tx.PlanSecret(planOther, "tsig"); err != nil || string(b) != "theirs" {
				t.Errorf("the other account's tsig: %q, %v", b, err)
			}
			if _, err := tx.PlanSecret(planOther, "hook"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("hook read from another account: %v, want ErrNotFound", err)
			}
			list, err := tx.PlanSecrets(acct)
			if err != nil {
				return err
			}
			if len(list) != 2 || list[0].Name != "hook" || !list[0].UpdatedAt.Equal(t0) || list[1].Name != "tsig" || !list[1].UpdatedAt.Equal(later) {
				t.Errorf("secrets of the account: %+v, want hook then tsig (replaced later)", list)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		update(t, d, func(tx *db.Tx) error { return tx.DeletePlanSecret(acct, "tsig") })
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.DeletePlanSecret(acct, "tsig") }); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("deleting tsig twice: %v, want ErrNotFound", err)
		}
		err = d.View(ctx, func(tx *db.Tx) error {
			if _, err := tx.PlanSecret(acct, "tsig"); !errors.Is(err, db.ErrNotFound) {
				t.Errorf("tsig once deleted: %v, want ErrNotFound", err)
			}
			if b, err := tx.PlanSecret(planOther, "tsig"); err != nil || string(b) != "theirs" {
				t.Errorf("the other account's tsig after ours was deleted: %q, %v", b, err)
			}
			if list, err := tx.PlanSecrets(acct); err != nil || len(list) != 1 || list[0].Name != "hook" {
				t.Errorf("secrets after deleting tsig: %+v, %v", list, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// TestPlanJobCreatedBy: the newest job a creator started, in its account only.
func TestPlanJobCreatedBy(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		planFixture(t, d)
		job := func(i int, account, createdBy string, at time.Duration) db.Job {
			return db.Job{Job: api.Job{ID: fmt.Sprintf("drsjob-%017d", i), Type: api.JobLaunch, InitiatedBy: api.InitiatedStartDrill, IsDrill: true,
				Status: api.JobPending, CreatedBy: createdBy, CreatedAt: t0.Add(at)}, AccountID: account}
		}
		const key = "plan:prun-x/1"
		update(t, d, func(tx *db.Tx) error {
			for _, j := range []db.Job{
				job(1, acct, key, 0),
				job(2, acct, key, time.Second),
				job(3, acct, "plan:prun-x/2", 2*time.Second),
				job(4, planOther, key, 3*time.Second),
				job(5, acct, "alice", 4*time.Second),
			} {
				if err := tx.CreateJob(j); err != nil {
					return err
				}
			}
			return nil
		})
		err := d.View(ctx, func(tx *db.Tx) error {
			for _, c := range []struct{ account, by, want string }{
				{acct, key, "drsjob-00000000000000002"},
				{acct, "plan:prun-x/2", "drsjob-00000000000000003"},
				{planOther, key, "drsjob-00000000000000004"},
				{acct, "plan:prun-x/3", ""},
				{planOther, "plan:prun-x/2", ""},
			} {
				if got, err := tx.JobCreatedBy(c.account, c.by); err != nil || got != c.want {
					t.Errorf("job of %s created by %s: %q, %v, want %q", c.account, c.by, got, err, c.want)
				}
			}
			// The creator also reads back from the job itself.
			j, err := tx.Job("drsjob-00000000000000002")
			if err != nil {
				return err
			}
			if j.CreatedBy != key {
				t.Errorf("job 2 reads created by %q, want %q", j.CreatedBy, key)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
