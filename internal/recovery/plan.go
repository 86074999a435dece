package recovery

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// A drill or recovery job is planned before it is created: its servers resolved, each
// with the PIT it launches from, so that a job that cannot run is refused at request
// time with the reason and nothing is created (docs/recovery.md, "Refusals at request
// time"). The control plane's handler reads the database through a Catalog and the
// staging stores through Staging, then creates the job the plan returns.

// maxCandidates is how many of a server's newest consistent PITs are tried, newest
// first, when the request names none: retention may have removed the newest ones from
// the staging store already.
const maxCandidates = 10

// Catalog is what planning reads from the state database. The control plane's
// implementation reads in one transaction and within the caller's account: a server or
// PIT of another account is not found.
type Catalog interface {
	// SourceServer returns a source server, or the API's not-found error.
	SourceServer(id string) (db.SourceServer, error)
	// StagingStoreURL returns the staging store a server's PITs are sealed in.
	StagingStoreURL(s db.SourceServer) (string, error)
	// LaunchSettings returns a server's launch settings (the zero value when it has none).
	LaunchSettings(serverID string) (api.LaunchSettings, error)
	// Snapshot returns a PIT, or the API's not-found error.
	Snapshot(id string) (db.Snapshot, error)
	// ConsistentSnapshots returns up to limit of a server's consistent PITs taken at or
	// before at (nil: any time), newest first.
	ConsistentSnapshots(serverID string, at *time.Time, limit int) ([]db.Snapshot, error)
}

// Staging opens the staging stores PITs are read from; *Stores is the real one.
type Staging interface {
	// PITs opens the staging store at url, which belongs to an account, for reading PITs.
	PITs(ctx context.Context, accountID, url string) (PITReader, error)
}

// PITReader loads PITs from one staging store: store.ErrNotFound when retention has
// removed one.
type PITReader interface {
	LoadPIT(ctx context.Context, snap api.RecoverySnapshot) (store.PIT, error)
}

// HostPaths is where an account may name paths on the control plane's host (image
// targets, instance disks): the system account anywhere, any other only under Roots
// (docs/recovery.md, "Providers").
type HostPaths struct {
	System bool
	Roots  []string
}

// Check refuses the first path the account may not name.
func (h HostPaths) Check(paths ...string) error {
	if h.System {
		return nil
	}
	for _, p := range paths {
		if !h.allows(p) {
			return api.Forbidden("path %s is on the control plane's host, outside the directories this account may use (%s): ask a system administrator",
				p, strings.Join(h.Roots, ", "))
		}
	}
	return nil
}

// allows says whether p is one of the roots or under one.
func (h HostPaths) allows(p string) bool {
	for _, root := range h.Roots {
		if rel, err := filepath.Rel(root, p); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return true
		}
	}
	return false
}

// PlannedServer is one server of a launch job.
type PlannedServer struct {
	Server   db.SourceServer
	StoreURL string // the staging store its PITs are in
	// Candidates are the PIT the request named (Explicit), or the server's newest
	// consistent ones, newest first.
	Candidates []db.Snapshot
	Explicit   bool
	// PIT is the one launched: the first candidate the staging store still holds
	// (ChoosePITs sets it).
	PIT db.Snapshot
}

// RPO is the RPO of launching the server from its PIT, as its replication state says
// now (ChoosePITs first).
func (ps PlannedServer) RPO() RPO {
	return ComputeRPO(ps.PIT.Time, ps.Server.Replication)
}

// LaunchPlan is a drill or recovery job before it is created.
type LaunchPlan struct {
	Request api.StartRecoveryRequest
	Servers []PlannedServer
}

// ResolveLaunch resolves the servers a start-recovery request names, each with its
// candidate PITs, and refuses image targets outside the host paths the account may use.
// It only reads cat, so the caller runs it in one read transaction.
func ResolveLaunch(req api.StartRecoveryRequest, cat Catalog, paths HostPaths) (*LaunchPlan, error) {
	p := &LaunchPlan{Request: req, Servers: make([]PlannedServer, 0, len(req.SourceServers))}
	for _, rs := range req.SourceServers {
		s, err := resolveServer(req, rs, cat, paths)
		if err != nil {
			return nil, err
		}
		p.Servers = append(p.Servers, s)
	}
	return p, nil
}

// resolveServer resolves one server of the request.
func resolveServer(req api.StartRecoveryRequest, rs api.RecoveryServer, cat Catalog, paths HostPaths) (PlannedServer, error) {
	s, err := cat.SourceServer(rs.SourceServerID)
	if err != nil {
		return PlannedServer{}, err
	}
	ps := PlannedServer{Server: s}
	if ps.StoreURL, err = cat.StagingStoreURL(s); err != nil {
		return PlannedServer{}, err
	}
	settings, err := cat.LaunchSettings(s.ID)
	if err != nil {
		return PlannedServer{}, err
	}
	if t := settings.ImageTarget; t != nil {
		targets := t.Devices
		if t.Dir != "" {
			targets = append(targets, t.Dir)
		}
		if err := paths.Check(targets...); err != nil {
			return PlannedServer{}, err
		}
	}
	if rs.RecoverySnapshotID != "" {
		snap, err := cat.Snapshot(rs.RecoverySnapshotID)
		if err != nil {
			return PlannedServer{}, err
		}
		if snap.SourceServerID != s.ID {
			return PlannedServer{}, api.Invalid("recovery snapshot %s is a PIT of source server %s, not of %s: see lifeboat snapshots list %s",
				snap.ID, snap.SourceServerID, s.ID, s.ID)
		}
		ps.Candidates, ps.Explicit = []db.Snapshot{snap}, true
		return ps, nil
	}
	if ps.Candidates, err = cat.ConsistentSnapshots(s.ID, req.At, maxCandidates); err != nil {
		return PlannedServer{}, err
	}
	if len(ps.Candidates) == 0 {
		if req.At != nil {
			return PlannedServer{}, api.Conflict("source server %s has no consistent PIT at or before %s: see lifeboat snapshots list %s",
				s.ID, req.At.UTC().Format(time.RFC3339), s.ID)
		}
		return PlannedServer{}, api.Conflict("source server %s has no consistent PIT yet: wait until it is ready for recovery (lifeboat source-servers describe %s)", s.ID, s.ID)
	}
	return ps, nil
}

// ChoosePITs gives each server the first of its candidates that its staging store still
// holds (retention removes PITs there first). It reads the stores, so the caller runs
// it outside any transaction.
func (p *LaunchPlan) ChoosePITs(ctx context.Context, st Staging) error {
	for i := range p.Servers {
		if err := p.Servers[i].choosePIT(ctx, st); err != nil {
			return err
		}
	}
	return nil
}

func (ps *PlannedServer) choosePIT(ctx context.Context, st Staging) error {
	pits, err := st.PITs(ctx, ps.Server.AccountID, ps.StoreURL)
	if err != nil {
		return api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable,
			"the control plane cannot read the staging store of %s: %s", ps.Server.ID, err)
	}
	for _, cand := range ps.Candidates {
		_, err := pits.LoadPIT(ctx, cand.RecoverySnapshot)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		var ae *api.Error
		if errors.As(err, &ae) {
			return err
		}
		if err != nil {
			return api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable,
				"the control plane cannot read PIT %s from the staging store: %s", cand.ID, err)
		}
		ps.PIT = cand
		return nil
	}
	if ps.Explicit {
		return api.Conflict("PIT %s of %s is past retention: the staging store no longer holds it; choose a newer one (lifeboat snapshots list %s)",
			ps.Candidates[0].ID, ps.Server.ID, ps.Server.ID)
	}
	return api.Conflict("none of the %d newest consistent PITs of %s is still in the staging store: see lifeboat snapshots list %s",
		len(ps.Candidates), ps.Server.ID, ps.Server.ID)
}

// Job returns the job the plan launches, pending, with a new recovery instance id for
// each server: created now in account by createdBy (as the audit log names the actor).
func (p *LaunchPlan) Job(now time.Time, accountID, createdBy string) db.Job {
	req := p.Request
	job := db.Job{Job: api.Job{ID: api.NewID(api.PrefixJob), Type: api.JobLaunch, InitiatedBy: api.InitiatedStartRecovery,
		Status: api.JobPending, IsDrill: req.IsDrill, CreatedAt: now, CreatedBy: createdBy}, AccountID: accountID,
		Params: db.JobParams{At: req.At, Force: req.Force, NetworkAccess: req.NetworkAccess}}
	if req.IsDrill {
		job.InitiatedBy = api.InitiatedStartDrill
	}
	for _, rs := range req.SourceServers {
		if rs.Overrides != nil {
			if job.Params.Overrides == nil {
				job.Params.Overrides = map[string]*api.LaunchOverrides{}
			}
			job.Params.Overrides[rs.SourceServerID] = rs.Overrides
		}
	}
	for _, s := range p.Servers {
		pitTime, rpo := s.PIT.Time, s.RPO().Seconds()
		job.Servers = append(job.Servers, api.JobServer{SourceServerID: s.Server.ID, RecoveryInstanceID: api.NewID(api.PrefixRecoveryInstance),
			SnapshotID: s.PIT.ID, LaunchStatus: api.LaunchPending, SnapshotTime: &pitTime, RPOSeconds: &rpo})
	}
	return job
}
