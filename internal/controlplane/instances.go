package controlplane

import (
	"errors"
	"io"
	"maps"
	"os"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

func (c *call) loadInstance(tx *db.Tx, id string) (db.Instance, error) {
	in, err := tx.Instance(id)
	if errors.Is(err, db.ErrNotFound) || (err == nil && in.AccountID != c.p.AccountID) {
		return in, api.NotFound("instance %s was not found: see lifeboat instances list", id)
	}
	return in, err
}

// refreshInstances records the live state of the instances whose VM this host runs.
func (c *call) refreshInstances(ins []db.Instance) {
	ctx, cancel := c.liveContext()
	defer cancel()
	now := c.cp.cfg.Now()
	for i := range ins {
		in := &ins[i]
		if in.RunnerID != "" && in.RunnerID != c.cp.rec.runnerID {
			continue
		}
		running, err := c.cp.rec.existing.Running(ctx, in.Instance)
		if err != nil {
			continue
		}
		st := api.InstanceStopped
		if running {
			st = api.InstanceRunning
		}
		if st == in.State {
			continue
		}
		err = c.cp.db.Update(c.ctx, func(tx *db.Tx) error {
			return tx.SetInstanceState(in.ID, st, c.cp.rec.runnerID, in.RecoveryInstanceID, now)
		})
		if err == nil {
			in.State, in.UpdatedAt = st, now
		}
	}
}

func (c *call) listInstances() (api.InstanceList, error) {
	var rows []db.Instance
	if err := c.view(func(tx *db.Tx) (err error) { rows, err = tx.Instances(c.p.AccountID); return err }); err != nil {
		return api.InstanceList{}, err
	}
	c.refreshInstances(rows)
	out := api.InstanceList{Items: make([]api.Instance, len(rows))}
	for i := range rows {
		out.Items[i] = rows[i].Instance
	}
	return out, nil
}

func (c *call) getInstance() (api.Instance, error) {
	var in db.Instance
	if err := c.view(func(tx *db.Tx) (err error) { in, err = c.loadInstance(tx, c.pathID()); return err }); err != nil {
		return api.Instance{}, err
	}
	rows := []db.Instance{in}
	c.refreshInstances(rows)
	return rows[0].Instance, nil
}

// diskInfo checks an instance disk on this host: a raw image file or a block device.
func diskInfo(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, api.Invalid("disk %s cannot be used: %v", path, err)
	}
	if !fi.Mode().IsRegular() && fi.Mode()&os.ModeDevice == 0 {
		return 0, api.Invalid("disk %s is neither an image file nor a block device", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, api.Invalid("disk %s cannot be opened: %v", path, err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, _ = f.ReadAt(magic, 0)
	if string(magic) == "QFI\xfb" {
		return 0, api.Invalid("disk %s is a qcow2 image: instances take raw images or block devices, which can be written in place", path)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, api.Invalid("disk %s: %v", path, err)
	}
	return size, nil
}

func (c *call) createInstance(req *api.CreateInstanceRequest) (api.Instance, error) {
	if err := c.hostPaths().Check(req.Disks...); err != nil {
		return api.Instance{}, err
	}
	now := c.cp.cfg.Now()
	in := db.Instance{Instance: api.Instance{ID: api.NewID(api.PrefixInstance), Name: req.Name, SiteID: req.Site,
		Provider: api.ProviderQEMU, Tags: req.Tags, BootMode: req.BootMode, State: api.InstanceStopped,
		CreatedAt: now, UpdatedAt: now}, AccountID: c.p.AccountID, RunnerID: c.cp.rec.runnerID}
	if in.Name == "" {
		in.Name = in.ID
	}
	if in.BootMode == "" {
		in.BootMode = api.BootBIOS
	}
	if in.Tags == nil {
		in.Tags = map[string]string{}
	}
	for _, d := range req.Disks {
		size, err := diskInfo(d)
		if err != nil {
			return api.Instance{}, err
		}
		in.Disks = append(in.Disks, api.InstanceDisk{Path: d, SizeBytes: size})
	}
	err := c.update(func(tx *db.Tx) error {
		site, err := tx.Site(c.p.AccountID, req.Site)
		if errors.Is(err, db.ErrNotFound) {
			return api.Invalid("site %q does not exist: see lifeboat sites list", req.Site)
		} else if err != nil {
			return err
		}
		switch {
		case site.Provider == api.ProviderLibvirt && len(req.Disks) > 0:
			return api.Invalid("site %s is a libvirt site: its instances are libvirt domains, named by --name, with their own volumes (no --disk)", req.Site)
		case site.Provider == api.ProviderLibvirt:
			in.Provider = api.ProviderLibvirt
		case len(req.Disks) == 0:
			return api.Invalid("disks must list 1 to 32 disk paths, boot disk first, not 0")
		}
		if err := tx.CreateInstance(in); errors.Is(err, db.ErrConflict) {
			return api.Conflict("an instance named %s exists already: choose another --name", in.Name)
		} else if err != nil {
			return err
		}
		return c.record(tx, in.AccountID, "instance.create", "instance", in.ID,
			map[string]any{"name": in.Name, "disks": req.Disks, "tags": in.Tags, "bootMode": in.BootMode}, in.Instance)
	})
	return in.Instance, err
}

func (c *call) updateInstanceTags(req *api.UpdateInstanceTagsRequest) (api.Instance, error) {
	var out api.Instance
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		in, err := c.loadInstance(tx, c.pathID())
		if err != nil {
			return err
		}
		tags := maps.Clone(in.Tags)
		maps.Copy(tags, req.Set)
		for _, k := range req.Remove {
			delete(tags, k)
		}
		if len(tags) > 50 {
			return api.Invalid("instance %s would have %d tags: at most 50 are allowed", in.ID, len(tags))
		}
		if err := tx.SetInstanceTags(in.ID, tags, now); err != nil {
			return err
		}
		in.Tags, in.UpdatedAt = tags, now
		out = in.Instance
		return c.record(tx, in.AccountID, "instance.tag", "instance", in.ID, map[string]any{"set": req.Set, "remove": req.Remove}, out)
	})
	return out, err
}

func (c *call) startInstance() (api.Instance, error) {
	var in db.Instance
	var ri *db.RecoveryInstance
	err := c.view(func(tx *db.Tx) (err error) {
		if in, err = c.loadInstance(tx, c.pathID()); err != nil {
			return err
		}
		if in.RecoveryInstanceID != "" {
			r, err := tx.RecoveryInstance(in.RecoveryInstanceID)
			if errors.Is(err, db.ErrNotFound) || (err == nil && r.State == api.InstanceLaunching) {
				return api.Conflict("recovery instance %s is being launched into instance %s: wait for its job", in.RecoveryInstanceID, in.ID)
			}
			if err == nil && r.TerminatedAt == nil {
				ri = &r
			}
		}
		return nil
	})
	if err != nil {
		return api.Instance{}, err
	}
	if running, err := c.cp.rec.existing.Running(c.ctx, in.Instance); err != nil {
		return api.Instance{}, err
	} else if running {
		return api.Instance{}, api.Conflict("instance %s is running already", in.ID)
	}
	// The recovered server it holds starts as it was launched.
	var settings *api.LaunchSettings
	if ri != nil {
		s := ri.LaunchSettings
		settings = &s
	}
	if _, err := c.cp.rec.existing.Start(c.ctx, in.Instance, settings, ri != nil && ri.IsDrill); err != nil {
		return api.Instance{}, api.Conflict("instance %s did not start: %s", in.ID, err)
	}
	return c.setInstanceState(in, api.InstanceRunning, "instance.start")
}

func (c *call) stopInstance() (api.Instance, error) {
	var in db.Instance
	if err := c.view(func(tx *db.Tx) (err error) { in, err = c.loadInstance(tx, c.pathID()); return err }); err != nil {
		return api.Instance{}, err
	}
	if err := c.cp.rec.existing.Stop(c.ctx, in.Instance); err != nil {
		return api.Instance{}, err
	}
	return c.setInstanceState(in, api.InstanceStopped, "instance.stop")
}

func (c *call) setInstanceState(in db.Instance, state, action string) (api.Instance, error) {
	now := c.cp.cfg.Now()
	err := c.update(func(tx *db.Tx) error {
		if err := tx.SetInstanceState(in.ID, state, c.cp.rec.runnerID, in.RecoveryInstanceID, now); err != nil {
			return err
		}
		if in.RecoveryInstanceID != "" {
			// The recovery instance in it follows (if it has not ended).
			if ri, err := tx.RecoveryInstance(in.RecoveryInstanceID); err == nil && ri.TerminatedAt == nil {
				if err := tx.SetRecoveryInstanceState(ri.ID, state, false, now); err != nil {
					return err
				}
			}
		}
		in.State, in.UpdatedAt, in.RunnerID = state, now, c.cp.rec.runnerID
		return c.record(tx, in.AccountID, action, "instance", in.ID, nil, in.Instance)
	})
	return in.Instance, err
}

func (c *call) deleteInstance() (noBody, error) {
	var in db.Instance
	if err := c.view(func(tx *db.Tx) (err error) { in, err = c.loadInstance(tx, c.pathID()); return err }); err != nil {
		return noBody{}, err
	}
	if running, err := c.cp.rec.existing.Running(c.ctx, in.Instance); err != nil {
		return noBody{}, err
	} else if running {
		return noBody{}, api.Conflict("instance %s is running: stop it first (lifeboat instances stop %s)", in.ID, in.ID)
	}
	return noBody{}, c.update(func(tx *db.Tx) error {
		if in.RecoveryInstanceID != "" {
			if ri, err := tx.RecoveryInstance(in.RecoveryInstanceID); err == nil && ri.TerminatedAt == nil {
				return api.Conflict("instance %s holds recovery instance %s: terminate it first", in.ID, ri.ID)
			}
		}
		if err := tx.DeleteInstance(in.ID); err != nil {
			return err
		}
		return c.record(tx, in.AccountID, "instance.delete", "instance", in.ID, map[string]any{"name": in.Name}, nil)
	})
}
