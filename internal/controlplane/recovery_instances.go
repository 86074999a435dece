package controlplane

import (
	"errors"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
)

func (c *call) loadRecoveryInstance(tx *db.Tx, id string) (db.RecoveryInstance, error) {
	ri, err := tx.RecoveryInstance(id)
	if errors.Is(err, db.ErrNotFound) || (err == nil && ri.AccountID != c.p.AccountID) {
		return ri, api.NotFound("recovery instance %s was not found: see lifeboat recovery-instances list", id)
	}
	return ri, err
}

// refreshState asks the provider for the state of instances this host runs and records
// a change (a VM powered off from inside, say). Instances that ended keep their state.
func (c *call) refreshState(ris []db.RecoveryInstance) {
	ctx, cancel := c.liveContext()
	defer cancel()
	now := c.cp.cfg.Now()
	for i := range ris {
		ri := &ris[i]
		if ri.TerminatedAt != nil || ri.RunnerID != c.cp.rec.runnerID ||
			(ri.State != api.InstanceRunning && ri.State != api.InstanceStopped) {
			continue
		}
		p, err := c.cp.rec.runner.Provider(ctx, *ri)
		if err != nil {
			continue
		}
		st, err := p.State(ctx, ri.ProviderHandle)
		if err != nil || st == ri.State {
			continue
		}
		err = c.cp.db.Update(c.ctx, func(tx *db.Tx) error { return tx.SetRecoveryInstanceState(ri.ID, st, false, now) })
		if err == nil {
			c.cp.events.publish(ri.AccountID, api.Event{Type: "recovery-instance.state", Time: now, TargetKind: "recovery-instance",
				TargetID: ri.ID, Data: map[string]any{"from": ri.State, "to": st}})
			ri.State, ri.UpdatedAt = st, now
		}
	}
}

func (c *call) listRecoveryInstances() (api.RecoveryInstanceList, error) {
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return api.RecoveryInstanceList{}, err
	}
	f := api.RecoveryInstanceFilter{SourceServerID: q.Get("source_server"), Limit: limit, PageToken: q.Get("page_token")}
	if v := q.Get("drill"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return api.RecoveryInstanceList{}, api.Invalid("drill must be true or false, not %q", v)
		}
		f.Drill = &b
	}
	if v := q.Get("all"); v != "" {
		if f.All, err = strconv.ParseBool(v); err != nil {
			return api.RecoveryInstanceList{}, api.Invalid("all must be true or false, not %q", v)
		}
	}
	var rows []db.RecoveryInstance
	var next string
	if err := c.view(func(tx *db.Tx) (err error) {
		rows, next, err = tx.ListRecoveryInstances(c.p.AccountID, f)
		return err
	}); err != nil {
		return api.RecoveryInstanceList{}, err
	}
	c.refreshState(rows)
	if err := c.failbackStates(rows); err != nil {
		return api.RecoveryInstanceList{}, err
	}
	out := api.RecoveryInstanceList{Items: make([]api.RecoveryInstance, len(rows)), NextPageToken: next}
	for i := range rows {
		out.Items[i] = rows[i].RecoveryInstance
	}
	return out, nil
}

func (c *call) getRecoveryInstance() (api.RecoveryInstance, error) {
	var ri db.RecoveryInstance
	if err := c.view(func(tx *db.Tx) (err error) { ri, err = c.loadRecoveryInstance(tx, c.pathID()); return err }); err != nil {
		return api.RecoveryInstance{}, err
	}
	rows := []db.RecoveryInstance{ri}
	c.refreshState(rows)
	if err := c.failbackStates(rows); err != nil {
		return api.RecoveryInstance{}, err
	}
	return rows[0].RecoveryInstance, nil
}

func (c *call) setTerminationProtection(req *api.TerminationProtectionRequest) (api.RecoveryInstance, error) {
	var out api.RecoveryInstance
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		ri, err := c.loadRecoveryInstance(tx, c.pathID())
		if err != nil {
			return err
		}
		if ri.TerminatedAt != nil && req.Enabled {
			return api.Conflict("recovery instance %s has ended: there is nothing to protect", ri.ID)
		}
		if err := tx.SetTerminationProtection(ri.ID, req.Enabled, now); err != nil {
			return err
		}
		ri.TerminationProtection, ri.UpdatedAt = req.Enabled, now
		out = ri.RecoveryInstance
		return c.record(tx, ri.AccountID, "recovery-instance.set-termination-protection", "recovery-instance", ri.ID,
			map[string]any{"enabled": req.Enabled}, nil)
	})
	return out, err
}

func (c *call) startRecoveryInstance() (api.RecoveryInstance, error) {
	var ri db.RecoveryInstance
	if err := c.view(func(tx *db.Tx) (err error) { ri, err = c.loadRecoveryInstance(tx, c.pathID()); return err }); err != nil {
		return api.RecoveryInstance{}, err
	}
	if ri.TerminatedAt != nil || ri.State == api.InstanceLaunching {
		return api.RecoveryInstance{}, api.Conflict("recovery instance %s is %s: there is nothing to start", ri.ID, strings.ToLower(ri.State))
	}
	if ri.RunnerID != c.cp.rec.runnerID {
		return api.RecoveryInstance{}, api.Conflict("recovery instance %s runs on control plane host %s: start it there", ri.ID, ri.RunnerID)
	}
	p, err := c.cp.rec.runner.Provider(c.ctx, ri)
	if err != nil {
		return api.RecoveryInstance{}, err
	}
	r, ok := p.(launch.Resumer)
	if !ok {
		return api.RecoveryInstance{}, api.Conflict("recovery instance %s is disks only (provider %s): nothing runs to start", ri.ID, ri.Provider)
	}
	if err := r.Resume(c.ctx, ri.ProviderHandle); err != nil {
		var ref *launch.Refusal
		if errors.As(err, &ref) {
			return api.RecoveryInstance{}, api.Conflict("recovery instance %s: %s", ri.ID, ref.Reason)
		}
		return api.RecoveryInstance{}, err
	}
	now := c.cp.cfg.Now()
	err = c.update(func(tx *db.Tx) error {
		if err := tx.SetRecoveryInstanceState(ri.ID, api.InstanceRunning, false, now); err != nil {
			return err
		}
		return c.record(tx, ri.AccountID, "recovery-instance.start", "recovery-instance", ri.ID, nil, nil)
	})
	ri.State, ri.UpdatedAt = api.InstanceRunning, now
	return ri.RecoveryInstance, err
}
