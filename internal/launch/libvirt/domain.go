package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"
)

// MetadataNS is the XML namespace of Lifeboat's element in a domain's <metadata>.
// A domain Lifeboat made carries
//
//	<lifeboat:instance xmlns:lifeboat="https://lifeboat.dev/xmlns/instance">
//	  <lifeboat:recovery-instance>ri-…</lifeboat:recovery-instance>
//	</lifeboat:instance>
//
// and a domain its owner lets Lifeboat launch into carries, at any depth under
// <metadata>, <lifeboat:allow-launch>true</lifeboat:allow-launch> in that namespace.
const MetadataNS = "https://lifeboat.dev/xmlns/instance"

// Domain types.
const (
	DomainTypeQEMU = "qemu" // TCG: works everywhere, slowly
	DomainTypeKVM  = "kvm"
)

// Boot modes.
const (
	BootBIOS = "bios"
	BootUEFI = "uefi"
)

// Domain states, as State reports them.
const (
	StateRunning = "running"
	StatePaused  = "paused"
	StateShutoff = "shutoff"
	StateOther   = "other" // blocked, shutting down, crashed, suspended
)

// Limits of a domain spec.
const (
	maxCPUs      = 512
	maxMemoryMiB = 16 << 20
	maxDisks     = 26
)

// DiskRef is a domain's disk: a volume of a pool (and its path on the host, when known).
type DiskRef struct {
	Pool, Volume string
	Path         string
	ReadOnly     bool
}

// NIC connects a domain to a libvirt network or a host bridge (one of the two).
type NIC struct {
	Network string
	Bridge  string
}

// DomainSpec is a domain to define.
type DomainSpec struct {
	Name      string
	Type      string // qemu (default) or kvm
	CPUs      int
	MemoryMiB int
	Disks     []DiskRef // boot disk first
	NIC       *NIC      // nil: no network
	Boot      string    // bios (default) or uefi
	// Kernel, Initrd and Cmdline boot a kernel directly (paths on the libvirt host).
	Kernel, Initrd, Cmdline string
	// RecoveryInstance is recorded in the domain's metadata: the domain is Lifeboat's.
	RecoveryInstance string
}

func (s DomainSpec) check() error {
	if err := checkName("domain", s.Name); err != nil {
		return err
	}
	switch {
	case s.Type != "" && s.Type != DomainTypeQEMU && s.Type != DomainTypeKVM:
		return fmt.Errorf("domain %s: type %q: qemu or kvm", s.Name, s.Type)
	case s.CPUs < 1 || s.CPUs > maxCPUs:
		return fmt.Errorf("domain %s: %d CPUs: 1 to %d", s.Name, s.CPUs, maxCPUs)
	case s.MemoryMiB < 16 || s.MemoryMiB > maxMemoryMiB:
		return fmt.Errorf("domain %s: %d MiB of memory: 16 to %d", s.Name, s.MemoryMiB, maxMemoryMiB)
	case len(s.Disks) == 0 || len(s.Disks) > maxDisks:
		return fmt.Errorf("domain %s: %d disks: 1 to %d", s.Name, len(s.Disks), maxDisks)
	case s.Boot != "" && s.Boot != BootBIOS && s.Boot != BootUEFI:
		return fmt.Errorf("domain %s: boot mode %q: bios or uefi", s.Name, s.Boot)
	case s.NIC != nil && (s.NIC.Network == "") == (s.NIC.Bridge == ""):
		return fmt.Errorf("domain %s: a network interface names a libvirt network or a bridge", s.Name)
	}
	return nil
}

// domainXML renders the spec.
func (s DomainSpec) domainXML() (string, error) {
	typ := s.Type
	if typ == "" {
		typ = DomainTypeQEMU
	}
	d := &libvirtxml.Domain{Type: typ, Name: s.Name,
		Memory: &libvirtxml.DomainMemory{Value: uint(s.MemoryMiB), Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: uint(s.CPUs)},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Type: "hvm"},
			Kernel: s.Kernel, Initrd: s.Initrd, Cmdline: s.Cmdline},
		Features: &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		OnCrash:  "destroy",
		Devices:  &libvirtxml.DomainDeviceList{},
	}
	if s.Boot == BootUEFI {
		d.OS.Firmware = "efi"
	}
	if s.Kernel == "" {
		d.OS.BootDevices = []libvirtxml.DomainBootDevice{{Dev: "hd"}}
	}
	if s.RecoveryInstance != "" {
		var b strings.Builder
		b.WriteString(`<lifeboat:instance xmlns:lifeboat="` + MetadataNS + `"><lifeboat:recovery-instance>`)
		if err := xml.EscapeText(&b, []byte(s.RecoveryInstance)); err != nil {
			return "", err
		}
		b.WriteString(`</lifeboat:recovery-instance></lifeboat:instance>`)
		d.Metadata = &libvirtxml.DomainMetadata{XML: b.String()}
	}
	for i, disk := range s.Disks {
		dd := libvirtxml.DomainDisk{Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
			Source: &libvirtxml.DomainDiskSource{Volume: &libvirtxml.DomainDiskSourceVolume{Pool: disk.Pool, Volume: disk.Volume}},
			Target: &libvirtxml.DomainDiskTarget{Dev: fmt.Sprintf("vd%c", 'a'+i), Bus: "virtio"}}
		if disk.ReadOnly {
			dd.ReadOnly = &libvirtxml.DomainDiskReadOnly{}
		}
		d.Devices.Disks = append(d.Devices.Disks, dd)
	}
	if n := s.NIC; n != nil {
		src := &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: n.Network}}
		if n.Bridge != "" {
			src = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: n.Bridge}}
		}
		d.Devices.Interfaces = []libvirtxml.DomainInterface{{Source: src, Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"}}}
	}
	port := uint(0)
	d.Devices.Serials = []libvirtxml.DomainSerial{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port}}}
	d.Devices.Consoles = []libvirtxml.DomainConsole{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port}}}
	return d.Marshal()
}

// DefineDomain defines (does not start) a domain from the spec.
func (c *Client) DefineDomain(ctx context.Context, s DomainSpec) error {
	if err := s.check(); err != nil {
		return err
	}
	x, err := s.domainXML()
	if err != nil {
		return err
	}
	err = c.do(ctx, "define domain "+s.Name, func() error {
		_, err := c.lv.DomainDefineXMLFlags(x, 0)
		return err
	})
	if err == nil {
		c.log.Info("defined a domain", "domain", s.Name, "cpus", s.CPUs, "memoryMiB", s.MemoryMiB, "type", s.Type)
	}
	return err
}

func (c *Client) lookupDomain(ctx context.Context, name string) (golibvirt.Domain, error) {
	var d golibvirt.Domain
	if err := checkName("domain", name); err != nil {
		return d, err
	}
	err := c.do(ctx, "look up domain "+name, func() (err error) {
		d, err = c.lv.DomainLookupByName(name)
		return notFound(err, "domain", name)
	})
	return d, err
}

// StartDomain starts a defined domain, its CPUs paused when paused is set.
func (c *Client) StartDomain(ctx context.Context, name string, paused bool) error {
	d, err := c.lookupDomain(ctx, name)
	if err != nil {
		return err
	}
	var flags uint32
	if paused {
		flags = uint32(golibvirt.DomainStartPaused)
	}
	return c.do(ctx, "start domain "+name, func() error {
		_, err := c.lv.DomainCreateWithFlags(d, flags)
		return err
	})
}

// ResumeDomain runs a paused domain's CPUs.
func (c *Client) ResumeDomain(ctx context.Context, name string) error {
	d, err := c.lookupDomain(ctx, name)
	if err != nil {
		return err
	}
	return c.do(ctx, "resume domain "+name, func() error { return c.lv.DomainResume(d) })
}

// State is a domain's state (StateRunning, …); an error wrapping ErrNotFound when
// there is no such domain.
func (c *Client) State(ctx context.Context, name string) (string, error) {
	d, err := c.lookupDomain(ctx, name)
	if err != nil {
		return "", err
	}
	var st int32
	err = c.do(ctx, "state of domain "+name, func() (err error) {
		st, _, err = c.lv.DomainGetState(d, 0)
		return notFound(err, "domain", name)
	})
	if err != nil {
		return "", err
	}
	switch golibvirt.DomainState(st) {
	case golibvirt.DomainRunning:
		return StateRunning, nil
	case golibvirt.DomainPaused:
		return StatePaused, nil
	case golibvirt.DomainShutoff:
		return StateShutoff, nil
	}
	return StateOther, nil
}

// DestroyDomain stops a domain at once (power off); a missing or stopped domain is no
// error.
func (c *Client) DestroyDomain(ctx context.Context, name string) error {
	d, err := c.lookupDomain(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	err = c.do(ctx, "destroy domain "+name, func() error {
		err := c.lv.DomainDestroyFlags(d, 0)
		if errCode(err) == golibvirt.ErrOperationInvalid { // not running
			return nil
		}
		return notFound(err, "domain", name)
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// UndefineDomain removes a domain's definition, its UEFI variables, managed save and
// snapshot metadata included; a missing domain is no error. It must be stopped.
func (c *Client) UndefineDomain(ctx context.Context, name string) error {
	d, err := c.lookupDomain(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	flags := golibvirt.DomainUndefineNvram | golibvirt.DomainUndefineManagedSave |
		golibvirt.DomainUndefineSnapshotsMetadata | golibvirt.DomainUndefineCheckpointsMetadata
	err = c.do(ctx, "undefine domain "+name, func() error { return notFound(c.lv.DomainUndefineFlags(d, flags), "domain", name) })
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err == nil {
		c.log.Info("undefined a domain", "domain", name)
	}
	return err
}

// Domains lists the names of all domains, running or not.
func (c *Client) Domains(ctx context.Context) ([]string, error) {
	var names []string
	err := c.do(ctx, "list domains", func() error {
		ds, _, err := c.lv.ConnectListAllDomains(1, 0)
		for _, d := range ds {
			names = append(names, d.Name)
		}
		return err
	})
	return names, err
}

// DomainInfo is what Lifeboat reads of a defined domain.
type DomainInfo struct {
	Name             string
	Type             string
	Boot             string    // bios or uefi
	Disks            []DiskRef // its disks (device disk), in order; Pool and Volume resolved when libvirt knows them
	Networks         []string  // libvirt networks its interfaces use
	AllowLaunch      bool      // <lifeboat:allow-launch>true</lifeboat:allow-launch> in its metadata
	RecoveryInstance string    // set on domains Lifeboat made
}

// Domain reads a domain's definition (the persistent one).
func (c *Client) Domain(ctx context.Context, name string) (DomainInfo, error) {
	d, err := c.lookupDomain(ctx, name)
	if err != nil {
		return DomainInfo{}, err
	}
	var x string
	err = c.do(ctx, "read domain "+name, func() (err error) {
		x, err = c.lv.DomainGetXMLDesc(d, golibvirt.DomainXMLInactive)
		return err
	})
	if err != nil {
		return DomainInfo{}, err
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(x); err != nil {
		return DomainInfo{}, fmt.Errorf("domain %s: its XML: %w", name, err)
	}
	info := DomainInfo{Name: name, Type: dx.Type, Boot: BootBIOS}
	if dx.OS != nil && (dx.OS.Firmware == "efi" || (dx.OS.Loader != nil && dx.OS.Loader.Type == "pflash")) {
		info.Boot = BootUEFI
	}
	if dx.Metadata != nil {
		info.AllowLaunch, info.RecoveryInstance = parseMetadata(dx.Metadata.XML)
	}
	if dx.Devices != nil {
		for _, i := range dx.Devices.Interfaces {
			if i.Source != nil && i.Source.Network != nil {
				info.Networks = append(info.Networks, i.Source.Network.Network)
			}
		}
		info.Disks, err = c.domainDisks(ctx, dx.Devices.Disks)
	}
	return info, err
}

// domainDisks resolves a domain's disks to pool volumes where libvirt knows them.
func (c *Client) domainDisks(ctx context.Context, disks []libvirtxml.DomainDisk) ([]DiskRef, error) {
	var out []DiskRef
	for _, dd := range disks {
		if dd.Device != "" && dd.Device != "disk" || dd.Source == nil {
			continue
		}
		ref := DiskRef{ReadOnly: dd.ReadOnly != nil}
		switch {
		case dd.Source.Volume != nil:
			ref.Pool, ref.Volume = dd.Source.Volume.Pool, dd.Source.Volume.Volume
		case dd.Source.File != nil:
			ref.Path = dd.Source.File.File
		case dd.Source.Block != nil:
			ref.Path = dd.Source.Block.Dev
		}
		if ref.Volume == "" && ref.Path != "" {
			err := c.do(ctx, "find the volume of "+ref.Path, func() error {
				v, err := c.lv.StorageVolLookupByPath(ref.Path)
				if err == nil {
					ref.Pool, ref.Volume = v.Pool, v.Name
				}
				return nil // a disk outside every pool stays a path
			})
			if err != nil {
				return nil, err
			}
		}
		out = append(out, ref)
	}
	return out, nil
}

// parseMetadata finds Lifeboat's elements in a domain's <metadata> content.
func parseMetadata(inner string) (allow bool, recovery string) {
	dec := xml.NewDecoder(io.LimitReader(strings.NewReader(inner), 1<<20))
	var path []xml.Name
	for {
		tok, err := dec.Token()
		if err != nil {
			return allow, recovery
		}
		switch t := tok.(type) {
		case xml.StartElement:
			path = append(path, t.Name)
		case xml.EndElement:
			if len(path) > 0 {
				path = path[:len(path)-1]
			}
		case xml.CharData:
			if len(path) == 0 || path[len(path)-1].Space != MetadataNS {
				continue
			}
			v := strings.TrimSpace(string(t))
			switch path[len(path)-1].Local {
			case "allow-launch":
				allow = allow || v == "true"
			case "recovery-instance":
				recovery = v
			}
		}
	}
}

// IsolateLive sets the link of each network interface of a started domain down, on
// the running domain only (its definition stays as its owner made it): a domain
// started paused and isolated before its CPUs run reaches nothing. It returns the
// number of interfaces cut.
func (c *Client) IsolateLive(ctx context.Context, name string) (int, error) {
	d, err := c.lookupDomain(ctx, name)
	if err != nil {
		return 0, err
	}
	var x string
	err = c.do(ctx, "read domain "+name, func() (err error) {
		x, err = c.lv.DomainGetXMLDesc(d, 0)
		return err
	})
	if err != nil {
		return 0, err
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(x); err != nil {
		return 0, fmt.Errorf("domain %s: its XML: %w", name, err)
	}
	if dx.Devices == nil {
		return 0, nil
	}
	for i := range dx.Devices.Interfaces {
		iface := dx.Devices.Interfaces[i]
		iface.Link = &libvirtxml.DomainInterfaceLink{State: "down"}
		ix, err := iface.Marshal()
		if err != nil {
			return i, err
		}
		err = c.do(ctx, "cut the network of domain "+name, func() error {
			return c.lv.DomainUpdateDeviceFlags(d, ix, golibvirt.DomainDeviceModifyLive)
		})
		if err != nil {
			return i, err
		}
	}
	return len(dx.Devices.Interfaces), nil
}
