package conversion

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// distroImage makes a disk image laid out like a Debian/Ubuntu server's system disk:
// ifupdown, systemd-networkd and netplan directories, /etc/hosts with a 127.0.1.1 line.
func distroImage(t *testing.T, withNetDirs bool) string {
	t.Helper()
	testutil.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	testutil.RequireCommand(t, "debugfs", "e2fsprogs")
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	files := map[string]string{
		"etc/hostname": "prod-web-1\n",
		"etc/hosts":    "127.0.0.1\tlocalhost\n127.0.1.1\tprod-web-1.example.com prod-web-1\n\n::1 localhost ip6-localhost\n",
	}
	if withNetDirs {
		files["etc/network/interfaces"] = "auto lo\niface lo inet loopback\n"
		files["etc/netplan/50-cloud-init.yaml"] = "network: {version: 2}\n"
		files["etc/systemd/network/.keep"] = ""
		files["etc/network/interfaces.d/.keep"] = ""
	}
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "disk.raw")
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-d", root, img, "32M")
	return img
}

func read(t *testing.T, img, p string) string {
	t.Helper()
	f, err := ext4image.Root(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.ReadFile(context.Background(), p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b)
}

func TestApplyDistribution(t *testing.T) {
	img := distroImage(t, true)
	ctx := context.Background()
	err := Apply(ctx, img, Conversion{
		Hostname: "dr-web-1",
		Network: &Network{
			Address: "10.0.2.15/24", Gateway: "10.0.2.2", DNS: []string{"10.0.2.3", "10.0.2.4"},
		},
		Files: []File{
			{Path: "/etc/lifeboat/agent.yaml", Content: []byte("server: https://127.0.0.1:8443\n"), Mode: 0o600},
			{Path: "/opt/new/dir/tool.sh", Content: []byte("#!/bin/sh\n"), Mode: 0o755},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{
		"/etc/hostname":            "dr-web-1\n",
		"/etc/hosts":               "127.0.0.1\tlocalhost\n127.0.1.1\tdr-web-1\n\n::1 localhost ip6-localhost\n",
		"/etc/lifeboat/network":    "MODE=static\nADDRESS=10.0.2.15/24\nGATEWAY=10.0.2.2\nDNS=10.0.2.3\n",
		"/etc/lifeboat/agent.yaml": "server: https://127.0.0.1:8443\n",
		"/etc/network/interfaces":  "auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n",
		"/etc/network/interfaces.d/lifeboat": "# Written by Lifeboat for the recovered server's network.\n" +
			"auto eth0\nallow-hotplug eth0\niface eth0 inet static\n    address 10.0.2.15/24\n    gateway 10.0.2.2\n    dns-nameservers 10.0.2.3 10.0.2.4\n",
		"/etc/systemd/network/10-lifeboat.network": "# Written by Lifeboat for the recovered server's network.\n" +
			"[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\nDNS=10.0.2.3\nDNS=10.0.2.4\n",
	} {
		if got := read(t, img, p); got != want {
			t.Errorf("%s =\n%q\nwant\n%q", p, got, want)
		}
	}
	var plan map[string]any
	if err := yaml.Unmarshal([]byte(read(t, img, "/etc/netplan/90-lifeboat.yaml")), &plan); err != nil {
		t.Fatalf("netplan file is not YAML: %v", err)
	}
	eth := plan["network"].(map[string]any)["ethernets"].(map[string]any)["eth0"].(map[string]any)
	if !reflect.DeepEqual(eth["addresses"], []any{"10.0.2.15/24"}) || eth["dhcp4"] != false {
		t.Errorf("netplan eth0 = %v", eth)
	}
	f, err := ext4image.Root(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{
		"/etc/netplan/90-lifeboat.yaml": 0o600, "/etc/lifeboat/agent.yaml": 0o600,
		"/opt/new/dir/tool.sh": 0o755, "/etc/hostname": 0o644, "/opt/new": os.ModeDir | 0o755,
	} {
		e, err := f.Stat(ctx, p)
		if err != nil || e.Mode != mode || e.UID != 0 {
			t.Errorf("%s: %+v, %v; want mode %s owned by root", p, e, err, mode)
		}
	}
	// The source's own netplan file is left alone.
	if got := read(t, img, "/etc/netplan/50-cloud-init.yaml"); got != "network: {version: 2}\n" {
		t.Errorf("the source's netplan file changed: %q", got)
	}
	testutil.Run(t, "e2fsck", "-f", "-n", img)

	// Applying again (a relaunch) converges on the same files.
	if err := Apply(ctx, img, Conversion{Hostname: "dr-web-2", Network: &Network{DHCP: true, MAC: "52:54:00:AA:bb:01"}}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, img, "/etc/network/interfaces"); strings.Count(got, "source /etc/network/interfaces.d/*") != 1 {
		t.Errorf("interfaces sources interfaces.d more than once:\n%s", got)
	}
	if got := read(t, img, "/etc/systemd/network/10-lifeboat.network"); !strings.Contains(got, "MACAddress=52:54:00:aa:bb:01\n") || !strings.Contains(got, "DHCP=ipv4") {
		t.Errorf("networkd file for DHCP by MAC:\n%s", got)
	}
	if got := read(t, img, "/etc/hosts"); !strings.Contains(got, "127.0.1.1\tdr-web-2\n") || strings.Contains(got, "dr-web-1") {
		t.Errorf("/etc/hosts after the second conversion:\n%s", got)
	}
}

func TestApplyMinimalImage(t *testing.T) {
	img := distroImage(t, false)
	ctx := context.Background()
	if err := Apply(ctx, img, Conversion{Network: &Network{DHCP: true}}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, img, "/etc/lifeboat/network"); got != "MODE=dhcp\n" {
		t.Errorf("/etc/lifeboat/network = %q", got)
	}
	f, _ := ext4image.Root(ctx, img)
	for _, p := range []string{"/etc/netplan", "/etc/systemd/network", "/etc/network"} {
		if _, err := f.Stat(ctx, p); err == nil {
			t.Errorf("%s was created in an image that had none", p)
		}
	}
	if got := read(t, img, "/etc/hostname"); got != "prod-web-1\n" {
		t.Errorf("hostname changed without being asked: %q", got)
	}
}

func TestApplyRefusesBadSettings(t *testing.T) {
	for name, c := range map[string]Conversion{
		"hostname with underscore": {Hostname: "web_1"},
		"hostname with newline":    {Hostname: "web\nx"},
		"dhcp and address":         {Network: &Network{DHCP: true, Address: "10.0.0.2/24"}},
		"address without prefix":   {Network: &Network{Address: "10.0.0.2"}},
		"gateway elsewhere":        {Network: &Network{Address: "10.0.0.2/24", Gateway: "10.0.1.1"}},
		"bad dns":                  {Network: &Network{Address: "10.0.0.2/24", DNS: []string{"dns.example"}}},
		"bad interface":            {Network: &Network{DHCP: true, Interface: "eth0\nx"}},
		"bad mac":                  {Network: &Network{DHCP: true, MAC: "52:54:00"}},
		"relative file":            {Files: []File{{Path: "etc/x"}}},
		"unclean file":             {Files: []File{{Path: "/etc/../x"}}},
	} {
		if err := Apply(context.Background(), "/nonexistent.raw", c); err == nil || strings.Contains(err.Error(), "nonexistent") {
			t.Errorf("%s: Apply = %v, want a refusal before the image is opened", name, err)
		}
	}
}

func TestHostsWithName(t *testing.T) {
	for in, want := range map[string]string{
		"":                                   "127.0.1.1\tdb.example.com db\n",
		"127.0.0.1 localhost\n":              "127.0.0.1 localhost\n127.0.1.1\tdb.example.com db\n",
		"127.0.1.1 old\n127.0.1.1 older\n":   "127.0.1.1\tdb.example.com db\n# 127.0.1.1 older\n",
		"127.0.0.1 localhost\n127.0.1.1 old": "127.0.0.1 localhost\n127.0.1.1\tdb.example.com db\n",
	} {
		if got := hostsWithName(in, "db.example.com"); got != want {
			t.Errorf("hostsWithName(%q) = %q, want %q", in, got, want)
		}
	}
}

// The YAML NoCloudSeed and NetworkConfig write, read back by a YAML parser.
func TestSeedYAML(t *testing.T) {
	var meta map[string]string
	m := MetaData{InstanceID: "i-1: \"quoted\" #x", LocalHostname: "dr-web-1"}
	if err := yaml.Unmarshal([]byte(m.yaml()), &meta); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"instance-id": m.InstanceID, "local-hostname": "dr-web-1"}; !reflect.DeepEqual(meta, want) {
		t.Errorf("meta-data = %v, want %v", meta, want)
	}

	nc, err := NetworkConfig(Network{Address: "192.168.50.10/24", Gateway: "192.168.50.1", DNS: []string{"192.168.50.2"}, MAC: "52:54:00:12:34:56"})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal([]byte(nc), &got); err != nil {
		t.Fatalf("network-config is not YAML: %v\n%s", err, nc)
	}
	want := map[string]any{"network": map[string]any{
		"version": 2,
		"ethernets": map[string]any{"lifeboat0": map[string]any{
			"match":       map[string]any{"macaddress": "52:54:00:12:34:56"},
			"dhcp4":       false,
			"addresses":   []any{"192.168.50.10/24"},
			"routes":      []any{map[string]any{"to": "0.0.0.0/0", "via": "192.168.50.1"}},
			"nameservers": map[string]any{"addresses": []any{"192.168.50.2"}},
		}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("network-config =\n%#v\nwant\n%#v", got, want)
	}
	nc, _ = NetworkConfig(Network{DHCP: true})
	if err := yaml.Unmarshal([]byte(nc), &got); err != nil {
		t.Fatal(err)
	}
	if eth := got["network"].(map[string]any)["ethernets"].(map[string]any)["eth0"]; !reflect.DeepEqual(eth, map[string]any{"dhcp4": true}) {
		t.Errorf("DHCP network-config eth0 = %v", eth)
	}
}

func TestNoCloudSeed(t *testing.T) {
	xorriso := testutil.RequireCommand(t, "xorriso", "xorriso")
	testutil.RequireCommand(t, "blkid", "util-linux")
	ctx := context.Background()
	dir := t.TempDir()
	netcfg, err := NetworkConfig(Network{Address: "10.0.2.15/24", Gateway: "10.0.2.2"})
	if err != nil {
		t.Fatal(err)
	}
	user := "#cloud-config\nruncmd:\n  - [touch, /root/recovered]\n"
	meta := MetaData{InstanceID: "lifeboat-r-123", LocalHostname: "dr-web-1"}
	seed, err := NoCloudSeed(ctx, dir, meta, user, netcfg)
	if err != nil {
		t.Fatal(err)
	}
	// cloud-init finds the seed by filesystem type and label, as blkid reports them.
	if got := strings.TrimSpace(testutil.Run(t, "blkid", "-o", "value", "-s", "LABEL", seed)); got != "cidata" {
		t.Errorf("label = %q, want cidata", got)
	}
	if got := strings.TrimSpace(testutil.Run(t, "blkid", "-o", "value", "-s", "TYPE", seed)); got != "iso9660" {
		t.Errorf("type = %q, want iso9660", got)
	}
	out := filepath.Join(t.TempDir(), "x")
	cmd := exec.Command(xorriso, "-osirrox", "on", "-indev", seed, "-extract", "/", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("extract the seed: %v\n%s", err, b)
	}
	entries, _ := os.ReadDir(out)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"meta-data", "network-config", "user-data"}; !reflect.DeepEqual(names, want) {
		t.Errorf("seed holds %v, want %v", names, want)
	}
	for name, want := range map[string]string{"meta-data": meta.yaml(), "user-data": user, "network-config": netcfg} {
		got, err := os.ReadFile(filepath.Join(out, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	// A new seed replaces the old one; nothing else is left in dir.
	if _, err := NoCloudSeed(ctx, dir, MetaData{InstanceID: "lifeboat-r-124"}, "", ""); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 1 || left[0].Name() != SeedFileName {
		t.Errorf("dir holds %v, want only %s", left, SeedFileName)
	}
	if _, err := NoCloudSeed(ctx, dir, MetaData{}, "", ""); err == nil {
		t.Error("a seed without an instance id was written")
	}
}
