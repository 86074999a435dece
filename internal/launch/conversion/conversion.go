// Package conversion makes a recovered disk boot and be reachable on its target, without
// mounting it: it sets the hostname, writes static (or DHCP) network settings for the
// network the server is launched into, and adds files (an agent configuration for
// reversed replication, for instance). It works on raw images through package ext4image
// (debugfs), so it needs neither root nor loop devices, and the host kernel never mounts
// a recovered filesystem.
//
// For servers with cloud-init, NoCloudSeed writes a NoCloud seed disk (attached
// read-only to the VM) that carries the same settings in cloud-init's own terms, since
// cloud-init would otherwise rewrite them at first boot on a new instance.
//
// Network settings go to every network configuration system the image has (see Apply):
// Lifeboat's own /etc/lifeboat/network (read by the test image's init), ifupdown
// (/etc/network/interfaces.d), systemd-networkd (/etc/systemd/network) and netplan
// (/etc/netplan). Red Hat's ifcfg files and NetworkManager profiles are not written.
package conversion

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
)

// Conversion is what to change in a recovered disk before it boots. Empty fields change
// nothing.
type Conversion struct {
	// Hostname goes to /etc/hostname, and to the 127.0.1.1 line of /etc/hosts if that
	// file exists.
	Hostname string
	// Network, when set, replaces the server's network settings for its first NIC.
	Network *Network
	// Files are added or replaced, owned by root; missing parent directories are
	// created (mode 0755).
	Files []File
}

// Network is the network settings of the recovered server's first NIC.
type Network struct {
	// DHCP asks for an address by DHCP; Address, Gateway and DNS must then be empty.
	DHCP bool
	// Address is the static address with its prefix length, such as "10.0.2.15/24".
	Address string
	// Gateway is the default route's next hop (optional).
	Gateway string
	// DNS servers (optional).
	DNS []string
	// Interface is the NIC's name (default "eth0", which it is when the kernel command
	// line has net.ifnames=0, as ExtractBoot's has). ifupdown always configures it by
	// this name.
	Interface string
	// MAC, when set, makes systemd-networkd, netplan and cloud-init find the NIC by its
	// MAC address (as the launcher sets it) instead of by name.
	MAC string
}

// File is a file to add to the disk.
type File struct {
	Path    string      // absolute path in the recovered filesystem
	Content []byte      //
	Mode    fs.FileMode // permissions (default 0644)
}

// Apply changes a recovered disk image (raw: a whole-disk ext filesystem, or an MBR/GPT
// disk whose root filesystem is in a primary partition; see ext4image). A journal left
// with transactions (a snapshot of a mounted filesystem) is replayed first, so the replay
// at boot cannot undo the changes. Nothing may use the image meanwhile.
//
// Network settings are written to:
//   - /etc/lifeboat/network: MODE=static|dhcp, ADDRESS, GATEWAY, DNS lines, always;
//   - /etc/network/interfaces.d/lifeboat (ifupdown) if /etc/network/interfaces.d exists,
//     adding "source /etc/network/interfaces.d/*" to /etc/network/interfaces if missing;
//   - /etc/systemd/network/10-lifeboat.network (systemd-networkd) if that directory
//     exists;
//   - /etc/netplan/90-lifeboat.yaml (netplan, mode 0600) if /etc/netplan exists.
//
// Settings the server had for the same NIC in other files stay, and may add to these.
func Apply(ctx context.Context, image string, c Conversion) error {
	if err := c.validate(); err != nil {
		return err
	}
	root, err := ext4image.Root(ctx, image)
	if err != nil {
		return fmt.Errorf("convert %s: %w", image, err)
	}
	if err := root.ReplayJournal(ctx); err != nil {
		return fmt.Errorf("convert %s: %w", image, err)
	}
	if c.Hostname != "" {
		if err := setHostname(ctx, root, c.Hostname); err != nil {
			return fmt.Errorf("convert %s: set the hostname: %w", image, err)
		}
	}
	if c.Network != nil {
		if err := setNetwork(ctx, root, *c.Network); err != nil {
			return fmt.Errorf("convert %s: network settings: %w", image, err)
		}
	}
	for _, f := range c.Files {
		mode := f.Mode.Perm()
		if mode == 0 {
			mode = 0o644
		}
		if err := writeFile(ctx, root, f.Path, f.Content, mode); err != nil {
			return fmt.Errorf("convert %s: add %s: %w", image, f.Path, err)
		}
	}
	return nil
}

func (c Conversion) validate() error {
	if c.Hostname != "" {
		if err := checkHostname(c.Hostname); err != nil {
			return err
		}
	}
	if c.Network != nil {
		if _, err := c.Network.normalize(); err != nil {
			return err
		}
	}
	for _, f := range c.Files {
		if !strings.HasPrefix(f.Path, "/") || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return fmt.Errorf("file to add %q: give a clean absolute path", f.Path)
		}
		if f.Mode&^fs.ModePerm != 0 {
			return fmt.Errorf("file to add %s: mode %s: give permission bits only", f.Path, f.Mode)
		}
	}
	return nil
}

// checkHostname accepts an RFC 1123 host name: dot-separated labels of letters, digits
// and inner hyphens, 63 bytes a label, 253 in all.
func checkHostname(h string) error {
	bad := fmt.Errorf("hostname %q is not valid: use letters, digits and hyphens (not at either end), labels separated by dots, 63 characters a label", h)
	if len(h) > 253 || strings.HasSuffix(h, ".") {
		return bad
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return bad
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return bad
			}
		}
	}
	return nil
}

// writeFile writes a file, creating its directory.
func writeFile(ctx context.Context, root ext4image.Filesystem, p string, data []byte, mode fs.FileMode) error {
	if err := root.MkdirAll(ctx, path.Dir(p), 0o755); err != nil {
		return err
	}
	return root.WriteFile(ctx, p, data, mode)
}

func setHostname(ctx context.Context, root ext4image.Filesystem, name string) error {
	if err := writeFile(ctx, root, "/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	hosts, err := root.ReadFile(ctx, "/etc/hosts")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return root.WriteFile(ctx, "/etc/hosts", []byte(hostsWithName(string(hosts), name)), 0o644)
}

// hostsWithName points the 127.0.1.1 line of /etc/hosts (Debian's line for the host's
// own name) at name, adding the line if there is none.
func hostsWithName(hosts, name string) string {
	short, _, _ := strings.Cut(name, ".")
	entry := "127.0.1.1\t" + name
	if short != name {
		entry += " " + short
	}
	lines := strings.Split(strings.TrimRight(hosts, "\n"), "\n")
	done := false
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "127.0.1.1" {
			if done {
				lines[i] = "# " + l
				continue
			}
			lines[i] = entry
			done = true
		}
	}
	if !done {
		lines = append(lines, entry)
	}
	return strings.TrimLeft(strings.Join(lines, "\n")+"\n", "\n")
}

// normalized network settings.
type netSettings struct {
	dhcp    bool
	prefix  netip.Prefix // the address with its prefix length
	gateway netip.Addr   // invalid when none
	dns     []netip.Addr
	iface   string
	mac     string
}

func (n Network) normalize() (netSettings, error) {
	s := netSettings{dhcp: n.DHCP, iface: n.Interface}
	if s.iface == "" {
		s.iface = "eth0"
	}
	if len(s.iface) > 15 || strings.ContainsAny(s.iface, " \t\n/:=\"'\\#") || s.iface == "." || s.iface == ".." {
		return s, fmt.Errorf("interface name %q is not valid (at most 15 characters; no spaces, '/', ':', '=', quotes or '#')", n.Interface)
	}
	if n.MAC != "" {
		m, err := parseMAC(n.MAC)
		if err != nil {
			return s, err
		}
		s.mac = m
	}
	if n.DHCP {
		if n.Address != "" || n.Gateway != "" || len(n.DNS) > 0 {
			return s, errors.New("network settings: DHCP is set together with a static address, gateway or DNS: give one or the other")
		}
		return s, nil
	}
	p, err := netip.ParsePrefix(n.Address)
	if err != nil || !p.Addr().Is4() {
		return s, fmt.Errorf("network settings: address %q is not an IPv4 address with its prefix length, such as 10.0.2.15/24 (or set DHCP)", n.Address)
	}
	s.prefix = p
	if n.Gateway != "" {
		g, err := netip.ParseAddr(n.Gateway)
		if err != nil || !g.Is4() {
			return s, fmt.Errorf("network settings: gateway %q is not an IPv4 address", n.Gateway)
		}
		if !p.Masked().Contains(g) {
			return s, fmt.Errorf("network settings: gateway %s is not in %s's network %s", g, p.Addr(), p.Masked())
		}
		s.gateway = g
	}
	for _, d := range n.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return s, fmt.Errorf("network settings: DNS server %q is not an IP address", d)
		}
		s.dns = append(s.dns, a)
	}
	return s, nil
}

func parseMAC(m string) (string, error) {
	parts := strings.Split(strings.ToLower(m), ":")
	if len(parts) != 6 {
		return "", fmt.Errorf("MAC address %q is not like 52:54:00:12:34:56", m)
	}
	for _, p := range parts {
		if len(p) != 2 || strings.Trim(p, "0123456789abcdef") != "" {
			return "", fmt.Errorf("MAC address %q is not like 52:54:00:12:34:56", m)
		}
	}
	return strings.Join(parts, ":"), nil
}

func setNetwork(ctx context.Context, root ext4image.Filesystem, n Network) error {
	s, err := n.normalize()
	if err != nil {
		return err
	}
	if err := writeFile(ctx, root, "/etc/lifeboat/network", []byte(s.lifeboatFile()), 0o644); err != nil {
		return err
	}
	isDir := func(p string) (bool, error) {
		e, err := root.Stat(ctx, p)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return err == nil && e.IsDir(), err
	}
	if ok, err := isDir("/etc/network/interfaces.d"); err != nil {
		return err
	} else if ok {
		if err := root.WriteFile(ctx, "/etc/network/interfaces.d/lifeboat", []byte(s.ifupdown()), 0o644); err != nil {
			return err
		}
		main, err := root.ReadFile(ctx, "/etc/network/interfaces")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if !sourcesInterfacesD(string(main)) {
			text := string(main)
			if text != "" && !strings.HasSuffix(text, "\n") {
				text += "\n"
			}
			text += "source /etc/network/interfaces.d/*\n"
			if err := root.WriteFile(ctx, "/etc/network/interfaces", []byte(text), 0o644); err != nil {
				return err
			}
		}
	}
	if ok, err := isDir("/etc/systemd/network"); err != nil {
		return err
	} else if ok {
		if err := root.WriteFile(ctx, "/etc/systemd/network/10-lifeboat.network", []byte(s.networkd()), 0o644); err != nil {
			return err
		}
	}
	if ok, err := isDir("/etc/netplan"); err != nil {
		return err
	} else if ok {
		if err := root.WriteFile(ctx, "/etc/netplan/90-lifeboat.yaml", []byte(s.netplan()), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func sourcesInterfacesD(text string) bool {
	for _, l := range strings.Split(text, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "source" || f[0] == "source-directory") && strings.HasPrefix(f[1], "/etc/network/interfaces.d") {
			return true
		}
	}
	return false
}

// lifeboatFile is /etc/lifeboat/network: KEY=VALUE lines, read (never executed) by the
// test image's init.
func (s netSettings) lifeboatFile() string {
	if s.dhcp {
		return "MODE=dhcp\n"
	}
	var b strings.Builder
	b.WriteString("MODE=static\nADDRESS=" + s.prefix.String() + "\n")
	if s.gateway.IsValid() {
		b.WriteString("GATEWAY=" + s.gateway.String() + "\n")
	}
	if len(s.dns) > 0 {
		b.WriteString("DNS=" + s.dns[0].String() + "\n")
	}
	return b.String()
}

func (s netSettings) ifupdown() string {
	var b strings.Builder
	b.WriteString("# Written by Lifeboat for the recovered server's network.\n")
	fmt.Fprintf(&b, "auto %s\nallow-hotplug %s\n", s.iface, s.iface)
	if s.dhcp {
		fmt.Fprintf(&b, "iface %s inet dhcp\n", s.iface)
		return b.String()
	}
	fmt.Fprintf(&b, "iface %s inet static\n    address %s\n", s.iface, s.prefix)
	if s.gateway.IsValid() {
		fmt.Fprintf(&b, "    gateway %s\n", s.gateway)
	}
	if len(s.dns) > 0 {
		fmt.Fprintf(&b, "    dns-nameservers %s\n", joinAddrs(s.dns, " "))
	}
	return b.String()
}

func (s netSettings) networkd() string {
	var b strings.Builder
	b.WriteString("# Written by Lifeboat for the recovered server's network.\n[Match]\n")
	if s.mac != "" {
		fmt.Fprintf(&b, "MACAddress=%s\n", s.mac)
	} else {
		fmt.Fprintf(&b, "Name=%s\n", s.iface)
	}
	b.WriteString("\n[Network]\n")
	if s.dhcp {
		b.WriteString("DHCP=ipv4\n")
		return b.String()
	}
	fmt.Fprintf(&b, "Address=%s\n", s.prefix)
	if s.gateway.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", s.gateway)
	}
	for _, d := range s.dns {
		fmt.Fprintf(&b, "DNS=%s\n", d)
	}
	return b.String()
}

// netplan is a netplan file, which is also cloud-init's network-config version 2.
func (s netSettings) netplan() string {
	var b strings.Builder
	b.WriteString("# Written by Lifeboat for the recovered server's network.\nnetwork:\n  version: 2\n  ethernets:\n")
	if s.mac != "" {
		fmt.Fprintf(&b, "    lifeboat0:\n      match:\n        macaddress: %s\n", yamlString(s.mac))
	} else {
		fmt.Fprintf(&b, "    %s:\n", yamlString(s.iface))
	}
	if s.dhcp {
		b.WriteString("      dhcp4: true\n")
		return b.String()
	}
	fmt.Fprintf(&b, "      dhcp4: false\n      addresses: [%s]\n", yamlString(s.prefix.String()))
	if s.gateway.IsValid() {
		// "to: 0.0.0.0/0" rather than "to: default", which older netplan lacks.
		fmt.Fprintf(&b, "      routes:\n        - to: %s\n          via: %s\n", yamlString("0.0.0.0/0"), yamlString(s.gateway.String()))
	}
	if len(s.dns) > 0 {
		var q []string
		for _, d := range s.dns {
			q = append(q, yamlString(d.String()))
		}
		fmt.Fprintf(&b, "      nameservers:\n        addresses: [%s]\n", strings.Join(q, ", "))
	}
	return b.String()
}

func joinAddrs(as []netip.Addr, sep string) string {
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, sep)
}

// NetworkConfig returns cloud-init's network-config (version 2) for the settings, for
// NoCloudSeed.
func NetworkConfig(n Network) (string, error) {
	s, err := n.normalize()
	if err != nil {
		return "", err
	}
	return s.netplan(), nil
}
