package controlplane_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// siteKey is an SSH private key as a qemu+ssh site's credentials (validation looks at
// its PEM framing only).
var siteKey = []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END OPENSSH PRIVATE KEY-----\n")

// TestSitesCarryTheirProviderAndKeepTheirCredentials: a site is created with its
// provider, URI, pool (libvirt's "default" when none is given) and credentials; list
// and describe say whether it has credentials and never show them, nor do the audit
// log or the event stream; SiteLaunchTarget gives the recovery runner the credentials
// opened; bad requests are refused with the API's 400, only admins create sites, and
// only the system account's admins create sites on other hosts.
func TestSitesCarryTheirProviderAndKeepTheirCredentials(t *testing.T) {
	eachDB(t, func(t *testing.T, e *env) {
		seq := e.eventSeq()
		kvm, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm", Description: "rack 2", Provider: api.ProviderLibvirt,
			URI: "qemu+ssh://lifeboat@kvm1.example.net/system", Credentials: siteKey})
		if err != nil {
			t.Fatal(err)
		}
		want := api.Site{ID: "kvm", Description: "rack 2", Provider: api.ProviderLibvirt, URI: "qemu+ssh://lifeboat@kvm1.example.net/system",
			Pool: api.DefaultSitePool, HasCredentials: true, CreatedAt: kvm.CreatedAt}
		if kvm != want {
			t.Errorf("created: %+v, want %+v", kvm, want)
		}
		if _, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "lab", Provider: api.ProviderImage}); err != nil {
			t.Fatal(err)
		}
		viewer := e.userClient(api.RoleViewer)
		if got, err := viewer.Site(e.ctx, "kvm"); err != nil || !got.CreatedAt.Equal(want.CreatedAt) || got.URI != want.URI || got.Pool != "default" || !got.HasCredentials {
			t.Errorf("described to a viewer: %+v, %v; want %+v", got, err, want)
		}
		list, err := viewer.Sites(e.ctx)
		if err != nil || len(list.Items) != 3 {
			t.Fatalf("sites: %+v, %v", list, err)
		}
		if d := list.Items[0]; d.ID != "default" || d.Provider != api.ProviderQEMU || d.HasCredentials {
			t.Errorf("the default site: %+v, want qemu without credentials", d)
		}
		if l := list.Items[2]; l.ID != "lab" || l.Provider != api.ProviderImage || l.URI != "" || l.Pool != "" {
			t.Errorf("lab: %+v, want an image site without URI or pool", l)
		}
		_, err = viewer.Site(e.ctx, "mars")
		wantAPIError(t, err, http.StatusNotFound, api.CodeNotFound)

		target, err := e.cp.SiteLaunchTarget(e.ctx, e.cp.SystemAccountID(), "kvm")
		if err != nil || !bytes.Equal(target.Credentials, siteKey) || target.URI != want.URI || target.Pool != "default" {
			t.Errorf("launch target: %+v, %v; want the site with its key", target, err)
		}
		if _, err := e.cp.SiteLaunchTarget(e.ctx, e.cp.SystemAccountID(), "mars"); !errors.Is(err, db.ErrNotFound) {
			t.Errorf("launch target of an unknown site: %v, want db.ErrNotFound", err)
		}

		// What is shown, logged or sent never holds the key, in any encoding.
		audit, err := e.admin.Audit(e.ctx, api.AuditFilter{Action: "site.create", TargetID: "kvm"})
		if err != nil || len(audit.Items) != 1 || audit.Items[0].Detail["credentials"] != true || audit.Items[0].Detail["uri"] != want.URI {
			t.Fatalf("audit of site.create: %+v, %v", audit, err)
		}
		ev := e.eventAfter(seq, "site.create", "kvm")
		for what, v := range map[string]any{"list": list, "audit": audit, "event": ev} {
			b, _ := json.Marshal(v)
			if bytes.Contains(b, []byte("c2VjcmV0")) || bytes.Contains(b, []byte(base64.StdEncoding.EncodeToString(siteKey)[:24])) ||
				bytes.Contains(b, []byte("PRIVATE KEY")) {
				t.Errorf("the %s shows the site's key: %s", what, b)
			}
		}

		checkSiteRefusals(t, e)

		// Deleting the site deletes its credentials.
		if err := e.admin.DeleteSite(e.ctx, "kvm"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm", Provider: api.ProviderLibvirt, URI: "qemu:///system"}); err != nil {
			t.Fatal(err)
		}
		if target, err := e.cp.SiteLaunchTarget(e.ctx, e.cp.SystemAccountID(), "kvm"); err != nil || target.Credentials != nil || target.HasCredentials {
			t.Errorf("kvm made again: %+v, %v; want it without the old key", target, err)
		}
	})
}

// eventSeq returns the sequence number of an event made now (a site created for it),
// from which eventAfter replays.
func (e *env) eventSeq() int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	events := make(chan api.Event, 100)
	go func() { _ = e.admin.Events(ctx, 0, func(ev api.Event) error { events <- ev; return nil }) }()
	for i := 0; i < 100; i++ { // the stream is open once a change made after it arrives
		if _, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: fmt.Sprintf("mark-%d", i)}); err != nil {
			e.t.Fatal(err)
		}
		select {
		case ev := <-events:
			e.deleteMarks(i)
			return ev.Seq
		case <-time.After(100 * time.Millisecond):
		}
	}
	e.t.Fatal("no event arrived")
	return 0
}

// deleteMarks deletes the sites eventSeq made.
func (e *env) deleteMarks(last int) {
	for i := 0; i <= last; i++ {
		if err := e.admin.DeleteSite(e.ctx, fmt.Sprintf("mark-%d", i)); err != nil {
			e.t.Fatal(err)
		}
	}
}

// eventAfter replays the event stream after seq up to the first event of type typ about
// target.
func (e *env) eventAfter(seq int64, typ, target string) api.Event {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	var found api.Event
	errFound := errors.New("found")
	err := e.admin.Events(ctx, seq, func(ev api.Event) error {
		if ev.Type == typ && ev.TargetID == target {
			found = ev
			return errFound
		}
		return nil
	})
	if !errors.Is(err, errFound) {
		e.t.Fatalf("no %s event of %s after %d: %v", typ, target, seq, err)
	}
	return found
}

// checkSiteRefusals: bad site requests get the API's 400, an operator a 403, a site
// that exists a 409, and another account's admins a 403 for a libvirt site on another
// host (e has the site kvm).
func checkSiteRefusals(t *testing.T, e *env) {
	t.Helper()
	_, err := e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm2", Provider: api.ProviderLibvirt, URI: "qemu+ssh://root:pw@kvm1/system"})
	wantAPIError(t, err, http.StatusBadRequest, api.CodeInvalid)
	_, err = e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm2", URI: "qemu:///system"})
	wantAPIError(t, err, http.StatusBadRequest, api.CodeInvalid)
	_, err = e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm2", Provider: api.ProviderLibvirt, URI: "qemu+ssh://kvm1/system",
		Credentials: make([]byte, api.MaxSiteCredentialsBytes+1)})
	wantAPIError(t, err, http.StatusBadRequest, api.CodeInvalid)
	_, err = e.userClient(api.RoleOperator).CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm2", Provider: api.ProviderLibvirt,
		URI: "qemu+ssh://kvm1/system", Credentials: siteKey})
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = e.admin.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm", Provider: api.ProviderLibvirt, URI: "qemu:///system"})
	wantAPIError(t, err, http.StatusConflict, api.CodeConflict)

	// Another account's admins may use their host's libvirt, not make the control
	// plane connect elsewhere (as with staging store URLs).
	other, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
	if err != nil {
		t.Fatal(err)
	}
	tenant := e.client(other.AdminToken)
	_, err = tenant.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm", Provider: api.ProviderLibvirt, URI: "qemu+tls://10.0.0.1/system"})
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	if _, err := tenant.CreateSite(e.ctx, api.CreateSiteRequest{ID: "kvm", Provider: api.ProviderLibvirt, URI: "qemu:///system"}); err != nil {
		t.Errorf("a tenant's local libvirt site: %v", err)
	}
}
