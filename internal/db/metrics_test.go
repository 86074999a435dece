package db_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// TestMetricsServers: one query gives every server of an account (or of all) with its
// state, its replicator's name and its newest PITs, of any level and recoverable.
func TestMetricsServers(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		planFixture(t, d)
		update(t, d, func(tx *db.Tx) error {
			other := db.SourceServer{SourceServer: api.SourceServer{ID: srvID(50), AccountID: planOther, MachineID: "x", Hostname: "elsewhere",
				SiteID: "default", Replication: api.NewReplicationState(t0), CertificateExpiresAt: t0, CreatedAt: t0, UpdatedAt: t0}}
			if err := tx.CreateSite(planOther, api.Site{ID: "default", CreatedAt: t0}); err != nil {
				return err
			}
			if err := tx.CreateSourceServer(other); err != nil {
				return err
			}
			for i, p := range []struct {
				level consistency.Level
				at    time.Duration
			}{{consistency.Filesystem, time.Minute}, {consistency.Crash, 2 * time.Minute}, {consistency.None, 3 * time.Minute}, {consistency.Filesystem, 30 * time.Second}} {
				if err := tx.CreateSnapshot(db.Snapshot{RecoverySnapshot: api.RecoverySnapshot{ID: fmt.Sprintf("pit-%017d", i),
					SourceServerID: srvID(1), Time: t0.Add(p.at), Level: p.level, CreatedAt: t0}, AccountID: acct}); err != nil {
					return err
				}
			}
			return nil
		})
		var mine, all []db.MetricsServer
		err := d.View(context.Background(), func(tx *db.Tx) (err error) {
			if mine, err = tx.MetricsServers(acct); err != nil {
				return err
			}
			all, err = tx.MetricsServers("")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(mine) != 10 || len(all) != 11 {
			t.Fatalf("%d servers in the account and %d in all, want 10 and 11", len(mine), len(all))
		}
		s1 := mine[1]
		if s1.ID != srvID(1) || s1.Account != "default" || s1.Hostname != "web-2" || s1.Replicator != "r1" ||
			s1.Replication.DataReplicationState != api.StateContinuous || !s1.Replication.ReadyForRecovery {
			t.Errorf("server 1 reads %+v", s1)
		}
		if s1.NewestPIT == nil || !s1.NewestPIT.Equal(t0.Add(3*time.Minute)) {
			t.Errorf("newest PIT of server 1 = %v, want the level-none one at t0+3m", s1.NewestPIT)
		}
		if s1.NewestRecoverablePIT == nil || !s1.NewestRecoverablePIT.Equal(t0.Add(2*time.Minute)) {
			t.Errorf("newest recoverable PIT of server 1 = %v, want the crash one at t0+2m", s1.NewestRecoverablePIT)
		}
		if s0 := mine[0]; s0.NewestPIT != nil || s0.NewestRecoverablePIT != nil || s0.Replicator != "r1" {
			t.Errorf("server 0, without PITs, reads %+v", s0)
		}
		if s := mine[9]; s.Replicator != "" || !s.CertificateExpiresAt.Equal(t0.AddDate(1, 0, 0)) {
			t.Errorf("server 9 (no replicator) reads %+v", s)
		}
		if last := all[10]; last.ID != srvID(50) || last.Account != "tenant" {
			t.Errorf("the other account's server reads %+v", last)
		}
	})
}

// TestMetricsReplicatorsJobsAndPlans: replicators with what their heartbeat said, jobs
// counted and timed, launches' RTOs as the job API measures them, plans' drills.
func TestMetricsReplicatorsJobsAndPlans(t *testing.T) {
	dbtest.Each(t, func(t *testing.T, d *db.DB) {
		planFixture(t, d)
		metricsFixture(t, d)
		var reps []db.MetricsReplicator
		var counts []db.JobCount
		var durations []db.JobDuration
		var rtos []db.LaunchRTO
		var launches []db.LaunchCount
		var plans []db.PlanDrills
		err := d.View(context.Background(), func(tx *db.Tx) (err error) {
			if reps, err = tx.MetricsReplicators(acct, t0); err != nil {
				return err
			}
			if counts, err = tx.JobCounts(acct); err != nil {
				return err
			}
			if durations, err = tx.FinishedJobDurations(""); err != nil {
				return err
			}
			if rtos, err = tx.LaunchRTOs(acct); err != nil {
				return err
			}
			if launches, err = tx.LaunchCounts(acct); err != nil {
				return err
			}
			plans, err = tx.PlanDrillResults(acct)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(reps) != 2 || reps[0].Name != "r1" || reps[0].Account != "default" || reps[0].State != api.ReplicatorLive ||
			reps[0].Metrics.Sessions != 3 || reps[0].Metrics.IngestBytesPerSecond != 4096 || reps[0].AssignedSourceServers != 3 ||
			reps[1].Name != "r2" || reps[1].State != api.ReplicatorLost {
			t.Errorf("replicators read %+v", reps)
		}
		if got := fmt.Sprint(counts); got != "[{default LAUNCH COMPLETED true 1} {default LAUNCH PENDING true 1}]" {
			t.Errorf("job counts %s", got)
		}
		if len(durations) != 1 || durations[0].Seconds != 120 || !durations[0].Drill || durations[0].Type != api.JobLaunch {
			t.Errorf("finished job durations %+v, want the one drill of 120 s", durations)
		}
		if len(rtos) != 1 || rtos[0].Seconds != 55 || !rtos[0].Drill {
			t.Errorf("RTOs %+v, want server 1's 55 s (to its post-launch action), none for the server that failed", rtos)
		}
		if got := fmt.Sprint(launches); got != "[{default FAILED true 1} {default IN_PROGRESS true 1} {default LAUNCHED true 1}]" {
			t.Errorf("launch counts %s", got)
		}
		if len(plans) != 2 || plans[0].Plan != "app" || plans[0].LastSucceeded || plans[0].Failed != 1 ||
			plans[1].Plan != "shop" || !plans[1].LastSucceeded || plans[1].Failed != 1 ||
			plans[1].LastEnded == nil || !plans[1].LastEnded.Equal(t0.Add(time.Hour+2*time.Minute)) {
			t.Errorf("plan drills %+v: want app failed, shop's last drill (not the running one, nor the failover) succeeded", plans)
		}
	})
}

// metricsFixture adds a heartbeat of replicator r1, a completed drill (server 1 launched
// with a post-launch action, server 2 failed) and a pending one, and drill runs of plans
// shop (failed, then succeeded, then one running, and a failed failover) and app (failed).
func metricsFixture(t *testing.T, d *db.DB) {
	t.Helper()
	const s1, s2 = "s-00000000000000001", "s-00000000000000002"
	job := db.Job{Job: api.Job{ID: "drsjob-00000000000000001", Type: api.JobLaunch, InitiatedBy: api.InitiatedStartDrill,
		Status: api.JobPending, IsDrill: true, CreatedAt: t0, Servers: []api.JobServer{
			{SourceServerID: s1, RecoveryInstanceID: "i-00000000000000001", LaunchStatus: api.LaunchLaunched},
			{SourceServerID: s2, RecoveryInstanceID: "i-00000000000000002", LaunchStatus: api.LaunchFailed},
		}}, AccountID: acct}
	running := job
	running.ID, running.Servers = "drsjob-00000000000000002", []api.JobServer{{SourceServerID: s1, RecoveryInstanceID: "i-00000000000000003", LaunchStatus: api.LaunchInProgress}}
	ended := t0.Add(2 * time.Minute)
	update(t, d, func(tx *db.Tx) error {
		if err := tx.Heartbeat("rep-00000000000000001", api.ReplicatorMetrics{CPUPercent: 50, RSSBytes: 1 << 20, VolumesServed: 2,
			Sessions: 3, IngestBytesPerSecond: 4096}, "v1", t0.Add(time.Minute)); err != nil {
			return err
		}
		for _, j := range []db.Job{job, running} {
			if err := tx.CreateJob(j); err != nil {
				return err
			}
		}
		for i, e := range []struct {
			server, typ string
			at          time.Duration
		}{{"", api.EventJobStart, 0}, {s1, api.EventLaunchEnd, 40 * time.Second}, {s1, api.EventPostLaunchEnd, 55 * time.Second},
			{s2, api.EventLaunchFailed, 20 * time.Second}} {
			if err := tx.AddJobEvent(job.ID, api.JobLogEvent{ID: fmt.Sprintf("%020d", i), Time: t0.Add(e.at), Type: e.typ,
				SourceServerID: e.server}); err != nil {
				return err
			}
		}
		if err := tx.SetJobStatus(job.ID, api.JobCompleted, ended, &ended); err != nil {
			return err
		}
		for _, name := range []string{"shop", "app"} {
			if err := tx.PutPlan(db.Plan{AccountID: acct, Name: name, Version: 1, Source: "name: " + name + "\n", CreatedBy: "alice",
				CreatedAt: t0, UpdatedAt: t0}); err != nil {
				return err
			}
		}
		for i, r := range []db.PlanRun{planRun(1, "shop", api.PlanDrill, api.PlanRunFailed, 0), planRun(2, "shop", api.PlanDrill, api.PlanRunSucceeded, time.Hour),
			planRun(3, "shop", api.PlanDrill, api.PlanRunRunning, 2*time.Hour), planRun(4, "shop", api.PlanFailover, api.PlanRunFailed, 3*time.Hour),
			planRun(5, "app", api.PlanDrill, api.PlanRunFailed, 0)} {
			if err := tx.CreatePlanRun(r, r.StartedAt.Add(time.Duration(i+1)*time.Minute)); err != nil {
				return err
			}
		}
		return nil
	})
}
