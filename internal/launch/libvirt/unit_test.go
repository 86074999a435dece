package libvirt

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestParseURI(t *testing.T) {
	good := []struct{ uri, transport, host, socket, remote, shown string }{
		{"qemu:///system", TransportUnix, "", defaultSocket, "qemu:///system", "qemu:///system"},
		{"qemu:///system?socket=/tmp/s", TransportUnix, "", "/tmp/s", "qemu:///system", "qemu:///system"},
		{"qemu+tcp://10.0.0.5/system", TransportTCP, "10.0.0.5:16509", "", "qemu:///system", "qemu+tcp://10.0.0.5/system"},
		{"qemu+tcp://127.0.0.1:1234/system", TransportTCP, "127.0.0.1:1234", "", "qemu:///system", "qemu+tcp://127.0.0.1:1234/system"},
		{"qemu+tls://kvm1.example/system", TransportTLS, "kvm1.example:16514", "", "qemu:///system", "qemu+tls://kvm1.example/system"},
		{"qemu://kvm1.example/system", TransportTLS, "kvm1.example:16514", "", "qemu:///system", "qemu://kvm1.example/system"},
		{"qemu+ssh://root@kvm1:2222/system", TransportSSH, "kvm1:2222", "/var/run/libvirt/libvirt-sock", "qemu:///system", "qemu+ssh://root@kvm1:2222/system"},
	}
	for _, g := range good {
		a, err := ParseURI(g.uri)
		if err != nil {
			t.Errorf("%s: %v", g.uri, err)
			continue
		}
		if a.Transport != g.transport || a.Host != g.host || a.Socket != g.socket || a.Remote != g.remote || a.String() != g.shown {
			t.Errorf("%s: got %+v shown %s", g.uri, a, a)
		}
	}
	bad := map[string]string{
		"":                             "1 to",
		"xen:///system":                "only the qemu driver",
		"qemu+tcp://h/other":           "path must be /system",
		"qemu+ssh://h/system":          "name the ssh user",
		"qemu+ssh://u:secret@h/system": "no password",
		"qemu+libssh2://u@h/system":    "not supported",
		"qemu+tcp:///system":           "name the host",
		"qemu+unix://h/system":         "names no host",
		"qemu:///system" + strings.Repeat("x", maxURILen): "1 to",
	}
	for uri, want := range bad {
		_, err := ParseURI(uri)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40s: error %v, want one saying %q", uri, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error shows the password: %v", uri, err)
		}
	}
}

// pemCert makes a certificate signed by parent (self-signed when parent is nil).
func pemCert(t *testing.T, cn string, isCA bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: isCA, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	crt, _ := x509.ParseCertificate(der)
	return crt, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestParseCredentialsTLS(t *testing.T) {
	ca, caKey, caPEM := pemCert(t, "ca", true, nil, nil)
	_, key, certPEM := pemCert(t, "client", false, ca, caKey)
	der, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	// Any order: the certificate that matches the key is the client's.
	bundle := append(append(append([]byte{}, caPEM...), keyPEM...), certPEM...)
	c, err := ParseCredentials(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS == nil || c.CAs == nil {
		t.Fatalf("credentials %+v", c)
	}
	if _, err := ParseCredentials(append(append([]byte{}, keyPEM...), keyPEM...)); err == nil {
		t.Fatal("two private keys were accepted")
	}
	if _, err := ParseCredentials(make([]byte, maxCredentialsLen+1)); err == nil {
		t.Fatal("an oversized bundle was accepted")
	}
}

func TestParseCredentialsSSH(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	hostPub, _, _ := ed25519.GenerateKey(rand.Reader)
	hk, _ := ssh.NewPublicKey(hostPub)
	line := "kvm1 " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hk)))
	bundle := append(pem.EncodeToMemory(blk), []byte("# the host\n"+line+"\n")...)
	c, err := ParseCredentials(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if c.SSHKey == nil || len(c.KnownHosts) != 1 {
		t.Fatalf("credentials %+v", c)
	}
	cb, err := knownHostsCallback(c.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	if err := cb("kvm1:22", nil, hk); err != nil {
		t.Fatalf("the known host key is refused: %v", err)
	}
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	ok, _ := ssh.NewPublicKey(otherPub)
	if err := cb("kvm1:22", nil, ok); err == nil {
		t.Fatal("an unknown host key is accepted")
	}
}

func TestParseMetadata(t *testing.T) {
	cases := []struct {
		inner    string
		allow    bool
		recovery string
	}{
		{`<lifeboat:allow-launch xmlns:lifeboat="` + MetadataNS + `">true</lifeboat:allow-launch>`, true, ""},
		{`<lb:instance xmlns:lb="` + MetadataNS + `"><lb:allow-launch> true </lb:allow-launch></lb:instance>`, true, ""},
		{`<x:allow-launch xmlns:x="https://example.com/other">true</x:allow-launch>`, false, ""},
		{`<lifeboat:allow-launch xmlns:lifeboat="` + MetadataNS + `">false</lifeboat:allow-launch>`, false, ""},
		{`<lifeboat:instance xmlns:lifeboat="` + MetadataNS + `"><lifeboat:recovery-instance>ri-1</lifeboat:recovery-instance></lifeboat:instance>`, false, "ri-1"},
		{`<broken`, false, ""},
	}
	for _, c := range cases {
		allow, rec := parseMetadata(c.inner)
		if allow != c.allow || rec != c.recovery {
			t.Errorf("%s: allow %v recovery %q", c.inner, allow, rec)
		}
	}
}

func TestDomainSpecXML(t *testing.T) {
	s := DomainSpec{Name: "lbtest-x", CPUs: 2, MemoryMiB: 512, Boot: BootUEFI,
		Disks: []DiskRef{{Pool: "p", Volume: "v0"}, {Pool: "p", Volume: "v1"}}, NIC: &NIC{Bridge: "br0"},
		RecoveryInstance: "ri-<&>"}
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
	x, err := s.domainXML()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`type="qemu"`, `firmware="efi"`, `volume="v1"`, `dev="vdb"`, `bridge="br0"`,
		`ri-&lt;&amp;&gt;`, `<serial type="pty">`, `<console type="pty">`} {
		if !strings.Contains(x, want) {
			t.Errorf("domain XML lacks %s:\n%s", want, x)
		}
	}
	for _, bad := range []DomainSpec{{Name: "a/b", CPUs: 1, MemoryMiB: 64, Disks: s.Disks},
		{Name: "x", CPUs: 0, MemoryMiB: 64, Disks: s.Disks}, {Name: "x", CPUs: 1, MemoryMiB: 64},
		{Name: "x", CPUs: 1, MemoryMiB: 64, Disks: s.Disks, NIC: &NIC{}}, {Name: "x", CPUs: 1, MemoryMiB: 64, Disks: s.Disks, Boot: "efi"}} {
		if bad.check() == nil {
			t.Errorf("spec %+v accepted", bad)
		}
	}
}

func TestDataRangesSkipsHolesAndZeros(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, BlockSize)
	data[0] = 1
	for _, off := range []int64{0, 1 << 20, 6 << 20, 40 << 20} { // blocks 0, 1 and 6 (one range: a short gap) and 40
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt(make([]byte, BlockSize), 50<<20); err != nil { // written zeros
		t.Fatal(err)
	}
	got, err := dataRanges(context.Background(), f, size, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []span{{0, 7 << 20}, {40 << 20, 1 << 20}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("ranges %v, want %v", got, want)
	}
	all, _ := dataRanges(context.Background(), f, size, false)
	if len(all) != 1 || all[0] != (span{0, size}) {
		t.Fatalf("without skipping: %v", all)
	}
}
