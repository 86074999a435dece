package api

import (
	"bytes"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
)

// pemOf is PEM blocks of the given types (their content does not matter to validation).
func pemOf(types ...string) []byte {
	var b bytes.Buffer
	for _, t := range types {
		_ = pem.Encode(&b, &pem.Block{Type: t, Bytes: []byte("not really " + t)})
	}
	return b.Bytes()
}

// TestSiteRequestsAreValidated: a site's provider decides which of URI, pool and
// credentials it may have; a libvirt URI must be one of the four transports, parse, name
// a host when remote and carry no password or query; credentials are bounded and must
// be what the transport takes. Each refusal is a 400 that says what to do.
func TestSiteRequestsAreValidated(t *testing.T) {
	tls := pemOf("CERTIFICATE", "PRIVATE KEY", "CERTIFICATE")
	ssh := pemOf("OPENSSH PRIVATE KEY")
	good := []CreateSiteRequest{
		{ID: "dr"},
		{ID: "dr", Provider: ProviderQEMU, Description: "the second room"},
		{ID: "dr", Provider: ProviderImage},
		{ID: "dr", Provider: ProviderLibvirt, URI: "qemu:///system"},
		{ID: "dr", Provider: ProviderLibvirt, URI: "qemu:///session", Pool: "images"},
		{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tcp://kvm1.example.net:16509/system", Pool: "vm-disks.1"},
		{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://kvm1.example.net/system", Credentials: tls},
		{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://[2001:db8::1]/system"},
		{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh://lifeboat@kvm1.example.net:2222/system", Credentials: ssh},
		{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh://kvm1/system", Credentials: pemOf("RSA PRIVATE KEY")},
	}
	for _, r := range good {
		if err := r.Validate(); err != nil {
			t.Errorf("%+v: %v, want it accepted", r, err)
		}
	}
	bad := []struct {
		name string
		req  CreateSiteRequest
		want string // in the message
	}{
		{"unknown provider", CreateSiteRequest{ID: "dr", Provider: "vmware"}, "qemu, libvirt or image"},
		{"existing-instance is no site provider", CreateSiteRequest{ID: "dr", Provider: ProviderExistingInstance}, "qemu, libvirt or image"},
		{"URI for qemu", CreateSiteRequest{ID: "dr", URI: "qemu:///system"}, "only libvirt sites"},
		{"URI for image", CreateSiteRequest{ID: "dr", Provider: ProviderImage, URI: "qemu:///system"}, "only libvirt sites"},
		{"pool for qemu", CreateSiteRequest{ID: "dr", Provider: ProviderQEMU, Pool: "default"}, "storage pool"},
		{"credentials for qemu", CreateSiteRequest{ID: "dr", Credentials: ssh}, "takes no credentials"},
		{"libvirt without URI", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt}, "needs a URI"},
		{"other scheme", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "xen:///system"}, `scheme "xen"`},
		{"no scheme", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "kvm1.example.net"}, "scheme"},
		{"unix transport", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+unix:///system"}, "scheme"},
		{"does not parse", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://kvm1:port/system"}, "does not parse"},
		{"remote without host", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh:///system"}, "names no host"},
		{"host without transport", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu://kvm1/system"}, "without a transport"},
		{"no path", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://kvm1"}, "/system"},
		{"other path", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://kvm1/xen"}, "/system"},
		{"query", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh://kvm1/system?keyfile=/root/.ssh/id_rsa"}, "--credentials-file"},
		{"fragment", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu:///system#x"}, "no query or fragment"},
		{"opaque", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu:system"}, "no query or fragment"},
		{"password", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh://root:hunter2@kvm1/system"}, "password"},
		{"user for tls", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://root@kvm1/system"}, "only qemu+ssh"},
		{"control character", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu:///system\n"}, "printable"},
		{"long URI", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://" + strings.Repeat("a", 1020) + "/system"}, "at most 1024"},
		{"bad pool", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu:///system", Pool: "../etc"}, "storage pool name"},
		{"credentials for local", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu:///system", Credentials: ssh}, "takes no credentials"},
		{"credentials for tcp", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tcp://kvm1/system", Credentials: tls}, "takes no credentials"},
		{"tls without key", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://kvm1/system", Credentials: pemOf("CERTIFICATE")}, "0 private keys"},
		{"tls without certificate", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://kvm1/system", Credentials: ssh}, "0 certificates"},
		{"tls not PEM", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+tls://kvm1/system", Credentials: []byte("secret-secret")}, "must be PEM"},
		{"ssh with certificates", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh://kvm1/system", Credentials: tls}, "one SSH private key"},
		{"ssh two keys", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh://kvm1/system", Credentials: pemOf("OPENSSH PRIVATE KEY", "EC PRIVATE KEY")}, "found 2 private keys"},
		{"credentials over 64 KiB", CreateSiteRequest{ID: "dr", Provider: ProviderLibvirt, URI: "qemu+ssh://kvm1/system",
			Credentials: append(pemOf("OPENSSH PRIVATE KEY"), make([]byte, MaxSiteCredentialsBytes)...)}, "more than the 65536"},
		{"bad id", CreateSiteRequest{ID: "DR"}, "site id"},
	}
	for _, c := range bad {
		err := c.req.Validate()
		e, ok := err.(*Error)
		if !ok || e.Status != http.StatusBadRequest || !strings.Contains(e.Message, c.want) {
			t.Errorf("%s: %v, want a 400 saying %q", c.name, err, c.want)
			continue
		}
		if strings.Contains(e.Message, "hunter2") || strings.Contains(e.Message, "not really") || strings.Contains(e.Message, "secret-secret") {
			t.Errorf("%s: the message shows a secret: %s", c.name, e.Message)
		}
	}
}
