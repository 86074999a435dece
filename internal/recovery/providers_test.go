package recovery

import (
	"context"
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
)

// A launch's provider comes from its site: VMs on a libvirt site are its domains (one
// provider per site, made again when the site changes), an image site writes images,
// the rest run on the control plane's host; what cannot be is refused with the reason.
func TestProvidersComeFromTheSite(t *testing.T) {
	sites := map[string]db.SiteTarget{
		"default": {Site: api.Site{ID: "default", Provider: api.ProviderQEMU}},
		"dr":      {Site: api.Site{ID: "dr", Provider: api.ProviderLibvirt, URI: "qemu+tcp://127.0.0.1/system", Pool: "default"}},
		"images":  {Site: api.Site{ID: "images", Provider: api.ProviderImage}},
	}
	local := launch.Providers(launch.Options{})
	p := &siteProviders{local: local, libvirt: map[string]*cachedLibvirt{},
		site: func(_ context.Context, _, id string) (db.SiteTarget, error) {
			s, ok := sites[id]
			if !ok {
				return s, db.ErrNotFound
			}
			return s, nil
		}}
	ctx := context.Background()
	get := func(site, name string) launch.Provider {
		t.Helper()
		got, err := p.provider(ctx, "acct", site, name)
		if err != nil {
			t.Fatalf("%s on %s: %v", name, site, err)
		}
		return got
	}
	if get("default", api.ProviderQEMU) != local[api.ProviderQEMU] || get("images", api.ProviderQEMU) != local[api.ProviderImage] ||
		get("dr", api.ProviderExistingInstance) != local[api.ProviderExistingInstance] {
		t.Fatal("a launch did not get the control plane's own provider")
	}
	lv := get("dr", api.ProviderQEMU)
	if lv.Name() != api.ProviderLibvirt || get("dr", api.ProviderLibvirt) != lv {
		t.Fatalf("a libvirt site's VMs: %s, not one provider for the site", lv.Name())
	}
	s := sites["dr"]
	s.URI = "qemu+tcp://127.0.0.2/system"
	sites["dr"] = s
	if get("dr", api.ProviderLibvirt) == lv {
		t.Fatal("a site whose URI changed kept its old provider")
	}
	for _, c := range []struct{ site, name string }{{"default", api.ProviderLibvirt}, {"gone", api.ProviderQEMU}} {
		var ref *launch.Refusal
		if _, err := p.provider(ctx, "acct", c.site, c.name); !errors.As(err, &ref) {
			t.Errorf("%s on site %s: %v, want a refusal", c.name, c.site, err)
		}
	}
}
