package recovery

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
)

// siteProviders resolves the provider a launch, or a launched instance, uses: the
// control plane's own (Config.Providers: qemu, image, existing-instance) or the one of
// the site the server recovers into (docs/recovery.md "Sites and their provider"). A
// site's provider serves every launch of that site, so its state (console captures) is
// kept for as long as the site stays the same.
type siteProviders struct {
	local map[string]launch.Provider
	site  func(ctx context.Context, accountID, siteID string) (db.SiteTarget, error)
	opts  launch.Options

	mu      sync.Mutex
	libvirt map[string]*cachedLibvirt // by account and site
}

type cachedLibvirt struct {
	uri, pool string
	creds     string
	p         *launch.Libvirt
}

// provider returns the provider of a launch with the settings' provider name into a
// site: on a libvirt site, VMs (qemu, the default) are the site's libvirt domains.
func (s *siteProviders) provider(ctx context.Context, accountID, siteID, name string) (launch.Provider, error) {
	if name != api.ProviderQEMU && name != api.ProviderLibvirt {
		return s.localProvider(name)
	}
	if s.site == nil || siteID == "" {
		return s.localProvider(name)
	}
	site, err := s.site(ctx, accountID, siteID)
	if errors.Is(err, db.ErrNotFound) {
		return nil, &launch.Refusal{Reason: fmt.Sprintf("site %s no longer exists: see lifeboat sites list", siteID)}
	}
	if err != nil {
		return nil, fmt.Errorf("site %s: %w", siteID, err)
	}
	switch {
	case site.Provider == api.ProviderLibvirt:
		return s.libvirtFor(accountID, site), nil
	case name == api.ProviderLibvirt:
		return nil, &launch.Refusal{Reason: fmt.Sprintf("site %s is not a libvirt site (its provider is %s): launch with provider qemu, or recover into a libvirt site",
			siteID, orDefault(site.Provider, api.ProviderQEMU))}
	case site.Provider == api.ProviderImage:
		return s.localProvider(api.ProviderImage)
	}
	return s.localProvider(name)
}

func (s *siteProviders) localProvider(name string) (launch.Provider, error) {
	if p := s.local[name]; p != nil {
		return p, nil
	}
	return nil, &launch.Refusal{Reason: fmt.Sprintf("launch provider %q is not available on this control plane", name)}
}

// libvirtFor returns the site's libvirt provider, made again when the site changed.
func (s *siteProviders) libvirtFor(accountID string, site db.SiteTarget) *launch.Libvirt {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := accountID + "/" + site.ID
	if c := s.libvirt[key]; c != nil && c.uri == site.URI && c.pool == site.Pool && c.creds == string(site.Credentials) {
		return c.p
	}
	p := launch.NewLibvirt(launch.LibvirtSite{Name: site.ID, URI: site.URI, Credentials: site.Credentials, Pool: site.Pool}, s.opts)
	s.libvirt[key] = &cachedLibvirt{uri: site.URI, pool: site.Pool, creds: string(site.Credentials), p: p}
	return p
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Provider is the provider of a recovery instance (State, Resume and Terminate go
// through it).
func (r *Runner) Provider(ctx context.Context, ri db.RecoveryInstance) (launch.Provider, error) {
	return r.providers.provider(ctx, ri.AccountID, ri.SiteID, ri.Provider)
}
