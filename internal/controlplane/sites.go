package controlplane

import (
	"context"
	"errors"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

func (c *call) listSites() (api.SiteList, error) {
	var out api.SiteList
	err := c.view(func(tx *db.Tx) (err error) { out.Items, err = tx.Sites(c.p.AccountID); return err })
	return out, err
}

func (c *call) describeSite() (out api.Site, err error) {
	id := c.pathID()
	err = c.view(func(tx *db.Tx) (err error) { out, err = tx.Site(c.p.AccountID, id); return err })
	if errors.Is(err, db.ErrNotFound) {
		return out, api.NotFound("site %s was not found: see lifeboat sites list", id)
	}
	return out, err
}

// createSite makes a site with its provider (qemu when none is given; a libvirt site's
// pool is "default" when none is given). Its credentials are sealed by the master key
// and stored apart; the site, its audit entry and its event say only that it has them.
func (c *call) createSite(req *api.CreateSiteRequest) (api.Site, error) {
	if req.Provider == api.ProviderLibvirt && !strings.HasPrefix(req.URI, api.LibvirtLocal+":") && !c.p.System {
		// As with staging store URLs (docs/security.md §3): no tenant makes the control
		// plane connect to an endpoint of its choosing.
		return api.Site{}, api.Forbidden("a libvirt site on another host makes the control plane connect to it: " +
			"only the system account's admins may create one (this account may use qemu:///system)")
	}
	now := c.cp.cfg.Now()
	s := api.Site{ID: req.ID, Description: req.Description, Provider: req.Provider, URI: req.URI, Pool: req.Pool,
		HasCredentials: len(req.Credentials) > 0, CreatedAt: now}
	if s.Provider == "" {
		s.Provider = api.ProviderQEMU
	}
	if s.Provider == api.ProviderLibvirt && s.Pool == "" {
		s.Pool = api.DefaultSitePool
	}
	var sealed []byte
	if s.HasCredentials {
		sealed = c.cp.keys.master.Wrap(req.Credentials, db.SiteCredentialsAAD(c.p.AccountID, s.ID))
	}
	err := c.update(func(tx *db.Tx) error {
		if err := tx.CreateSite(c.p.AccountID, s); err != nil {
			if errors.Is(err, db.ErrConflict) {
				return api.Conflict("site %q exists already", s.ID)
			}
			return err
		}
		if sealed != nil {
			if err := tx.PutSiteCredentials(c.p.AccountID, s.ID, sealed, now); err != nil {
				return err
			}
		}
		return c.record(tx, c.p.AccountID, "site.create", "site", s.ID, map[string]any{"description": s.Description,
			"provider": s.Provider, "uri": s.URI, "pool": s.Pool, "credentials": s.HasCredentials}, s)
	})
	return s, err
}

func (c *call) deleteSite() (noBody, error) {
	id := c.pathID()
	return noBody{}, c.update(func(tx *db.Tx) error {
		err := tx.DeleteSite(c.p.AccountID, id)
		switch {
		case errors.Is(err, db.ErrNotFound):
			return api.NotFound("site %s was not found: see lifeboat sites list", id)
		case errors.Is(err, db.ErrReferenced):
			return api.Conflict("site %s is used by source servers, replicators or instances: move them to another site first", id)
		case err != nil:
			return err
		}
		return c.record(tx, c.p.AccountID, "site.delete", "site", id, nil, nil)
	})
}

// SiteLaunchTarget is a site of an account as a recovery runner launches into it: its
// provider, libvirt URI and pool, and its credentials opened with the master key (nil
// when it has none). db.ErrNotFound when the account has no such site.
func (cp *ControlPlane) SiteLaunchTarget(ctx context.Context, accountID, siteID string) (db.SiteTarget, error) {
	return cp.db.SiteLaunchTarget(ctx, accountID, siteID, cp.keys.master)
}
