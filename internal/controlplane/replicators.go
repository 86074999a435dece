package controlplane

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

func (c *call) registerReplicator(req *api.RegisterReplicatorRequest) (api.RegisterReplicatorResponse, error) {
	var out api.RegisterReplicatorResponse
	csr, err := parseCSR(req.CSR)
	if err != nil {
		return out, err
	}
	now := c.cp.cfg.Now()
	err = c.update(func(tx *db.Tx) error {
		if err := c.consumeInstallToken(tx); err != nil {
			return err
		}
		if _, err := tx.Site(c.p.AccountID, req.Site); errors.Is(err, db.ErrNotFound) {
			return api.Invalid("site %q does not exist: create it with lifeboat sites create %s", req.Site, req.Site)
		} else if err != nil {
			return err
		}
		existing, err := tx.ReplicatorByName(c.p.AccountID, req.Name, c.cp.liveSince())
		found := err == nil
		if err != nil && !errors.Is(err, db.ErrNotFound) {
			return err
		}
		if found {
			if err := c.mayReregisterReplicator(existing, req.Replace); err != nil {
				return err
			}
			c.wake("") // agents of this replicator must stop accepting its old certificate
		}
		r := existing
		if !found {
			r = db.Replicator{Replicator: api.Replicator{ID: api.NewID(api.PrefixReplicator), AccountID: c.p.AccountID,
				Name: req.Name, CreatedAt: now}}
		}
		r.SiteID, r.Address, r.Version, r.LastHeartbeatAt = req.Site, req.Address, req.Version, &now
		cert, certPEM, err := c.cp.ca.Replicators.SignCSR(csr, pki.Identity{Kind: pki.KindReplicator, Account: r.AccountID, ID: r.ID},
			pki.ServerHosts(req.Address), now)
		if err != nil {
			return err
		}
		r.CertSerial, r.CertificateExpiresAt = pki.SerialHex(cert), cert.NotAfter.UTC()
		action := "replicator.register"
		if found {
			// A replicator registering again under its name (reinstalled, lost its key)
			// keeps its id and servers; its old certificate stops working everywhere.
			action = "replicator.reregister"
			err = tx.ReregisterReplicator(r, now)
		} else {
			err = tx.CreateReplicator(r)
		}
		if err != nil {
			return err
		}
		detail := map[string]any{"name": r.Name, "site": r.SiteID, "address": r.Address}
		if found {
			detail["previousAddress"] = existing.Address
		}
		if err := c.record(tx, r.AccountID, action, "replicator", r.ID, detail, nil); err != nil {
			return err
		}
		if err := c.assignAccount(tx, r.AccountID); err != nil {
			return err
		}
		fresh, err := tx.Replicator(r.ID, c.cp.liveSince())
		out = api.RegisterReplicatorResponse{Replicator: fresh.Replicator, Certificate: string(certPEM), CACertificates: string(c.cp.ca.Agents.CertPEM())}
		return err
	})
	return out, err
}

// mayReregisterReplicator says whether the caller may register again a replicator name
// that is registered already: it takes over the replicator's id, servers and address, so
// it must be asked for (replace) and allowed (principal.mayReplace).
func (c *call) mayReregisterReplicator(existing db.Replicator, replace bool) error {
	if !replace {
		return api.Errorf(409, api.CodeDuplicateName,
			"a replicator named %s is registered already (%s at %s): to register it again in place (it keeps its id and servers; its old certificate stops working at once), run lifeboat replicator --replace with an admin API token or an install token made with lifeboat tokens create --kind install --scope replicator --allow-replace --uses 1; or choose another --name",
			existing.Name, existing.ID, existing.Address)
	}
	if !c.p.mayReplace() {
		return api.Forbidden("re-registering replicator %s (%s) takes over its id, servers and address: it needs an admin API token or an install token made with --allow-replace (lifeboat tokens create --kind install --scope replicator --allow-replace --uses 1)",
			existing.Name, existing.ID)
	}
	return nil
}

func (c *call) loadReplicator(tx *db.Tx, id string) (db.Replicator, error) {
	r, err := tx.Replicator(id, c.cp.liveSince())
	if errors.Is(err, db.ErrNotFound) || (err == nil && r.AccountID != c.p.AccountID) {
		return r, api.NotFound("replicator %s was not found: see lifeboat replicators list", id)
	}
	return r, err
}

func (c *call) listReplicators() (api.ReplicatorList, error) {
	out := api.ReplicatorList{Items: []api.Replicator{}}
	err := c.view(func(tx *db.Tx) error {
		rs, err := tx.Replicators(c.p.AccountID, c.cp.liveSince())
		for _, r := range rs {
			out.Items = append(out.Items, r.Replicator)
		}
		return err
	})
	return out, err
}

func (c *call) getReplicator() (api.Replicator, error) {
	var out api.Replicator
	err := c.view(func(tx *db.Tx) error {
		r, err := c.loadReplicator(tx, c.pathID())
		out = r.Replicator
		return err
	})
	return out, err
}

func (c *call) deleteReplicator() (noBody, error) {
	return noBody{}, c.update(func(tx *db.Tx) error {
		r, err := c.loadReplicator(tx, c.pathID())
		if err != nil {
			return err
		}
		if err := tx.DeleteReplicator(r.ID); err != nil {
			return err
		}
		c.wake("") // its agents stop accepting its certificate at once
		if err := c.record(tx, r.AccountID, "replicator.delete", "replicator", r.ID,
			map[string]any{"name": r.Name, "assignedSourceServers": r.AssignedSourceServers}, nil); err != nil {
			return err
		}
		return c.assignAccount(tx, r.AccountID)
	})
}

// drainReplicator drains a replicator or puts it back in service, and moves servers
// at once: off it (to the least-loaded other live replicator of its site; a server with
// none stays), or, back in service, nothing moves until servers need a replicator.
func (c *call) drainReplicator(req *api.DrainReplicatorRequest) (api.Replicator, error) {
	var out api.Replicator
	err := c.update(func(tx *db.Tx) error {
		r, err := c.loadReplicator(tx, c.pathID())
		if err != nil {
			return err
		}
		if err := tx.SetReplicatorDraining(r.ID, req.Drain, c.cp.cfg.Now()); err != nil {
			return err
		}
		action := "replicator.undrain"
		if req.Drain {
			action = "replicator.drain"
		}
		if err := c.record(tx, r.AccountID, action, "replicator", r.ID, map[string]any{"name": r.Name}, nil); err != nil {
			return err
		}
		if err := c.assignAccount(tx, r.AccountID); err != nil {
			return err
		}
		got, err := tx.Replicator(r.ID, c.cp.liveSince())
		out = got.Replicator
		return err
	})
	return out, err
}

func (c *call) heartbeat(req *api.HeartbeatRequest) (api.HeartbeatResponse, error) {
	var out api.HeartbeatResponse
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		r, err := c.loadReplicator(tx, c.pathID())
		if err != nil {
			return err
		}
		if err := tx.Heartbeat(r.ID, req.Metrics, req.Version, now); err != nil {
			return err
		}
		if r.State == api.ReplicatorLost {
			// Back from the dead (or first beat): it can take unassigned servers again.
			if err := c.record(tx, r.AccountID, "replicator.live", "replicator", r.ID, map[string]any{"name": r.Name}, nil); err != nil {
				return err
			}
			if err := c.assignAccount(tx, r.AccountID); err != nil {
				return err
			}
		}
		r, err = tx.Replicator(r.ID, c.cp.liveSince())
		if err != nil {
			return err
		}
		c.emit(r.AccountID, "replicator.heartbeat", "replicator", r.ID, r.Replicator)
		out = api.HeartbeatResponse{HeartbeatIntervalSeconds: int(c.cp.cfg.HeartbeatInterval / time.Second),
			AssignedSourceServers: r.AssignedSourceServers}
		return nil
	})
	return out, err
}

// assignedServers lists the servers assigned to the replicator, with what it needs to
// serve them. With ?source_server=ID, only that one (read now: the replicator checks each
// new session with it). With ?known=FP&wait=N, it waits up to N seconds for the list to
// differ from the one with fingerprint FP (api.AssignedSourceServerList.Fingerprint),
// so a replaced certificate or a moved server reaches the replicator at once.
func (c *call) assignedServers() (api.AssignedSourceServerList, error) {
	q := c.r.URL.Query()
	only := q.Get("source_server")
	if only != "" && !api.ValidID(api.PrefixSourceServer, only) {
		return api.AssignedSourceServerList{}, api.Invalid("source_server %q is not a source server id", only)
	}
	wait, err := waitParam(q.Get("wait"))
	if err != nil {
		return api.AssignedSourceServerList{}, err
	}
	known := q.Get("known")
	deadline := time.Now().Add(wait)
	for {
		changed := c.cp.watchReplicators() // before reading: no change is missed between the two
		out, err := c.readAssignedServers(only)
		if err != nil || known == "" || out.Fingerprint() != known || !time.Now().Before(deadline) {
			return out, err
		}
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
		case <-c.ctx.Done():
			return out, c.ctx.Err()
		case <-c.cp.stopping:
			return out, nil
		}
	}
}

func (c *call) readAssignedServers(only string) (api.AssignedSourceServerList, error) {
	out := api.AssignedSourceServerList{Items: []api.AssignedSourceServer{}}
	err := c.view(func(tx *db.Tx) error {
		r, err := c.loadReplicator(tx, c.pathID())
		if err != nil {
			return err
		}
		a, err := tx.Account(r.AccountID)
		if err != nil {
			return err
		}
		var rows []db.SourceServer
		if only != "" {
			s, err := tx.SourceServer(only)
			if err == nil && s.ReplicatorID == r.ID && s.AccountID == r.AccountID {
				rows = append(rows, s)
			} else if err != nil && !errors.Is(err, db.ErrNotFound) {
				return err
			}
		} else if rows, _, err = tx.ListSourceServers(r.AccountID, api.SourceServerFilter{ReplicatorID: r.ID, Full: true, Limit: 1 << 30}); err != nil {
			return err
		}
		for _, s := range rows {
			ctl, err := tx.ReplicationControl(s.ID)
			if err != nil {
				return err
			}
			it := api.AssignedSourceServer{SourceServer: s.SourceServer, Settings: a.Template.Apply(s.Overrides),
				CertificateSerials: certSerials(s.CertSerial, s.PrevCertSerial), Control: ctl}
			if only != "" { // a session is opening: it needs the floor of its heads' versions
				if err := headVersions(tx, &it); err != nil {
					return err
				}
				if err := replicaSeed(tx, s, &it); err != nil {
					return err
				}
			}
			out.Items = append(out.Items, it)
		}
		return nil
	})
	return out, err
}

// headVersions fills in the head versions the server's newest recorded PIT was sealed
// from: a floor, kept outside the staging store, below which the replicator takes a
// head for a put-back old object (docs/security.md).
func headVersions(tx *db.Tx, it *api.AssignedSourceServer) error {
	snaps, _, err := tx.ListSnapshots(it.SourceServer.ID, 1, "")
	if err != nil || len(snaps) == 0 || snaps[0].StagingStoreID == "" {
		return err
	}
	it.HeadVersionsStoreID = snaps[0].StagingStoreID
	it.HeadVersions = map[string]uint64{}
	for _, v := range snaps[0].Volumes {
		it.HeadVersions[v.Name] = v.HeadVersion
	}
	return nil
}

// certSerials lists the certificate serials a verifier accepts: the current one and,
// after a renewal, the previous one.
func certSerials(current, previous string) []string {
	if previous == "" {
		return []string{current}
	}
	return []string{current, previous}
}

func (c *call) renewReplicatorCertificate(req *api.RenewCertificateRequest) (api.RenewCertificateResponse, error) {
	var out api.RenewCertificateResponse
	csr, err := parseCSR(req.CSR)
	if err != nil {
		return out, err
	}
	now := c.cp.cfg.Now()
	err = c.update(func(tx *db.Tx) error {
		r, err := c.loadReplicator(tx, c.pathID())
		if err != nil {
			return err
		}
		cert, certPEM, err := c.cp.ca.Replicators.SignCSR(csr, pki.Identity{Kind: pki.KindReplicator, Account: r.AccountID, ID: r.ID},
			pki.ServerHosts(r.Address), now)
		if err != nil {
			return err
		}
		if err := tx.SetReplicatorCertificate(r.ID, pki.SerialHex(cert), cert.NotAfter, now); err != nil {
			return err
		}
		c.wake("") // its agents learn the new serial
		out = api.RenewCertificateResponse{Certificate: string(certPEM), CACertificates: string(c.cp.ca.Agents.CertPEM()), ExpiresAt: cert.NotAfter.UTC()}
		return c.record(tx, r.AccountID, "replicator.renew-certificate", "replicator", r.ID, map[string]any{"expiresAt": out.ExpiresAt}, nil)
	})
	return out, err
}

// assignAccount gives every source server of the account that needs one a replicator:
// its dedicated replicator when its settings name one, else the least-loaded live
// replicator of its target site that is not draining. Servers of a lost or draining
// replicator move; servers with no live replicator in their site stay unassigned until
// one beats (or stay where they are, on a lost or draining one).
func (c *call) assignAccount(tx *db.Tx, accountID string) error {
	liveSince := c.cp.liveSince()
	need, err := tx.NeedingAssignment(accountID, liveSince)
	if err != nil || len(need) == 0 {
		return err
	}
	reps, err := tx.Replicators(accountID, liveSince)
	if err != nil {
		return err
	}
	byName := map[string]*db.Replicator{}
	bySite := map[string][]*db.Replicator{}
	for i := range reps {
		r := &reps[i]
		byName[r.Name] = r
		if r.State == api.ReplicatorLive && !r.Draining {
			bySite[r.SiteID] = append(bySite[r.SiteID], r)
		}
	}
	now := c.cp.cfg.Now()
	for _, u := range need {
		var pick *db.Replicator
		if u.DedicatedReplicator != "" {
			pick = byName[u.DedicatedReplicator] // dedicated means dedicated, live or not
		} else {
			cands := bySite[u.SiteID]
			sort.SliceStable(cands, func(i, j int) bool {
				if cands[i].AssignedSourceServers != cands[j].AssignedSourceServers {
					return cands[i].AssignedSourceServers < cands[j].AssignedSourceServers
				}
				return cands[i].Name < cands[j].Name
			})
			if len(cands) > 0 {
				pick = cands[0]
			}
		}
		old := findByID(reps, u.ReplicatorID)
		if pick == nil && old != nil && old.SiteID == u.SiteID && u.DedicatedReplicator == "" {
			continue // no live replicator to move to: stay, in case the lost one returns
		}
		newID := ""
		if pick != nil {
			newID = pick.ID
		}
		if newID == u.ReplicatorID {
			continue
		}
		if err := tx.SetAssignment(u.ID, newID, now); err != nil {
			return err
		}
		c.wake(u.ID) // the agent learns its new replicator, the replicators their lists
		if pick != nil {
			pick.AssignedSourceServers++
		}
		if old != nil {
			old.AssignedSourceServers--
		}
		detail := map[string]any{"from": u.ReplicatorID, "to": newID}
		if _, err := tx.AddAudit(accountID, api.AuditEntry{Time: now, ActorKind: "system", ActorID: "assigner",
			Action: "source-server.assign", TargetKind: "source-server", TargetID: u.ID, Detail: detail}); err != nil {
			return err
		}
		c.emit(accountID, "source-server.assign", "source-server", u.ID, detail)
	}
	return nil
}

func findByID(reps []db.Replicator, id string) *db.Replicator {
	for i := range reps {
		if reps[i].ID == id {
			return &reps[i]
		}
	}
	return nil
}

// assignLoop moves the servers of replicators that stopped beating, until ctx ends. It
// looks every tenth of the replicator timeout (a second at least, a heartbeat interval
// at most), so a lost replicator's servers move within 1.1 timeouts of its last beat.
func (cp *ControlPlane) assignLoop(ctx context.Context) {
	t := time.NewTicker(max(min(cp.cfg.HeartbeatInterval, cp.cfg.ReplicatorTimeout/10), time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := cp.AssignAll(ctx); err != nil && ctx.Err() == nil {
			cp.log.Warn("assigning source servers to replicators failed; will retry", "err", err)
		}
	}
}

// AssignAll runs the assignment of every account once (the background loop's work).
func (cp *ControlPlane) AssignAll(ctx context.Context) error {
	var accounts []string
	if err := cp.db.View(ctx, func(tx *db.Tx) (err error) { accounts, err = tx.AccountsWithServers(); return err }); err != nil {
		return err
	}
	c := &call{cp: cp, ctx: ctx, p: principal{Kind: "system", ID: "assigner"}}
	for _, a := range accounts {
		if err := c.update(func(tx *db.Tx) error { return c.assignAccount(tx, a) }); err != nil {
			return err
		}
	}
	return nil
}
