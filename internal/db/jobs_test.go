package db_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

func TestJobsLogAndRTO(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		fixture(t, d)
		const s1, s2 = "s-00000000000000001", "s-00000000000000002"
		job := db.Job{Job: api.Job{ID: "drsjob-00000000000000001", Type: api.JobLaunch, InitiatedBy: api.InitiatedStartRecovery,
			Status: api.JobPending, CreatedBy: "token:x", CreatedAt: t0,
			Servers: []api.JobServer{
				{SourceServerID: s1, RecoveryInstanceID: "i-00000000000000001", SnapshotID: "pit-00000000000000001", LaunchStatus: api.LaunchPending},
				{SourceServerID: s2, RecoveryInstanceID: "i-00000000000000002", SnapshotID: "pit-00000000000000002", LaunchStatus: api.LaunchPending},
			}}, AccountID: acct, Params: db.JobParams{Force: true}}
		drill := job
		drill.ID, drill.IsDrill, drill.CreatedAt, drill.InitiatedBy = "drsjob-00000000000000002", true, t0.Add(time.Second), api.InitiatedStartDrill
		drill.Servers = []api.JobServer{{SourceServerID: s1, RecoveryInstanceID: "i-00000000000000003", LaunchStatus: api.LaunchPending}}
		ev := func(i int, server, typ string, at time.Duration) api.JobLogEvent {
			return api.JobLogEvent{ID: fmt.Sprintf("%020d", i), Time: t0.Add(at), Type: typ, SourceServerID: server,
				Message: typ, Detail: map[string]any{"n": float64(i)}}
		}
		err := d.Update(ctx, func(tx *db.Tx) error {
			if err := tx.CreateJob(job); err != nil {
				return err
			}
			if err := tx.CreateJob(drill); err != nil {
				return err
			}
			for i, e := range []api.JobLogEvent{
				ev(1, "", api.EventJobStart, 0),
				ev(2, s1, api.EventSnapshotStart, time.Second),
				ev(3, s1, api.EventLaunchEnd, 40*time.Second),
				ev(4, s1, api.EventPostLaunchEnd, 55*time.Second), // a health check: RTO runs to it
				ev(5, s2, api.EventLaunchFailed, 20*time.Second),
				ev(6, s2, api.EventPostLaunchEnd, 10*time.Second), // no LAUNCH_END: no RTO
				ev(7, s1, api.EventJobStart, 30*time.Second),      // a server's JOB_START does not move the job's start
			} {
				if err := tx.AddJobEvent(job.ID, e); err != nil {
					return fmt.Errorf("event %d: %w", i, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		var got db.Job
		if err := d.View(ctx, func(tx *db.Tx) (err error) { got, err = tx.Job(job.ID); return err }); err != nil {
			t.Fatal(err)
		}
		if got.InitiatedBy != api.InitiatedStartRecovery || got.CreatedBy != "token:x" || !got.Params.Force || len(got.Servers) != 2 {
			t.Fatalf("job read back as %+v", got)
		}
		if r := got.Servers[0].RTOSeconds; r == nil || *r != 55 {
			t.Errorf("RTO of %s = %v, want 55 s (JOB_START to the last post-launch action)", s1, r)
		}
		if r := got.Servers[1].RTOSeconds; r != nil {
			t.Errorf("a server that failed to launch has RTO %v", *r)
		}

		// The log pages in order, and the token follows it.
		var page []api.JobLogEvent
		var next string
		if err := d.View(ctx, func(tx *db.Tx) (err error) { page, next, err = tx.JobLog(job.ID, 4, ""); return err }); err != nil {
			t.Fatal(err)
		}
		if len(page) != 4 || page[0].Type != api.EventJobStart || page[3].Type != api.EventPostLaunchEnd || page[1].Detail["n"] != float64(2) {
			t.Fatalf("first page %+v", page)
		}
		if err := d.View(ctx, func(tx *db.Tx) (err error) { page, next, err = tx.JobLog(job.ID, 4, next); return err }); err != nil {
			t.Fatal(err)
		}
		if len(page) != 3 || page[2].ID != fmt.Sprintf("%020d", 7) || next != page[2].ID {
			t.Fatalf("second page %+v next %q", page, next)
		}
		if err := d.View(ctx, func(tx *db.Tx) (err error) { page, next, err = tx.JobLog(job.ID, 4, next); return err }); err != nil || len(page) != 0 {
			t.Fatalf("past the end: %v %+v", err, page)
		}

		// Counts, pending recoveries (drills do not count), claims and leases.
		err = d.Update(ctx, func(tx *db.Tx) error {
			jobs, servers, err := tx.ActiveJobCounts(acct)
			if err != nil || jobs != 2 || servers != 3 {
				return fmt.Errorf("active: %d jobs %d servers %v", jobs, servers, err)
			}
			pend, err := tx.PendingRecoveries(s1)
			if err != nil || len(pend) != 1 || pend[0] != job.ID {
				return fmt.Errorf("pending recoveries of %s: %v %v", s1, pend, err)
			}
			ids, err := tx.ClaimJobs("runner-a", t0, t0.Add(time.Minute))
			if err != nil || len(ids) != 2 {
				return fmt.Errorf("claim by a: %v %v", ids, err)
			}
			if ids, err := tx.ClaimJobs("runner-b", t0.Add(30*time.Second), t0.Add(2*time.Minute)); err != nil || len(ids) != 0 {
				return fmt.Errorf("b claimed held jobs: %v %v", ids, err)
			}
			if ids, err := tx.ClaimJobs("runner-a", t0.Add(30*time.Second), t0.Add(2*time.Minute)); err != nil || len(ids) != 2 {
				return fmt.Errorf("a could not renew: %v %v", ids, err)
			}
			end := t0.Add(time.Hour)
			if err := tx.SetJobStatus(drill.ID, api.JobCompleted, end, &end); err != nil {
				return err
			}
			if ids, err := tx.ClaimJobs("runner-b", t0.Add(3*time.Minute), t0.Add(4*time.Minute)); err != nil || len(ids) != 1 || ids[0] != job.ID {
				return fmt.Errorf("b after the lease lapsed: %v %v", ids, err)
			}
			s := db.JobServer{JobID: job.ID, JobServer: job.Servers[0], UpdatedAt: end}
			s.LaunchStatus, s.Step, s.Progress = api.LaunchInProgress, api.StepSnapshot, &api.JobProgress{DoneBytes: 5, TotalBytes: 10}
			return tx.PutJobServer(s)
		})
		if err != nil {
			t.Fatal(err)
		}
		var list []db.Job
		if err := d.View(ctx, func(tx *db.Tx) (err error) { list, next, err = tx.ListJobs(acct, 1, ""); return err }); err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != drill.ID || list[0].Status != api.JobCompleted || list[0].EndedAt == nil || next == "" {
			t.Fatalf("first page of jobs: %+v next %q", list, next)
		}
		if err := d.View(ctx, func(tx *db.Tx) (err error) { list, next, err = tx.ListJobs(acct, 1, next); return err }); err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != job.ID || next != "" || list[0].RunnerID != "runner-b" {
			t.Fatalf("second page of jobs: %+v next %q", list, next)
		}
		if p := list[0].Servers[0].Progress; list[0].Servers[0].Step != api.StepSnapshot || p == nil || p.DoneBytes != 5 {
			t.Fatalf("server row not updated: %+v", list[0].Servers[0])
		}
		if err := d.View(ctx, func(tx *db.Tx) error { _, _, err := tx.ListJobs(acct, 1, "bogus"); return err }); !errors.Is(err, db.ErrBadPageToken) {
			t.Fatalf("bad page token: %v", err)
		}
	})
}

func TestRecoveryInstancesAndInstances(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		ctx := context.Background()
		fixture(t, d)
		const srv = "s-00000000000000001"
		ri := db.RecoveryInstance{RecoveryInstance: api.RecoveryInstance{ID: "i-00000000000000001", SourceServerID: srv,
			JobID: "drsjob-00000000000000001", SnapshotID: "pit-00000000000000001", SnapshotTime: t0.Add(-90 * time.Second),
			SiteID: "default", Provider: api.ProviderQEMU, State: api.InstanceLaunching,
			ProviderHandle: api.ProviderHandle{Dir: "/r/i-1", VMDir: "/r/i-1/vm", PID: 42},
			LaunchSettings: api.DefaultLaunchSettings(1, 1<<30), CreatedAt: t0, UpdatedAt: t0}, AccountID: acct, RunnerID: "host-a"}
		drill := ri
		drill.ID, drill.IsDrill, drill.CreatedAt = "i-00000000000000002", true, t0.Add(time.Second)
		in := db.Instance{Instance: api.Instance{ID: "inst-00000000000000001", Name: "old-web", SiteID: "default", Provider: "qemu",
			Disks: []api.InstanceDisk{{Path: "/dev/vdb", SizeBytes: 1 << 30}}, Tags: map[string]string{api.LaunchIntoTagDRS: api.LaunchIntoTagValue},
			BootMode: api.BootKernel, State: api.InstanceStopped, CreatedAt: t0, UpdatedAt: t0}, AccountID: acct}
		err := d.Update(ctx, func(tx *db.Tx) error {
			for _, r := range []db.RecoveryInstance{ri, drill} {
				if err := tx.PutRecoveryInstance(r); err != nil {
					return err
				}
			}
			ri.Address, ri.State, ri.PortForwards = "127.0.0.1", api.InstanceRunning, []api.PortForward{{Protocol: "tcp", HostPort: 8080, GuestPort: 80}}
			if err := tx.PutRecoveryInstance(ri); err != nil { // an update
				return err
			}
			if err := tx.SetTerminationProtection(ri.ID, true, t0); err != nil {
				return err
			}
			if err := tx.SetRecoveryInstanceState(drill.ID, api.InstanceTerminated, true, t0.Add(time.Hour)); err != nil {
				return err
			}
			if err := tx.CreateInstance(in); err != nil {
				return err
			}
			if err := tx.SetInstanceTags(in.ID, map[string]string{"role": "web"}, t0); err != nil {
				return err
			}
			if ok, err := tx.ClaimInstance(in.ID, "i-0000000000000000a", t0); err != nil || !ok {
				return fmt.Errorf("claim a free instance: %v %v", ok, err)
			}
			if ok, err := tx.ClaimInstance(in.ID, "i-0000000000000000b", t0); err != nil || ok {
				return fmt.Errorf("a second claim was granted: %v %v", ok, err)
			}
			if err := tx.ReleaseInstance(in.ID, "i-0000000000000000b", t0); err != nil { // not its holder: no effect
				return err
			}
			if ok, err := tx.ClaimInstance(in.ID, "i-0000000000000000a", t0); err != nil || !ok {
				return fmt.Errorf("the holder's claim again: %v %v", ok, err)
			}
			if err := tx.ReleaseInstance(in.ID, "i-0000000000000000a", t0); err != nil {
				return err
			}
			return tx.SetInstanceState(in.ID, api.InstanceRunning, "host-a", ri.ID, t0)
		})
		if err != nil {
			t.Fatal(err)
		}
		// PostgreSQL aborts a transaction at its first error: one refusal per transaction.
		dup := in
		dup.ID = "inst-00000000000000002"
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.CreateInstance(dup) }); !errors.Is(err, db.ErrConflict) {
			t.Fatalf("a second instance named %s: %v", in.Name, err)
		}
		noSite := in
		noSite.ID, noSite.Name, noSite.SiteID = "inst-00000000000000003", "x", "nowhere"
		if err := d.Update(ctx, func(tx *db.Tx) error { return tx.CreateInstance(noSite) }); !errors.Is(err, db.ErrReferenced) {
			t.Fatalf("an instance in a missing site: %v", err)
		}
		err = d.View(ctx, func(tx *db.Tx) error {
			got, err := tx.RecoveryInstance(ri.ID)
			if err != nil {
				return err
			}
			if got.State != api.InstanceRunning || !got.TerminationProtection || got.Address != "127.0.0.1" ||
				got.PITAgeSeconds != 90 || got.ProviderHandle.PID != 42 || got.RunnerID != "host-a" || len(got.PortForwards) != 1 ||
				got.Tags["lifeboat:source-server"] != srv {
				return fmt.Errorf("recovery instance read back as %+v", got)
			}
			active, err := tx.ActiveRecoveryInstances(srv)
			if err != nil || len(active) != 1 || active[0].ID != ri.ID {
				return fmt.Errorf("active: %v %v", active, err)
			}
			if n, err := tx.CountActiveRecoveryInstances(srv); err != nil || n != 1 {
				return fmt.Errorf("count active: %d %v", n, err)
			}
			all, _, err := tx.ListRecoveryInstances(acct, api.RecoveryInstanceFilter{All: true})
			if err != nil || len(all) != 2 || all[0].ID != drill.ID || all[0].TerminatedAt == nil {
				return fmt.Errorf("all: %+v %v", all, err)
			}
			yes := true
			drills, _, err := tx.ListRecoveryInstances(acct, api.RecoveryInstanceFilter{Drill: &yes})
			if err != nil || len(drills) != 0 {
				return fmt.Errorf("live drills: %+v %v", drills, err)
			}
			page, next, err := tx.ListRecoveryInstances(acct, api.RecoveryInstanceFilter{All: true, Limit: 1})
			if err != nil || len(page) != 1 || next == "" {
				return fmt.Errorf("page: %v %q %v", page, next, err)
			}
			page, next, err = tx.ListRecoveryInstances(acct, api.RecoveryInstanceFilter{All: true, Limit: 1, PageToken: next})
			if err != nil || len(page) != 1 || page[0].ID != ri.ID || next != "" {
				return fmt.Errorf("page 2: %v %q %v", page, next, err)
			}
			got2, err := tx.Instance(in.ID)
			if err != nil || got2.State != api.InstanceRunning || got2.RecoveryInstanceID != ri.ID || got2.Tags["role"] != "web" ||
				got2.BootMode != api.BootKernel || got2.Disks[0].SizeBytes != 1<<30 {
				return fmt.Errorf("instance read back as %+v %v", got2, err)
			}
			list, err := tx.Instances(acct)
			if err != nil || len(list) != 1 {
				return fmt.Errorf("instances: %v %v", list, err)
			}
			if _, err := tx.Instance("inst-00000000000000009"); !errors.Is(err, db.ErrNotFound) {
				return fmt.Errorf("missing instance: %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
