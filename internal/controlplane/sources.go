package controlplane

import (
	"crypto/x509"
	"errors"
	"maps"
	"strconv"
	"time"

	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// parseCSR reads a CSR from a request, as a 400 when it is bad.
func parseCSR(pemText string) (*x509.CertificateRequest, error) {
	csr, err := pki.ParseCSR([]byte(pemText))
	if err != nil {
		return nil, api.Invalid("%s", err)
	}
	return csr, nil
}

// consumeInstallToken counts one use of the caller's install token, inside the
// registration's transaction (admins registering with an API token use none).
func (c *call) consumeInstallToken(tx *db.Tx) error {
	if c.p.Kind != api.CallerInstall {
		return nil
	}
	if err := tx.ConsumeToken(c.p.ID, c.cp.cfg.Now()); errors.Is(err, db.ErrNotFound) {
		return unauthenticated(api.CodeTokenUsedUp, "install token %s has no use left or expired meanwhile: create a new one with lifeboat tokens create --kind install", c.p.ID)
	} else if err != nil {
		return err
	}
	return nil
}

func (c *call) registerSourceServer(req *api.RegisterSourceServerRequest) (api.RegisterSourceServerResponse, error) {
	var out api.RegisterSourceServerResponse
	csr, err := parseCSR(req.CSR)
	if err != nil {
		return out, err
	}
	now := c.cp.cfg.Now()
	err = c.update(func(tx *db.Tx) error {
		if err := c.consumeInstallToken(tx); err != nil {
			return err
		}
		acct, err := tx.LockAccount(c.p.AccountID)
		if err != nil {
			return err
		}
		existing, err := tx.SourceServerByMachine(acct.ID, req.MachineID)
		found := err == nil
		if err != nil && !errors.Is(err, db.ErrNotFound) {
			return err
		}
		if found {
			if err := c.mayReregisterMachine(existing, req.Replace); err != nil {
				return err
			}
			c.wake(existing.ID) // its replicator must drop the old certificate's session at once
		}
		s := existing
		if !found {
			n, err := tx.CountReplicating(acct.ID)
			if err != nil {
				return err
			}
			if n >= acct.QuotaSourceServers {
				return api.Errorf(409, api.CodeQuotaExceeded,
					"account %s has reached its quota of %d replicating source servers: raise it with lifeboat accounts set-quota %s <N> (a system admin), or stop replication of a server",
					acct.Name, acct.QuotaSourceServers, acct.ID)
			}
			eff := acct.Template
			s = db.SourceServer{SourceServer: api.SourceServer{ID: api.NewID(api.PrefixSourceServer), AccountID: acct.ID,
				MachineID: req.MachineID, SiteID: eff.TargetSite, Replication: api.NewReplicationState(now), CreatedAt: now},
				DedicatedReplicator: eff.DedicatedReplicator}
		}
		s.Hostname, s.OS, s.Arch, s.AgentVersion = req.Hostname, req.OS, req.Arch, req.AgentVersion
		s.CPUs, s.MemoryBytes, s.Volumes, s.UpdatedAt = req.CPUs, req.MemoryBytes, req.Volumes, now
		if s.Volumes == nil {
			s.Volumes = []api.Volume{}
		}
		cert, certPEM, err := c.cp.ca.Agents.SignCSR(csr, pki.Identity{Kind: pki.KindSourceServer, Account: acct.ID, ID: s.ID}, nil, now)
		if err != nil {
			return err
		}
		s.CertSerial, s.PrevCertSerial, s.CertificateExpiresAt = pki.SerialHex(cert), "", cert.NotAfter.UTC()
		action := "source-server.register"
		if found {
			action = "source-server.reregister"
			err = tx.ReregisterSourceServer(s)
		} else {
			err = tx.CreateSourceServer(s)
			if err == nil {
				err = tx.SetLaunchSettings(s.ID, api.DefaultLaunchSettings(s.CPUs, s.MemoryBytes), now)
			}
		}
		if errors.Is(err, db.ErrReferenced) {
			return api.Conflict("the account's target site %q does not exist: create it (lifeboat sites create %s) or change the replication settings", s.SiteID, s.SiteID)
		}
		if err != nil {
			return err
		}
		detail := map[string]any{"machineId": s.MachineID, "hostname": s.Hostname}
		if found {
			detail["previousHostname"] = existing.Hostname
		}
		if err := c.record(tx, acct.ID, action, "source-server", s.ID, detail, nil); err != nil {
			return err
		}
		if !found {
			if err := c.assignAccount(tx, acct.ID); err != nil {
				return err
			}
		}
		s, err = tx.SourceServer(s.ID)
		out = api.RegisterSourceServerResponse{SourceServer: s.SourceServer, Certificate: string(certPEM),
			CACertificates: string(c.cp.ca.Replicators.CertPEM()), Replaced: found}
		return err
	})
	return out, err
}

// mayReregisterMachine says whether the caller may register again a machine id that is
// registered already: it takes over the source server's id, its replica and its PITs, so
// it must be asked for (replace) and allowed (principal.mayReplace). Machine ids are not
// secrets (/etc/machine-id is world-readable and every recovered copy carries it).
func (c *call) mayReregisterMachine(existing db.SourceServer, replace bool) error {
	if !replace {
		return api.Errorf(409, api.CodeDuplicateMachine,
			"machine %s is already registered as source server %s (hostname %s): delete it first (lifeboat source-servers delete %s) or re-register it under the same id with lifeboat agent install --replace and an admin API token or an install token made with --allow-replace",
			existing.MachineID, existing.ID, existing.Hostname, existing.ID)
	}
	if !c.p.mayReplace() {
		return api.Forbidden("re-registering machine %s takes over source server %s (hostname %s), its replica and its PITs: it needs an admin API token or an install token made with --allow-replace (lifeboat tokens create --kind install --allow-replace --uses 1)",
			existing.MachineID, existing.ID, existing.Hostname)
	}
	return nil
}

// loadServer reads a source server of the caller's account (404 otherwise).
func (c *call) loadServer(tx *db.Tx, id string) (db.SourceServer, error) {
	s, err := tx.SourceServer(id)
	if errors.Is(err, db.ErrNotFound) || (err == nil && s.AccountID != c.p.AccountID) {
		return s, api.NotFound("source server %s was not found: see lifeboat source-servers list", id)
	}
	return s, err
}

func (c *call) listSourceServers() (any, error) {
	q := c.r.URL.Query()
	limit, err := limitParam(q.Get("limit"))
	if err != nil {
		return nil, err
	}
	f := api.SourceServerFilter{Hostname: q.Get("hostname"), ReplicatorID: q.Get("replicator"), Limit: limit, PageToken: q.Get("page_token")}
	switch v := q.Get("view"); v {
	case "", "summary":
	case "full":
		f.Full = true
	default:
		return nil, api.Invalid("view must be summary or full, not %q", v)
	}
	for _, v := range q["state"] {
		for _, s := range strings.Split(v, ",") {
			s = strings.ToUpper(strings.TrimSpace(s))
			if !api.ValidState(s) {
				return nil, api.Invalid("state %q is not a replication state: use one of %s", s, strings.Join(api.DataReplicationStates, ", "))
			}
			f.States = append(f.States, s)
		}
	}
	switch r := q.Get("ready"); r {
	case "":
	case "true", "false":
		b := r == "true"
		f.ReadyForRecovery = &b
	default:
		return nil, api.Invalid("ready must be true or false, not %q", r)
	}
	if f.Tags, err = api.ParseTagFilter(q["tag"]); err != nil {
		return nil, err
	}
	if !f.Full {
		// The summaries are stored as JSON: the page is written without decoding them.
		var items []string
		var next string
		if err := c.read(func(tx *db.Tx) (err error) {
			items, next, err = tx.ListSourceServerSummaries(c.p.AccountID, f)
			return err
		}); err != nil {
			return nil, err
		}
		return summaryPage(items, next), nil
	}
	out := api.SourceServerList{Items: []api.SourceServer{}}
	err = c.view(func(tx *db.Tx) error {
		rows, next, err := tx.ListSourceServers(c.p.AccountID, f)
		if err != nil {
			return err
		}
		out.Items = make([]api.SourceServer, len(rows))
		for i := range rows {
			out.Items[i] = rows[i].SourceServer
		}
		out.NextPageToken = next
		return nil
	})
	return out, err
}

// summaryPage writes an api.SourceServerList from stored JSON summaries.
func summaryPage(items []string, next string) preEncoded {
	n := 32 + len(next)
	for _, it := range items {
		n += len(it) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, `{"items":[`...)
	for i, it := range items {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, it...)
	}
	b = append(b, ']')
	if next != "" {
		b = append(b, `,"nextPageToken":`...)
		b = strconv.AppendQuote(b, next)
	}
	return append(b, "}\n"...)
}

func (c *call) getSourceServer() (api.SourceServer, error) {
	var out api.SourceServer
	err := c.view(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		out = s.SourceServer
		return err
	})
	return out, err
}

// updateSourceServerTags sets and removes a source server's tags. Audited.
func (c *call) updateSourceServerTags(req *api.UpdateSourceServerTagsRequest) (api.SourceServer, error) {
	var out api.SourceServer
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		tags := maps.Clone(s.Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		maps.Copy(tags, req.Set)
		for _, k := range req.Remove {
			delete(tags, k)
		}
		if len(tags) > 50 {
			return api.Invalid("source server %s would have %d tags: at most 50 are allowed", s.ID, len(tags))
		}
		if err := tx.SetSourceServerTags(s.ID, tags, now); err != nil {
			return err
		}
		s.Tags, s.UpdatedAt = tags, now
		out = s.SourceServer
		return c.record(tx, s.AccountID, "source-server.tag", "source-server", s.ID, map[string]any{"set": req.Set, "remove": req.Remove}, out)
	})
	return out, err
}

func (c *call) deleteSourceServer() (noBody, error) {
	force := c.r.URL.Query().Get("force") == "true"
	return noBody{}, c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		if n, err := tx.CountActiveRecoveryInstances(s.ID); err != nil {
			return err
		} else if n > 0 {
			return api.Conflict("source server %s has %d recovery instances: terminate them first (lifeboat recovery-instances list)", s.ID, n)
		}
		if n, err := tx.CountLockedSnapshots(s.ID, c.cp.cfg.Now()); err != nil {
			return err
		} else if n > 0 {
			return api.Conflict("source server %s has %d locked recovery snapshots: they cannot be deleted before their locks end", s.ID, n)
		}
		n, err := tx.CountSnapshots(s.ID)
		if err != nil {
			return err
		}
		if n > 0 && !force {
			return api.Conflict("source server %s has %d recovery snapshots: stop its replication and let retention remove them, or delete with --force (their staging data stays until the store's garbage collection)", s.ID, n)
		}
		if err := tx.DeleteSourceServer(s.ID); err != nil {
			return err
		}
		c.wake(s.ID) // its replicator ends its session at once
		return c.record(tx, s.AccountID, "source-server.delete", "source-server", s.ID,
			map[string]any{"hostname": s.Hostname, "machineId": s.MachineID, "snapshots": n}, nil)
	})
}

func (c *call) renewSourceCertificate(req *api.RenewCertificateRequest) (api.RenewCertificateResponse, error) {
	var out api.RenewCertificateResponse
	csr, err := parseCSR(req.CSR)
	if err != nil {
		return out, err
	}
	now := c.cp.cfg.Now()
	err = c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		cert, certPEM, err := c.cp.ca.Agents.SignCSR(csr, pki.Identity{Kind: pki.KindSourceServer, Account: s.AccountID, ID: s.ID}, nil, now)
		if err != nil {
			return err
		}
		if err := tx.SetSourceCertificate(s.ID, pki.SerialHex(cert), cert.NotAfter, now); err != nil {
			return err
		}
		c.wake(s.ID) // its replicator learns the new serial
		out = api.RenewCertificateResponse{Certificate: string(certPEM), CACertificates: string(c.cp.ca.Replicators.CertPEM()), ExpiresAt: cert.NotAfter.UTC()}
		return c.record(tx, s.AccountID, "source-server.renew-certificate", "source-server", s.ID,
			map[string]any{"expiresAt": out.ExpiresAt}, nil)
	})
	return out, err
}

func (c *call) setVolumes(req *api.UpdateVolumesRequest) (api.SourceServer, error) {
	var out api.SourceServer
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		if err := tx.SetVolumes(s.ID, req.Volumes, now); err != nil {
			return err
		}
		if err := tx.TouchSourceServer(s.ID, now); err != nil {
			return err
		}
		s, err = tx.SourceServer(s.ID)
		out = s.SourceServer
		names := make([]string, len(req.Volumes))
		for i, v := range req.Volumes {
			names[i] = v.Name
		}
		if err != nil {
			return err
		}
		return c.record(tx, s.AccountID, "source-server.set-volumes", "source-server", s.ID, map[string]any{"volumes": names}, out)
	})
	return out, err
}

// updateReplicationState merges a report from the agent or the replicator. Transitions of
// the state or of the error are audited; every report is an event.
func (c *call) updateReplicationState(req *api.ReplicationStateUpdate) (api.ReplicationState, error) {
	var out api.ReplicationState
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		before := s.Replication
		out = before.Apply(*req, now)
		if err := tx.SetReplicationState(s.ID, out, now); err != nil {
			return err
		}
		if c.p.Kind == api.CallerSourceServer {
			if err := tx.TouchSourceServer(s.ID, now); err != nil {
				return err
			}
		}
		if s.RebaseSnapshotID != "" && out.DataReplicationState == api.StateContinuous && before.DataReplicationState != api.StateContinuous {
			// Replicating again after a failback: its replica was rebased when the
			// session opened (docs/failback.md), the PIT it was rebased onto is no
			// longer needed.
			if err := tx.SetRebase(s.ID, "", now); err != nil {
				return err
			}
		}
		if before.DataReplicationState != out.DataReplicationState || errorCode(before.Error) != errorCode(out.Error) ||
			before.ReadyForRecovery != out.ReadyForRecovery {
			detail := map[string]any{"from": before.DataReplicationState, "to": out.DataReplicationState, "readyForRecovery": out.ReadyForRecovery}
			if out.Error != nil {
				detail["error"] = out.Error.Code
			}
			return c.record(tx, s.AccountID, "source-server.replication-state", "source-server", s.ID, detail, out)
		}
		c.emit(s.AccountID, "source-server.replication", "source-server", s.ID, out)
		return nil
	})
	return out, err
}

func errorCode(e *api.ReplicationError) string {
	if e == nil {
		return ""
	}
	return e.Code
}

// effective returns a server's effective settings (template + overrides).
func effective(tx *db.Tx, s db.SourceServer) (api.ReplicationSettings, error) {
	a, err := tx.Account(s.AccountID)
	if err != nil {
		return api.ReplicationSettings{}, err
	}
	return a.Template.Apply(s.Overrides), nil
}

func (c *call) replicationConfig() (api.ReplicationConfig, error) {
	q := c.r.URL.Query()
	known := q.Get("known")
	wait, err := waitParam(q.Get("wait"))
	if err != nil {
		return api.ReplicationConfig{}, err
	}
	deadline := time.Now().Add(wait)
	for {
		// Register for a change before reading, so none is missed between the two.
		changed := c.cp.watchServer(c.pathID())
		out, err := c.readReplicationConfig()
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

// waitParam parses the ?wait= of a long poll: 0 to api.MaxConfigWait seconds.
func waitParam(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || time.Duration(n)*time.Second > api.MaxConfigWait {
		return 0, api.Invalid("wait must be 0 to %d seconds, not %q", int(api.MaxConfigWait/time.Second), s)
	}
	return time.Duration(n) * time.Second, nil
}

func (c *call) readReplicationConfig() (api.ReplicationConfig, error) {
	var out api.ReplicationConfig
	err := c.view(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		out.SourceServerID = s.ID
		out.CACertificates = string(c.cp.ca.Replicators.CertPEM())
		if out.Settings, err = effective(tx, s); err != nil {
			return err
		}
		if s.ReplicatorID != "" {
			r, err := tx.Replicator(s.ReplicatorID, c.cp.liveSince())
			if err != nil {
				return err
			}
			out.Replicator = &api.ReplicatorEndpoint{ID: r.ID, Name: r.Name, Address: r.Address, CertificateSerials: certSerials(r.CertSerial, r.PrevCertSerial)}
		}
		if out.Control, err = tx.ReplicationControl(s.ID); err != nil {
			return err
		}
		return c.groupControl(tx, s, &out.Control)
	})
	if err == nil && c.p.Kind == api.CallerSourceServer {
		_ = c.cp.db.Update(c.ctx, func(tx *db.Tx) error { return tx.TouchSourceServer(out.SourceServerID, c.cp.cfg.Now()) })
	}
	return out, err
}

func (c *call) getServerSettings() (api.ServerReplicationSettings, error) {
	var out api.ServerReplicationSettings
	err := c.view(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		out.Overrides = s.Overrides
		out.Effective, err = effective(tx, s)
		return err
	})
	return out, err
}

// checkSettingRefs checks that the site and dedicated replicator of effective settings exist.
func (c *call) checkSettingRefs(tx *db.Tx, eff api.ReplicationSettings) error {
	if _, err := tx.Site(c.p.AccountID, eff.TargetSite); errors.Is(err, db.ErrNotFound) {
		return api.Invalid("targetSite %q does not exist: create it with lifeboat sites create %s", eff.TargetSite, eff.TargetSite)
	} else if err != nil {
		return err
	}
	if eff.DedicatedReplicator != "" {
		r, err := tx.ReplicatorByName(c.p.AccountID, eff.DedicatedReplicator, c.cp.liveSince())
		if errors.Is(err, db.ErrNotFound) {
			return api.Invalid("dedicatedReplicator %q is not a registered replicator: see lifeboat replicators list", eff.DedicatedReplicator)
		} else if err != nil {
			return err
		}
		if r.SiteID != eff.TargetSite {
			return api.Invalid("dedicatedReplicator %s is in site %s, not in the target site %s", r.Name, r.SiteID, eff.TargetSite)
		}
	}
	return nil
}

func (c *call) putServerSettings(req *api.ReplicationSettingsOverrides) (api.ServerReplicationSettings, error) {
	var out api.ServerReplicationSettings
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		a, err := tx.Account(s.AccountID)
		if err != nil {
			return err
		}
		if req.StagingStoreURL != nil {
			u, err := c.checkSettingsStore(tx, a.Template.Apply(s.Overrides).StagingStoreURL, *req.StagingStoreURL)
			if err != nil {
				return err
			}
			req.StagingStoreURL = &u
		}
		eff := a.Template.Apply(*req)
		if err := eff.Validate(); err != nil {
			return err
		}
		if err := c.checkSettingRefs(tx, eff); err != nil {
			return err
		}
		if err := tx.SetSourceSettings(s.ID, *req, eff.TargetSite, eff.DedicatedReplicator, now); err != nil {
			return err
		}
		out = api.ServerReplicationSettings{Overrides: *req, Effective: eff}
		if err := c.record(tx, s.AccountID, "source-server.set-replication-settings", "source-server", s.ID,
			map[string]any{"overrides": *req}, out); err != nil {
			return err
		}
		return c.assignAccount(tx, s.AccountID)
	})
	if err == nil {
		c.cp.serverChanged(c.pathID())
	}
	return out, err
}

func (c *call) getTemplate() (api.ReplicationSettings, error) {
	var out api.ReplicationSettings
	err := c.view(func(tx *db.Tx) error {
		a, err := tx.Account(c.p.AccountID)
		out = a.Template
		return err
	})
	return out, err
}

func (c *call) putTemplate(req *api.ReplicationSettings) (api.ReplicationSettings, error) {
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		if err := c.checkSettingRefs(tx, *req); err != nil {
			return err
		}
		a, err := tx.Account(c.p.AccountID)
		if err != nil {
			return err
		}
		if req.StagingStoreURL, err = c.checkSettingsStore(tx, a.Template.StagingStoreURL, req.StagingStoreURL); err != nil {
			return err
		}
		if err := tx.SetReplicationTemplate(c.p.AccountID, *req, now); err != nil {
			return err
		}
		// The effective site and dedicated replicator of servers that inherit them change.
		overrides, err := tx.SourceServerOverrides(c.p.AccountID)
		if err != nil {
			return err
		}
		for id, o := range overrides {
			eff := req.Apply(o)
			if err := tx.SetEffectiveSite(id, eff.TargetSite, eff.DedicatedReplicator, now); err != nil && !errors.Is(err, db.ErrNotFound) {
				if errors.Is(err, db.ErrReferenced) {
					return api.Invalid("source server %s would target site %s, which does not exist", id, eff.TargetSite)
				}
				return err
			}
		}
		if err := c.record(tx, c.p.AccountID, "settings.set-replication-template", "account", c.p.AccountID,
			map[string]any{"settings": *req}, nil); err != nil {
			return err
		}
		return c.assignAccount(tx, c.p.AccountID)
	})
	if err == nil {
		c.cp.serverChanged("")
	}
	return *req, err
}

func (c *call) getLaunchSettings() (api.LaunchSettingsResponse, error) {
	var out api.LaunchSettingsResponse
	err := c.view(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		out.SourceServerID = s.ID
		out.Settings, out.UpdatedAt, err = tx.LaunchSettings(s.ID)
		if errors.Is(err, db.ErrNotFound) {
			out.Settings, out.UpdatedAt, err = api.DefaultLaunchSettings(s.CPUs, s.MemoryBytes), s.CreatedAt, nil
		}
		return err
	})
	return out, err
}

func (c *call) putLaunchSettings(req *api.LaunchSettings) (api.LaunchSettingsResponse, error) {
	var out api.LaunchSettingsResponse
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		s, err := c.loadServer(tx, c.pathID())
		if err != nil {
			return err
		}
		if req.TargetInstanceID != "" {
			if ok, err := tx.InstanceExists(s.AccountID, req.TargetInstanceID); err != nil {
				return err
			} else if !ok {
				return api.Invalid("targetInstanceId %s is not a registered instance: see lifeboat instances list", req.TargetInstanceID)
			}
		}
		if err := tx.SetLaunchSettings(s.ID, *req, now); err != nil {
			return err
		}
		out = api.LaunchSettingsResponse{SourceServerID: s.ID, Settings: *req, UpdatedAt: now}
		return c.record(tx, s.AccountID, "source-server.set-launch-settings", "source-server", s.ID,
			map[string]any{"settings": *req}, out)
	})
	return out, err
}
