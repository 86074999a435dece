package api

import (
	"encoding/pem"
	"net/url"
	"regexp"
	"strings"
)

// Site limits and defaults.
const (
	// ProviderLibvirt is a site's provider that launches into the libvirt at the site's
	// URI (the others are ProviderQEMU and ProviderImage).
	ProviderLibvirt = "libvirt"
	// MaxSiteCredentialsBytes bounds a site's credentials (PEM or an SSH key).
	MaxSiteCredentialsBytes = 64 << 10
	// MaxSiteURIBytes bounds a site's libvirt URI.
	MaxSiteURIBytes = 1024
	// DefaultSitePool is a libvirt site's storage pool when none is given: the pool
	// virt-install and virt-manager make.
	DefaultSitePool = "default"
)

// libvirt URI schemes a site may use: the local daemon, or a remote one over TCP,
// TLS or SSH.
const (
	LibvirtLocal = "qemu"
	LibvirtTCP   = "qemu+tcp"
	LibvirtTLS   = "qemu+tls"
	LibvirtSSH   = "qemu+ssh"
)

var poolRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$`)

// libvirtURIHelp shows the URIs a libvirt site may have, for error messages.
const libvirtURIHelp = "qemu:///system for the libvirt of this host, or qemu+tls://HOST/system, " +
	"qemu+ssh://USER@HOST/system or qemu+tcp://HOST/system for another"

// Validate checks a site request: its id and description, and that its provider's
// URI, pool and credentials fit together.
func (r CreateSiteRequest) Validate() error {
	if !ValidName(r.ID) {
		return Invalid("site id %q must be 1-63 lowercase letters, digits or '-'", r.ID)
	}
	if len(r.Description) > 256 || !printableRE.MatchString(r.Description) {
		return Invalid("description must be at most 256 printable characters")
	}
	if len(r.Credentials) > MaxSiteCredentialsBytes {
		return Invalid("credentials are %d bytes, more than the %d a site may have: give only the client certificate, key and CA, or one SSH private key",
			len(r.Credentials), MaxSiteCredentialsBytes)
	}
	switch r.Provider {
	case "", ProviderQEMU, ProviderImage:
		return r.validateNotLibvirt()
	case ProviderLibvirt:
	default:
		return Invalid("provider must be qemu, libvirt or image, not %q", r.Provider)
	}
	scheme, err := ValidateLibvirtURI(r.URI)
	if err != nil {
		return err
	}
	if r.Pool != "" && !poolRE.MatchString(r.Pool) {
		return Invalid("pool %q is not a storage pool name: 1-63 letters, digits, '.', '_', '+' or '-'", r.Pool)
	}
	return validateSiteCredentials(scheme, r.Credentials)
}

// validateNotLibvirt refuses the fields only a libvirt site has.
func (r CreateSiteRequest) validateNotLibvirt() error {
	provider := r.Provider
	if provider == "" {
		provider = ProviderQEMU
	}
	switch {
	case r.URI != "":
		return Invalid("a %s site has no URI: only libvirt sites do (--provider libvirt)", provider)
	case r.Pool != "":
		return Invalid("a %s site has no storage pool: only libvirt sites do (--provider libvirt)", provider)
	case len(r.Credentials) > 0:
		return Invalid("a %s site takes no credentials: only libvirt sites reached over qemu+tls or qemu+ssh do", provider)
	}
	return nil
}

// ValidateLibvirtURI checks a libvirt site's URI and returns its scheme: qemu:///system
// (or /session) locally, or qemu+tcp, qemu+tls or qemu+ssh with a host. Passwords,
// query parameters and fragments are refused: secrets go in the site's credentials,
// which are stored sealed, not in a URI that is shown to every viewer.
func ValidateLibvirtURI(s string) (string, error) {
	if s == "" {
		return "", Invalid("a libvirt site needs a URI: %s", libvirtURIHelp)
	}
	if len(s) > MaxSiteURIBytes || !printableRE.MatchString(s) {
		return "", Invalid("the URI must be at most %d printable characters", MaxSiteURIBytes)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", Invalid("the URI %q does not parse (%v): use %s", s, err, libvirtURIHelp)
	}
	if u.Opaque != "" || u.Fragment != "" || u.RawQuery != "" || u.ForceQuery {
		return "", Invalid("the URI %q may have no query or fragment: give keys and certificates with --credentials-file; use %s", s, libvirtURIHelp)
	}
	if _, ok := u.User.Password(); ok {
		return "", Invalid("the URI %q has a password in it: URIs are shown to every viewer; give an SSH key with --credentials-file", u.Redacted())
	}
	switch u.Scheme {
	case LibvirtLocal:
		if u.Host != "" || u.User != nil {
			return "", Invalid("the URI %q names a host without a transport: use qemu:///system for this host, or qemu+tls://, qemu+ssh:// or qemu+tcp:// for another", s)
		}
	case LibvirtTCP, LibvirtTLS, LibvirtSSH:
		if u.Hostname() == "" {
			return "", Invalid("the URI %q names no host: a %s URI is %s://HOST/system", s, u.Scheme, u.Scheme)
		}
		if u.User != nil && u.Scheme != LibvirtSSH {
			return "", Invalid("the URI %q names a user: only qemu+ssh URIs do", s)
		}
	default:
		return "", Invalid("the URI %q has scheme %q: a libvirt site's URI is %s", s, u.Scheme, libvirtURIHelp)
	}
	if u.Path != "/system" && u.Path != "/session" {
		return "", Invalid("the URI %q must end in /system (or /session), not %q: %s", s, u.Path, libvirtURIHelp)
	}
	return u.Scheme, nil
}

// validateSiteCredentials checks that credentials look like what their URI's transport
// takes: PEM certificates and a private key for qemu+tls, one PEM private key (OpenSSH
// or PKCS) for qemu+ssh. Their content is never quoted in an error.
func validateSiteCredentials(scheme string, creds []byte) error {
	if len(creds) == 0 {
		return nil
	}
	if scheme != LibvirtTLS && scheme != LibvirtSSH {
		return Invalid("a %s:// URI takes no credentials: only qemu+tls (client certificate, key and CA) and qemu+ssh (an SSH private key) do", scheme)
	}
	var certs, keys int
	for rest := creds; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE":
			certs++
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			keys++
		}
	}
	switch {
	case scheme == LibvirtTLS && (certs == 0 || keys != 1):
		return Invalid("qemu+tls credentials must be PEM: the client certificate, its private key and the CA certificate in one file (found %d certificates and %d private keys)", certs, keys)
	case scheme == LibvirtSSH && (keys != 1 || certs != 0):
		return Invalid("qemu+ssh credentials must be one SSH private key without a passphrase, PEM or OpenSSH format (found %d private keys and %d certificates)", keys, certs)
	}
	return nil
}
