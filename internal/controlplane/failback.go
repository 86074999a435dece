package controlplane

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// reverseKey is the key recovery writes into a recovery instance's disk
// (api.RecoveryInfo.ReverseKey): the proof that a caller runs on that disk, derived
// from the master key and the instance's id so that nothing needs storing and nothing
// else can make it (docs/failback.md).
func (cp *ControlPlane) reverseKey(recoveryInstanceID string) string {
	m := hmac.New(sha256.New, cp.keys.master[:])
	m.Write([]byte("lifeboat reverse replication key v1\x00" + recoveryInstanceID))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// startReverseReplication makes the reversed source server of a recovery instance:
// the instance's agent, which asks for it (registerReversed), then replicates the
// instance back to the origin's site, starting from the PIT it was launched from.
func (c *call) startReverseReplication() (api.ReverseReplication, error) {
	var out api.ReverseReplication
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		ri, err := c.loadRecoveryInstance(tx, c.pathID())
		if err != nil {
			return err
		}
		if err := mayReverse(ri); err != nil {
			return err
		}
		origin, err := tx.SourceServer(ri.SourceServerID)
		if errors.Is(err, db.ErrNotFound) {
			return api.Conflict("recovery instance %s was recovered from source server %s, which was deleted: there is no origin to replicate back to", ri.ID, ri.SourceServerID)
		} else if err != nil {
			return err
		}
		acct, err := tx.LockAccount(ri.AccountID)
		if err != nil {
			return err
		}
		s := db.SourceServer{SourceServer: api.SourceServer{ID: api.NewID(api.PrefixSourceServer), AccountID: acct.ID,
			MachineID: ri.ID, Hostname: origin.Hostname, OS: origin.OS, Arch: origin.Arch, CPUs: origin.CPUs,
			MemoryBytes: origin.MemoryBytes, Volumes: origin.Volumes, SiteID: origin.SiteID,
			Replication: api.NewReplicationState(now), CreatedAt: now, UpdatedAt: now,
			Reversed: &api.ReversedLink{RecoveryInstanceID: ri.ID, OriginSourceServerID: origin.ID, SeedSnapshotID: ri.SnapshotID}},
			Overrides: origin.Overrides, DedicatedReplicator: origin.DedicatedReplicator}
		if err := tx.CreateSourceServer(s); err != nil {
			return err
		}
		settings, _, err := tx.LaunchSettings(origin.ID)
		if err != nil {
			return err
		}
		if err := tx.SetLaunchSettings(s.ID, settings, now); err != nil {
			return err
		}
		if err := tx.StartReversal(ri.ID, s.ID, now); err != nil {
			return err
		}
		if err := c.assignAccount(tx, acct.ID); err != nil {
			return err
		}
		job, err := c.reverseJob(tx, ri, s.ID, now)
		if err != nil {
			return err
		}
		out = api.ReverseReplication{RecoveryInstanceID: ri.ID, SourceServerID: s.ID, OriginSourceServerID: origin.ID,
			SeedSnapshotID: ri.SnapshotID, FailbackState: api.FailbackInProgress, JobID: job, CreatedAt: now}
		return c.record(tx, acct.ID, "recovery-instance.reverse-replication", "recovery-instance", ri.ID,
			map[string]any{"reversedSourceServerId": s.ID, "originSourceServerId": origin.ID, "seedSnapshotId": ri.SnapshotID}, out)
	})
	if err == nil {
		c.cp.rec.runner.Wake()
	}
	return out, err
}

// reverseJob makes the REVERSE_REPLICATION job that follows a reversed replication
// until it is CONTINUOUS (recovery.Runner), and returns its id.
func (c *call) reverseJob(tx *db.Tx, ri db.RecoveryInstance, reversed string, now time.Time) (string, error) {
	job := db.Job{Job: api.Job{ID: api.NewID(api.PrefixJob), Type: api.JobReverseReplication, InitiatedBy: api.InitiatedReverse,
		Status: api.JobPending, CreatedAt: now, Servers: []api.JobServer{{SourceServerID: reversed, RecoveryInstanceID: ri.ID,
			SnapshotID: ri.SnapshotID, LaunchStatus: api.LaunchPending}}}, AccountID: ri.AccountID}
	job.CreatedBy = c.createdBy()
	if err := tx.CreateJob(job); err != nil {
		return "", err
	}
	return job.ID, c.jobEvent(tx, job.ID, "", api.EventJobStart, fmt.Sprintf("reversed replication of recovery instance %s, as source server %s, started by %s",
		ri.ID, reversed, job.CreatedBy), map[string]any{"recoveryInstanceId": ri.ID, "reversedSourceServerId": reversed})
}

// mayReverse says why a recovery instance cannot start reversed replication, if so.
func mayReverse(ri db.RecoveryInstance) error {
	switch {
	case ri.IsDrill:
		return api.Conflict("recovery instance %s is a drill: drills never replicate back (recover the server to fail over, then fail back)", ri.ID)
	case ri.TerminatedAt != nil:
		return api.Conflict("recovery instance %s has ended (%s): there is nothing to replicate back", ri.ID, ri.State)
	case ri.ReversedSourceServerID != "":
		return api.Conflict("recovery instance %s replicates back already, as source server %s: see lifeboat source-servers describe %s",
			ri.ID, ri.ReversedSourceServerID, ri.ReversedSourceServerID)
	}
	return nil
}

// registerReversed gives a recovery instance's agent the identity of its reversed
// source server, once an operator started reversed replication. The agent proves
// where it runs with the instance's reverse key; until reversed replication starts it
// is told to ask again (409 reverse_replication_not_started).
func (c *call) registerReversed(req *api.ReverseRegisterRequest) (api.RegisterSourceServerResponse, error) {
	var out api.RegisterSourceServerResponse
	if err := req.Validate(); err != nil {
		return out, err
	}
	csr, err := parseCSR(req.CSR)
	if err != nil {
		return out, err
	}
	want := c.cp.reverseKey(req.RecoveryInstanceID)
	if !hmac.Equal([]byte(want), []byte(req.ReverseKey)) {
		return out, unauthenticated(api.CodeUnauthenticated, "the reverse key of recovery instance %s is not the one recovery wrote into its disk (%s)", req.RecoveryInstanceID, api.RecoveryInfoFile)
	}
	now := c.cp.cfg.Now()
	err = c.update(func(tx *db.Tx) error {
		ri, err := tx.RecoveryInstance(req.RecoveryInstanceID)
		if err != nil {
			return err
		}
		c.p = principal{Kind: "recovery-instance", AccountID: ri.AccountID, ID: ri.ID}
		if ri.TerminatedAt != nil {
			return api.Conflict("recovery instance %s has ended: it cannot replicate back", ri.ID)
		}
		if ri.ReversedSourceServerID == "" {
			return api.Errorf(409, api.CodeReverseNotStarted, "reversed replication of recovery instance %s has not been started: lifeboat recovery-instances reverse-replication %s", ri.ID, ri.ID)
		}
		s, err := tx.SourceServer(ri.ReversedSourceServerID)
		if err != nil {
			return err
		}
		cert, certPEM, err := c.cp.ca.Agents.SignCSR(csr, pki.Identity{Kind: pki.KindSourceServer, Account: s.AccountID, ID: s.ID}, nil, now)
		if err != nil {
			return err
		}
		replaced := s.CertSerial != ""
		s.Hostname, s.OS, s.Arch, s.AgentVersion = req.Hostname, req.OS, req.Arch, req.AgentVersion
		s.CPUs, s.MemoryBytes, s.UpdatedAt = req.CPUs, req.MemoryBytes, now
		if req.Volumes != nil {
			s.Volumes = req.Volumes
		}
		s.CertSerial, s.PrevCertSerial, s.CertificateExpiresAt = pki.SerialHex(cert), "", cert.NotAfter.UTC()
		if err := tx.ReregisterSourceServer(s); err != nil {
			return err
		}
		c.wake(s.ID)
		if err := c.record(tx, s.AccountID, "source-server.register-reversed", "source-server", s.ID,
			map[string]any{"recoveryInstanceId": ri.ID, "hostname": s.Hostname, "replaced": replaced}, nil); err != nil {
			return err
		}
		s, err = tx.SourceServer(s.ID)
		out = api.RegisterSourceServerResponse{SourceServer: s.SourceServer, Certificate: string(certPEM),
			CACertificates: string(c.cp.ca.Replicators.CertPEM()), Replaced: replaced}
		return err
	})
	if errors.Is(err, db.ErrNotFound) {
		return out, api.NotFound("recovery instance %s was not found", req.RecoveryInstanceID)
	}
	return out, err
}

// failbackStates completes the failback state of recovery instances whose reversed
// replication runs: FAILBACK_READY_FOR_LAUNCH once the reversed source server is ready
// for recovery (a consistent PIT, and CONTINUOUS), unless a failback launch runs.
func (c *call) failbackStates(ris []db.RecoveryInstance) error {
	return c.view(func(tx *db.Tx) error {
		for i := range ris {
			ri := &ris[i]
			if ri.FailbackState != api.FailbackInProgress || ri.ReversedSourceServerID == "" {
				continue
			}
			if busy, err := tx.BusyRecoveryInstance(ri.ID); err != nil {
				return err
			} else if busy != "" {
				continue // a failback launch runs
			}
			s, err := tx.SourceServer(ri.ReversedSourceServerID)
			if errors.Is(err, db.ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if s.Replication.ReadyForRecovery && s.Replication.DataReplicationState == api.StateContinuous {
				ri.FailbackState = api.FailbackReadyForLaunch
			}
		}
		return nil
	})
}

// replicaSeed fills in the PIT a reversed source server's replica starts as, or the
// one a failback wrote onto a server's machine, which its replica is rebased onto.
func replicaSeed(tx *db.Tx, s db.SourceServer, it *api.AssignedSourceServer) error {
	id, rebase := s.RebaseSnapshotID, true
	if id == "" && s.Reversed != nil {
		id, rebase = s.Reversed.SeedSnapshotID, false
	}
	if id == "" {
		return nil
	}
	snap, err := tx.Snapshot(id)
	if errors.Is(err, db.ErrNotFound) && rebase {
		// The agent's hash tables describe that PIT: without the rebase its sessions must
		// not open (the replicator refuses a rebase seed without a digest).
		it.Seed = &api.ReplicaSeed{SnapshotID: id, Rebase: true}
		return nil
	} else if errors.Is(err, db.ErrNotFound) {
		return nil // past retention: the replica starts empty, the agent sends every block
	} else if err != nil {
		return fmt.Errorf("seed PIT %s of source server %s: %w", id, it.SourceServer.ID, err)
	}
	if snap.ManifestDigest == "" || snap.StagingStoreID == "" || snap.AccountID != it.SourceServer.AccountID {
		return nil
	}
	it.Seed = &api.ReplicaSeed{SourceServerID: snap.SourceServerID, SnapshotID: snap.ID,
		ManifestDigest: snap.ManifestDigest, StagingStoreID: snap.StagingStoreID, Rebase: rebase}
	return nil
}

// startFailback starts a recovery instance's failback launch: it asks the reversed
// source server for a final consistency point now, and makes a FAILBACK job that waits
// for that point and writes it onto the origin's machine (recovery.Runner).
func (c *call) startFailback(req *api.FailbackRequest) (api.Job, error) {
	if err := req.Validate(); err != nil {
		return api.Job{}, err
	}
	now := c.cp.cfg.Now()
	job := db.Job{Job: api.Job{ID: api.NewID(api.PrefixJob), Type: api.JobFailback, InitiatedBy: api.InitiatedFailback,
		Status: api.JobPending, CreatedAt: now}, AccountID: c.p.AccountID}
	job.CreatedBy = c.createdBy()
	var out api.Job
	err := c.update(func(tx *db.Tx) error {
		ri, rev, err := c.failbackSubjects(tx, c.pathID())
		if err != nil {
			return err
		}
		if ri.FailbackState == api.FailbackCompleted {
			return api.Conflict("recovery instance %s has failed back already: complete it (lifeboat failback complete %s)", ri.ID, ri.ID)
		}
		if !rev.Replication.ReadyForRecovery || rev.Replication.DataReplicationState != api.StateContinuous {
			return api.Conflict("reversed source server %s is %s: fail back once it is CONTINUOUS with a consistent PIT (failback state %s)",
				rev.ID, rev.Replication.DataReplicationState, api.FailbackReadyForLaunch)
		}
		if req.Into == api.FailbackIntoNew {
			in, err := c.newFailbackInstance(tx, ri, rev)
			if err != nil {
				return err
			}
			req.Into = in.ID
		}
		if err := c.checkFailbackTarget(tx, req); err != nil {
			return err
		}
		ctl, err := tx.ReplicationControl(rev.ID)
		if err != nil {
			return err
		}
		if ctl.Desired != api.DesiredReplicating {
			return api.Conflict("replication of reversed source server %s is %s: no final consistency point can be taken (lifeboat replication resume %s)", rev.ID, ctl.Desired, rev.ID)
		}
		ctl.SnapshotRequest = &api.SnapshotRequest{ID: api.NewID("req-"), RequestedAt: now}
		if err := tx.SetReplicationControl(rev.ID, ctl, now); err != nil {
			return err
		}
		c.wake(rev.ID)
		job.Params.Failback = &db.FailbackParams{RecoveryInstanceID: ri.ID, OriginSourceServerID: rev.Reversed.OriginSourceServerID,
			Into: req.Into, Disk: req.Disk, NoStart: req.NoStart, FinalPointAsked: now}
		job.Servers = []api.JobServer{{SourceServerID: rev.ID, RecoveryInstanceID: ri.ID, LaunchStatus: api.LaunchPending}}
		if err := c.checkJobLimits(tx, 1); err != nil {
			return err
		}
		if err := tx.CreateJob(job); err != nil {
			return err
		}
		if err := tx.SetFailbackState(ri.ID, api.FailbackInProgress, now); err != nil {
			return err
		}
		if err := c.jobEvent(tx, job.ID, "", api.EventJobStart, fmt.Sprintf("failback of recovery instance %s into %s started by %s",
			ri.ID, req.Into, job.CreatedBy), map[string]any{"recoveryInstanceId": ri.ID, "into": req.Into}); err != nil {
			return err
		}
		if err := c.record(tx, c.p.AccountID, "recovery-instance.failback", "recovery-instance", ri.ID,
			map[string]any{"job": job.ID, "into": req.Into, "reversedSourceServerId": rev.ID}, nil); err != nil {
			return err
		}
		j, err := tx.Job(job.ID)
		out = j.Job
		return err
	})
	if err != nil {
		return api.Job{}, err
	}
	c.cp.rec.runner.Wake()
	return out, nil
}

// newFailbackInstance makes the machine a failback into a new machine at the origin
// site writes: an instance of the origin's boot mode, tagged for launching into, with a
// sparse raw disk per volume of the reversed source server under the control plane's
// instance directory.
func (c *call) newFailbackInstance(tx *db.Tx, ri db.RecoveryInstance, rev db.SourceServer) (db.Instance, error) {
	now := c.cp.cfg.Now()
	settings, _, err := tx.LaunchSettings(rev.Reversed.OriginSourceServerID)
	if err != nil && !errors.Is(err, db.ErrNotFound) {
		return db.Instance{}, err
	}
	in := db.Instance{Instance: api.Instance{ID: api.NewID(api.PrefixInstance), SiteID: rev.SiteID, Provider: api.ProviderQEMU,
		Tags: map[string]string{api.LaunchIntoTagDRS: api.LaunchIntoTagValue}, BootMode: settings.BootMode, State: api.InstanceStopped,
		CreatedAt: now, UpdatedAt: now}, AccountID: rev.AccountID, RunnerID: c.cp.rec.runnerID}
	in.Name = rev.Hostname + "-failback-" + strings.TrimPrefix(in.ID, api.PrefixInstance)[:8]
	if in.BootMode == "" {
		in.BootMode = api.BootBIOS
	}
	dir := filepath.Join(c.cp.rec.cfg.InstanceDir, in.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return in, err
	}
	for i, v := range rev.Volumes {
		p := filepath.Join(dir, fmt.Sprintf("disk%d.raw", i))
		if err := sparseFile(p, v.SizeBytes); err != nil {
			return in, fmt.Errorf("the new machine's disk for volume %s: %w", v.Name, err)
		}
		in.Disks = append(in.Disks, api.InstanceDisk{Path: p, SizeBytes: v.SizeBytes})
	}
	if len(in.Disks) == 0 {
		return in, api.Conflict("reversed source server %s reports no volumes yet: wait for its agent", rev.ID)
	}
	if err := tx.CreateInstance(in); err != nil {
		return in, err
	}
	return in, c.record(tx, in.AccountID, "instance.create", "instance", in.ID,
		map[string]any{"name": in.Name, "reason": "failback of " + ri.ID + " into a new machine"}, in.Instance)
}

// sparseFile creates a file of size bytes that holds none yet (mode 0600).
func sparseFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkFailbackTarget refuses a failback target that is not the caller's, or a failback
// client that writes for another job already or lacks the disk named.
func (c *call) checkFailbackTarget(tx *db.Tx, req *api.FailbackRequest) error {
	if api.ValidID(api.PrefixInstance, req.Into) {
		_, err := c.loadInstance(tx, req.Into)
		return err
	}
	fc, err := tx.FailbackClient(req.Into)
	if errors.Is(err, db.ErrNotFound) || (err == nil && fc.AccountID != c.p.AccountID) {
		return api.NotFound("failback client %s was not found: see lifeboat failback-client list", req.Into)
	} else if err != nil {
		return err
	}
	if fc.Assignment != nil && (fc.Progress == nil || !fc.Progress.Done) {
		return api.Conflict("failback client %s is writing for job %s already", fc.ID, fc.Assignment.JobID)
	}
	if req.Disk != "" && !slices.ContainsFunc(fc.Disks, func(d api.FailbackDisk) bool { return d.Name == req.Disk }) {
		return api.Invalid("failback client %s has no disk %s (it has %d: lifeboat failback-client list)", fc.ID, req.Disk, len(fc.Disks))
	}
	return nil
}

// failbackSubjects loads a recovery instance that replicates back, and its reversed
// source server, refusing what cannot fail back.
func (c *call) failbackSubjects(tx *db.Tx, id string) (db.RecoveryInstance, db.SourceServer, error) {
	ri, err := c.loadRecoveryInstance(tx, id)
	if err != nil {
		return ri, db.SourceServer{}, err
	}
	switch {
	case ri.IsDrill:
		return ri, db.SourceServer{}, api.Conflict("recovery instance %s is a drill: drills never fail back", ri.ID)
	case ri.TerminatedAt != nil:
		return ri, db.SourceServer{}, api.Conflict("recovery instance %s has ended (%s)", ri.ID, ri.State)
	case ri.ReversedSourceServerID == "":
		return ri, db.SourceServer{}, api.Conflict("recovery instance %s does not replicate back: start with lifeboat recovery-instances reverse-replication %s", ri.ID, ri.ID)
	}
	if busy, err := tx.BusyRecoveryInstance(ri.ID); err != nil {
		return ri, db.SourceServer{}, err
	} else if busy != "" {
		return ri, db.SourceServer{}, api.Conflict("job %s is working on recovery instance %s: wait for it (lifeboat jobs describe %s)", busy, ri.ID, busy)
	}
	rev, err := tx.SourceServer(ri.ReversedSourceServerID)
	if errors.Is(err, db.ErrNotFound) {
		return ri, rev, api.Conflict("the reversed source server %s of recovery instance %s was deleted", ri.ReversedSourceServerID, ri.ID)
	}
	return ri, rev, err
}

// completeFailback ends a failed-back recovery instance's cycle, in DRS's order: the
// reversed source server is deleted (its PITs too: the origin holds what it wrote), then
// the instance is terminated (a TERMINATE job, which termination protection refuses).
func (c *call) completeFailback() (api.Job, error) {
	var ri db.RecoveryInstance
	err := c.update(func(tx *db.Tx) error {
		var rev db.SourceServer
		var err error
		ri, rev, err = c.failbackSubjects(tx, c.pathID())
		if err != nil {
			return err
		}
		if ri.FailbackState != api.FailbackCompleted {
			return api.Conflict("recovery instance %s is %s: fail back first (lifeboat failback launch %s --into INSTANCE)", ri.ID, ri.FailbackState, ri.ID)
		}
		origin, err := tx.SourceServer(rev.Reversed.OriginSourceServerID)
		if err == nil && (origin.RebaseSnapshotID != "" || origin.Replication.DataReplicationState != api.StateContinuous) {
			return api.Conflict("source server %s, the origin, does not replicate again yet (%s): complete the failback once the machine written runs and its agent is CONTINUOUS, since its replica is rebased onto a PIT of the reversed source server this would delete",
				origin.ID, origin.Replication.DataReplicationState)
		} else if err != nil && !errors.Is(err, db.ErrNotFound) {
			return err
		}
		if ri.TerminationProtection {
			return api.Conflict("recovery instance %s has termination protection: lift it first with lifeboat recovery-instances protect %s --off", ri.ID, ri.ID)
		}
		if n, err := tx.CountLockedSnapshots(rev.ID, c.cp.cfg.Now()); err != nil {
			return err
		} else if n > 0 {
			return api.Conflict("reversed source server %s has %d locked recovery snapshots: they are kept until their locks end; complete the failback then", rev.ID, n)
		}
		if err := tx.DeleteSourceServer(rev.ID); err != nil {
			return err
		}
		c.wake(rev.ID)
		return c.record(tx, rev.AccountID, "source-server.delete", "source-server", rev.ID,
			map[string]any{"reason": "failback complete", "recoveryInstanceId": ri.ID}, nil)
	})
	if err != nil {
		return api.Job{}, err
	}
	return c.terminateRecoveryInstances(&api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: []string{ri.ID}})
}
