package controlplane_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
)

const testBlock = 64 << 10

// image writes a sparse image of size bytes with random content in every third block
// (seeded), zeros elsewhere, and returns its path.
func image(t *testing.T, size int64, seed uint64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	buf := make([]byte, testBlock)
	for b := int64(0); b*testBlock < size; b += 3 {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, b*testBlock); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// changed copies an image and changes n of its blocks.
func changed(t *testing.T, src string, blocks ...int64) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		copy(data[b*testBlock:], bytes.Repeat([]byte{byte(b + 1)}, testBlock))
	}
	p := filepath.Join(t.TempDir(), "changed.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sameFile(t *testing.T, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("%s (%d bytes) differs from %s (%d bytes)", got, len(a), want, len(b))
	}
}

func imageSettings(t *testing.T, e *env, server string) {
	t.Helper()
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider = api.ProviderImage
	if _, err := e.admin.SetLaunchSettings(e.ctx, server, ls); err != nil {
		t.Fatal(err)
	}
}

// TestRecoveryDrillAndTerminateWithTheImageProvider runs the recovery API end to end
// without a VM: PITs in a real staging store, a recovery (newest consistent PIT), a
// drill at a time (an older PIT), the refusals, termination protection and terminate.
func TestRecoveryDrillAndTerminateWithTheImageProvider(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		repo := recoverytest.Store(t, e.cp)
		const size = 6 << 20
		srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": size})
		other := recoverytest.Server(t, e.cp, "m2", map[string]int64{"vda": size})
		img1 := image(t, size, 1)
		img2 := changed(t, img1, 4, 5, 50)
		now := e.clock.Now()
		p1, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, now.Add(-2*time.Hour), recoverytest.Volume{Name: "vda", Image: img1})
		p2, n := recoverytest.PIT(t, e.cp, repo, srv, consistency.Filesystem, now.Add(-time.Hour),
			recoverytest.Volume{Name: "vda", Image: img2, Previous: img1})
		if n != 3 {
			t.Fatalf("the second PIT wrote %d blocks, want the 3 changed", n)
		}
		// The newest PIT is not consistent: it is never chosen without being asked for.
		recoverytest.PIT(t, e.cp, repo, srv, consistency.None, now.Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img1})
		po, _ := recoverytest.PIT(t, e.cp, repo, other, consistency.Crash, now.Add(-time.Hour), recoverytest.Volume{Name: "vda", Image: img1})
		imageSettings(t, e, srv.ID)
		op := e.userClient(api.RoleOperator)

		job, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}})
		if err != nil {
			t.Fatal(err)
		}
		if job.Status != api.JobPending || job.InitiatedBy != api.InitiatedStartRecovery || len(job.Servers) != 1 || job.Servers[0].SnapshotID != p2.ID {
			t.Fatalf("job as created: %+v", job)
		}
		job = recoverytest.WaitJob(t, op, job.ID, time.Minute)
		js := job.Servers[0]
		if js.LaunchStatus != api.LaunchLaunched || js.RTOSeconds == nil || job.EndedAt == nil {
			t.Fatalf("recovery ended as %+v", job)
		}
		want := []string{api.EventJobStart, api.EventUsingPreviousSnapshot, api.EventSnapshotStart, api.EventSnapshotEnd,
			api.EventConversionStart, api.EventConversionEnd, api.EventLaunchStart, api.EventLaunchEnd, api.EventJobEnd}
		if got := recoverytest.EventTypes(t, op, job.ID); !slices.Equal(got, want) {
			t.Fatalf("job log %v, want %v", got, want)
		}
		ri, err := op.RecoveryInstance(e.ctx, js.RecoveryInstanceID)
		if err != nil {
			t.Fatal(err)
		}
		if ri.State != api.InstanceStopped || ri.Provider != api.ProviderImage || ri.SnapshotID != p2.ID || ri.IsDrill ||
			ri.PITAgeSeconds != 3600 || ri.JobID != job.ID || len(ri.ProviderHandle.Disks) != 1 {
			t.Fatalf("recovery instance %+v", ri)
		}
		disk := ri.ProviderHandle.Disks[0]
		sameFile(t, disk, img2)
		var st syscall.Stat_t
		if err := syscall.Stat(disk, &st); err != nil || st.Blocks*512 > size/2 {
			t.Fatalf("the materialized disk allocates %d bytes of %d: zero blocks are not holes (%v)", st.Blocks*512, size, err)
		}

		// A second recovery of the server is refused while that one lives, unless forced.
		_, err = op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}})
		ae := wantAPIError(t, err, 409, api.CodeConflict)
		if !strings.Contains(ae.Message, ri.ID) || !strings.Contains(ae.Message, "--force") {
			t.Errorf("refusal %q does not name the instance and --force", ae.Message)
		}

		// A drill at a time between the PITs takes the older one, beside the recovery.
		at := now.Add(-90 * time.Minute)
		drill, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}, At: &at, IsDrill: true})
		if err != nil {
			t.Fatal(err)
		}
		drill = recoverytest.WaitJob(t, op, drill.ID, time.Minute)
		if drill.Servers[0].SnapshotID != p1.ID || drill.Servers[0].LaunchStatus != api.LaunchLaunched || !drill.IsDrill {
			t.Fatalf("drill %+v", drill)
		}
		dri, err := op.RecoveryInstance(e.ctx, drill.Servers[0].RecoveryInstanceID)
		if err != nil {
			t.Fatal(err)
		}
		sameFile(t, dri.ProviderHandle.Disks[0], img1)
		yes := true
		if l, err := op.RecoveryInstances(e.ctx, api.RecoveryInstanceFilter{Drill: &yes}); err != nil || len(l.Items) != 1 || l.Items[0].ID != dri.ID {
			t.Fatalf("drills listed: %+v %v", l, err)
		}

		// Bad input: each refused with a reason, and no job made.
		for _, c := range []struct {
			req    api.StartRecoveryRequest
			status int
			say    string
		}{
			{api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: "s-00000000000000bad"}}}, 404, "not found"},
			{api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID, RecoverySnapshotID: "pit-00000000000000bad"}}, IsDrill: true}, 404, "not found"},
			{api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID, RecoverySnapshotID: po.ID}}, IsDrill: true}, 400, "is a PIT of source server " + other.ID},
			{api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}, At: ptr(now.Add(-3 * time.Hour)), IsDrill: true}, 409, "no consistent PIT at or before"},
			{api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}, IsDrill: true, Force: true}, 400, "force is for recoveries"},
		} {
			_, err := op.StartRecovery(e.ctx, c.req)
			ae := wantAPIError(t, err, c.status, "")
			if !strings.Contains(ae.Message, c.say) {
				t.Errorf("%+v: %q does not say %q", c.req, ae.Message, c.say)
			}
		}
		// A PIT past retention: recorded, but gone from the staging store.
		if err := repo.DeletePIT(e.ctx, srv.ID, p1.ID); err != nil {
			t.Fatal(err)
		}
		_, err = op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID, RecoverySnapshotID: p1.ID}}, IsDrill: true})
		if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "past retention") {
			t.Errorf("past retention: %q", ae.Message)
		}

		// Termination protection: terminate refuses, saying how to lift it.
		if _, err := op.SetTerminationProtection(e.ctx, ri.ID, true); err != nil {
			t.Fatal(err)
		}
		_, err = op.TerminateRecoveryInstances(e.ctx, api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: []string{ri.ID}})
		if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "protect "+ri.ID+" --off") {
			t.Errorf("protected: %q", ae.Message)
		}
		if _, err := op.SetTerminationProtection(e.ctx, ri.ID, false); err != nil {
			t.Fatal(err)
		}
		term, err := op.TerminateRecoveryInstances(e.ctx, api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: []string{ri.ID, dri.ID}})
		if err != nil {
			t.Fatal(err)
		}
		term = recoverytest.WaitJob(t, op, term.ID, time.Minute)
		for _, s := range term.Servers {
			if s.LaunchStatus != api.LaunchTerminated || s.SourceServerID != srv.ID {
				t.Fatalf("terminate job %+v", term)
			}
		}
		if _, err := os.Stat(disk); !os.IsNotExist(err) {
			t.Errorf("the terminated instance's disk is still there: %v", err)
		}
		if got, _ := op.RecoveryInstance(e.ctx, ri.ID); got.State != api.InstanceTerminated || got.TerminatedAt == nil {
			t.Errorf("terminated instance reads %+v", got)
		}
		_, err = op.TerminateRecoveryInstances(e.ctx, api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: []string{ri.ID}})
		wantAPIError(t, err, 409, api.CodeConflict)
		// With the recovery gone, a new one is accepted again.
		if _, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID, RecoverySnapshotID: p2.ID}}}); err != nil {
			t.Fatalf("a recovery after the first was terminated: %v", err)
		}

		// Every change is audited.
		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{})
		if err != nil {
			t.Fatal(err)
		}
		actions := map[string]bool{}
		for _, a := range audit.Items {
			actions[a.Action] = true
		}
		for _, a := range []string{"job.start-recovery", "job.start-drill", "recovery-instance.launch", "recovery-instance.set-termination-protection",
			"job.terminate-recovery-instances", "recovery-instance.terminate"} {
			if !actions[a] {
				t.Errorf("no audit entry %s", a)
			}
		}
	})
}

// TestJobLimits: servers per job and active jobs are limited, as DRS limits them.
func TestJobLimits(t *testing.T) {
	e := startWith(t, db.SQLite, func(c *controlplane.Config) {
		c.Recovery.MaxServersPerJob, c.Recovery.MaxActiveJobs = 1, 1
	})
	op := e.userClient(api.RoleOperator)
	_, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{
		{SourceServerID: "s-00000000000000001"}, {SourceServerID: "s-00000000000000002"}}})
	if ae := wantAPIError(t, err, 409, api.CodeQuotaExceeded); !strings.Contains(ae.Message, "at most 1") {
		t.Errorf("servers per job: %q", ae.Message)
	}
	// A job another control plane holds counts as active.
	repo := recoverytest.Store(t, e.cp)
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
	recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: image(t, 1<<20, 3)})
	lease := e.clock.Now().Add(time.Hour)
	err = e.cp.DB().Update(e.ctx, func(tx *db.Tx) error {
		return tx.CreateJob(db.Job{Job: api.Job{ID: "drsjob-00000000000000001", Type: api.JobLaunch, Status: api.JobStarted,
			CreatedAt: e.clock.Now()}, AccountID: e.cp.SystemAccountID(), RunnerID: "elsewhere", LeaseUntil: &lease})
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}, IsDrill: true})
	if ae := wantAPIError(t, err, 409, api.CodeQuotaExceeded); !strings.Contains(ae.Message, "jobs running") {
		t.Errorf("active jobs: %q", ae.Message)
	}
}

// TestJobsResumeAfterARestart stops the control plane with jobs in every state a crash
// can leave them in, and starts it again: each is resumed or failed with the reason,
// none is lost.
func TestJobsResumeAfterARestart(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			e := &env{t: t, kind: kind, clock: &clock{now: time.Now().UTC().Truncate(time.Millisecond)}, dataDir: t.TempDir(),
				ctx: context.Background(), agentTimeout: 10000 * time.Hour}
			dbURL := dbtest.URL(t, kind)
			e.open(dbURL)
			repo := recoverytest.Store(t, e.cp)
			srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 2 << 20})
			img := image(t, 2<<20, 5)
			pit, _ := recoverytest.PIT(t, e.cp, repo, srv, consistency.Filesystem, e.clock.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
			imageSettings(t, e, srv.ID)
			account := e.cp.SystemAccountID()
			e.stopCurrent()
			e.cp = nil

			// What a crash leaves: jobs this control plane had claimed, a server half-way
			// through materializing (a partial disk on disk), one at LAUNCH, and one whose
			// PIT was deleted meanwhile.
			runner, err := os.ReadFile(filepath.Join(e.dataDir, "runner-id"))
			if err != nil {
				t.Fatal(err)
			}
			d, err := db.Open(e.ctx, dbURL)
			if err != nil {
				t.Fatal(err)
			}
			lease := e.clock.Now().Add(time.Hour)
			steps := map[string]string{"drsjob-00000000000000001": api.StepSnapshot, "drsjob-00000000000000002": api.StepLaunch,
				"drsjob-00000000000000003": api.StepConversion}
			ris := map[string]string{}
			err = d.Update(e.ctx, func(tx *db.Tx) error {
				for i, id := range slices.Sorted(maps.Keys(steps)) {
					ri := api.NewID(api.PrefixRecoveryInstance)
					ris[id] = ri
					snap := pit.ID
					if i == 2 {
						snap = "pit-0000000000000dead"
					}
					j := db.Job{Job: api.Job{ID: id, Type: api.JobLaunch, InitiatedBy: api.InitiatedStartDrill, IsDrill: true,
						Status: api.JobStarted, CreatedAt: e.clock.Now(), Servers: []api.JobServer{{SourceServerID: srv.ID,
							RecoveryInstanceID: ri, SnapshotID: snap, LaunchStatus: api.LaunchInProgress, Step: steps[id]}}},
						AccountID: account, RunnerID: strings.TrimSpace(string(runner)), LeaseUntil: &lease}
					if err := tx.CreateJob(j); err != nil {
						return err
					}
					if err := tx.AddJobEvent(id, api.JobLogEvent{ID: fmt.Sprintf("%016x", i+1), Time: e.clock.Now(), Type: api.EventJobStart}); err != nil {
						return err
					}
				}
				return nil
			})
			d.Close()
			if err != nil {
				t.Fatal(err)
			}
			partial := filepath.Join(e.dataDir, "recovery", ris["drsjob-00000000000000001"], "disks")
			if err := os.MkdirAll(partial, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(partial, ris["drsjob-00000000000000001"]+"-disk0-vda.raw"), []byte("half"), 0o600); err != nil {
				t.Fatal(err)
			}

			e.open(dbURL)
			op := e.userClient(api.RoleOperator)
			for id, step := range steps {
				j := recoverytest.WaitJob(t, op, id, time.Minute)
				s := j.Servers[0]
				log, err := op.JobLog(e.ctx, id, 0, "")
				if err != nil {
					t.Fatal(err)
				}
				var text []string
				for _, ev := range log.Items {
					text = append(text, ev.Type+": "+ev.Message)
				}
				all := strings.Join(text, "\n")
				if !strings.Contains(all, "the control plane restarted during "+strings.ToLower(step)) {
					t.Errorf("job %s: the log does not say where the restart caught it:\n%s", id, all)
				}
				if id == "drsjob-00000000000000003" {
					if s.LaunchStatus != api.LaunchFailed || !strings.Contains(s.Error, "was deleted") {
						t.Errorf("job %s: %+v, want FAILED saying the PIT was deleted", id, s)
					}
					continue
				}
				if s.LaunchStatus != api.LaunchLaunched {
					t.Fatalf("job %s after the restart: %+v\n%s", id, s, all)
				}
				ri, err := op.RecoveryInstance(e.ctx, s.RecoveryInstanceID)
				if err != nil {
					t.Fatal(err)
				}
				sameFile(t, ri.ProviderHandle.Disks[0], img)
			}
		})
	}
}
