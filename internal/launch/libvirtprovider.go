package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch/libvirt"
	"github.com/lifeboat-dr/lifeboat/internal/launch/qemu"
)

// Bounds of the libvirt provider.
const (
	// libvirtPlanTimeout bounds Plan's checks of the host: a host that does not answer
	// fails the launch before anything is made.
	libvirtPlanTimeout = 30 * time.Second
	// maxConsoleLog caps the serial console captured into serial.log.
	maxConsoleLog = 64 << 20
	// defaultKernelCmdline is the command line of a direct kernel boot (bootMode kernel)
	// when neither the settings nor the disk say one.
	defaultKernelCmdline = "root=/dev/vda ro console=ttyS0"
)

// LibvirtSite is a libvirt host recovery instances are launched on.
type LibvirtSite struct {
	Name string
	// URI is the host's libvirt URI: qemu:///system, qemu+tcp://HOST/system,
	// qemu+tls://HOST/system or qemu+ssh://USER@HOST/system.
	URI string
	// Credentials are the PEM bundle the URI's transport needs (see libvirt.ParseCredentials):
	// qemu+tls: the client certificate, its key and the CA; qemu+ssh: the private key and
	// the host's known_hosts line(s).
	Credentials []byte
	// Pool is the storage pool disks are uploaded into (default "default").
	Pool string
}

// Libvirt launches recovery instances as domains of a libvirt host, local or remote,
// with no filesystem shared with the control plane: the runner materializes the PIT
// into raw images in the recovery's directory, and Launch uploads them into the site's
// storage pool through libvirt's stream API, defines the domain (CPUs, memory, disks,
// network, boot mode; direct kernel boot through volumes holding the kernel and initrd)
// and starts it, capturing its serial console into serial.log. Drills and isolated
// launches get a libvirt network of their own with no forward, removed on terminate.
// A launch into an existing instance (req.Target) names a libvirt domain that is shut
// off and carries <lifeboat:allow-launch>true</lifeboat:allow-launch> in its metadata;
// only the blocks that differ are written into its volumes, and terminate stops it but
// keeps it and its volumes. Volumes are raw (sparse in directory pools): the settings'
// diskFormat qcow2 is not applied.
type Libvirt struct {
	site LibvirtSite
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	consoles map[string]context.CancelFunc // domain → stop its console capture
}

// NewLibvirt returns the provider for a libvirt site.
func NewLibvirt(site LibvirtSite, o Options) *Libvirt {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if site.Pool == "" {
		site.Pool = "default"
	}
	return &Libvirt{site: site, opts: o, consoles: map[string]context.CancelFunc{},
		log: o.Logger.With("provider", api.ProviderLibvirt, "site", site.Name)}
}

// Name is "libvirt".
func (l *Libvirt) Name() string { return api.ProviderLibvirt }

// dial connects to the site's host.
func (l *Libvirt) dial(ctx context.Context) (*libvirt.Client, error) {
	return libvirt.Dial(ctx, libvirt.Config{URI: l.site.URI, Credentials: l.site.Credentials, Logger: l.log})
}

// domainName is the domain a recovery instance runs as.
func domainName(req Request) string {
	if req.Target != nil {
		if req.Target.Name != "" {
			return req.Target.Name
		}
		return req.Target.ID
	}
	return "lifeboat-" + req.RecoveryInstanceID
}

// Names of what a launch makes, derived from its domain's name so that Terminate finds
// them from the handle alone.
func diskVolume(domain string, i int) string { return fmt.Sprintf("%s-disk%d.raw", domain, i) }
func seedVolume(domain string) string        { return domain + "-seed.raw" }
func kernelVolume(domain string) string      { return domain + "-kernel" }
func initrdVolume(domain string) string      { return domain + "-initrd" }
func drillNetwork(domain string) string      { return domain + "-isolated" }

// isolated reports whether the launch gets a network of its own.
func isolated(req Request) bool {
	return req.Isolated || req.Settings.Network.Mode == api.NetworkIsolated || req.Settings.Network.Mode == ""
}

// Plan connects to the host and checks the pool, the network and the boot mode (and
// the target domain of a launch into an existing instance), creating nothing: a host
// that does not answer or refuses the credentials is a refusal. It plans one sparse raw
// image per volume in the recovery's directory, uploaded by Launch.
func (l *Libvirt) Plan(ctx context.Context, req Request) (Plan, error) {
	if req.Settings.Instant {
		return Plan{}, refuse("libvirt site %s: instant launch is not available on libvirt sites (the host would need to reach the control plane's NBD export): turn it off (settings launch set --instant=false) or recover into a qemu site", l.site.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, libvirtPlanTimeout)
	defer cancel()
	c, err := l.dial(ctx)
	if err != nil {
		return Plan{}, refuse("libvirt site %s: %v", l.site.Name, err)
	}
	defer c.Close()
	pool, err := c.Pool(ctx, l.site.Pool)
	if errors.Is(err, libvirt.ErrNotFound) {
		return Plan{}, refuse("libvirt site %s: storage pool %s does not exist at %s: create it (virsh pool-define-as %s dir --target DIR; virsh pool-build %s; virsh pool-start %s) or set the site's pool",
			l.site.Name, l.site.Pool, c.URI(), l.site.Pool, l.site.Pool, l.site.Pool)
	}
	if err != nil {
		return Plan{}, refuse("libvirt site %s: %v", l.site.Name, err)
	}
	if err := l.checkSettings(ctx, c, req, pool); err != nil {
		return Plan{}, err
	}
	if req.Target != nil {
		err = l.checkTarget(ctx, c, req)
	} else {
		err = l.checkFree(ctx, c, req)
	}
	if err != nil {
		return Plan{}, err
	}
	p := Plan{Convert: true, Network: guestNetwork(req.Settings)}
	for i, v := range req.Volumes {
		p.Disks = append(p.Disks, Disk{Volume: v.Name, SizeBytes: v.SizeBytes, Mode: WriteFresh,
			Path: filepath.Join(req.Dir, fmt.Sprintf("disk%d.raw", i)), Format: api.DiskRaw})
	}
	return p, nil
}

// guestNetwork is what conversion configures: DHCP from the libvirt network, or the
// static address the settings name.
func guestNetwork(s api.LaunchSettings) *GuestNetwork {
	if s.IP != "" {
		return &GuestNetwork{Address: s.IP}
	}
	return &GuestNetwork{DHCP: true}
}

// checkSettings refuses launch settings the site cannot honour.
func (l *Libvirt) checkSettings(ctx context.Context, c *libvirt.Client, req Request, pool libvirt.PoolInfo) error {
	s := req.Settings
	if len(s.Network.PortForwards) > 0 {
		return refuse("the libvirt provider has no port forwards: reach the instance on its libvirt network or bridge (network mode bridge), or remove the port forwards")
	}
	if s.BootMode == api.BootKernel && !filePool(pool.Type) {
		return refuse("boot mode kernel needs the kernel as a file on the libvirt host, and storage pool %s is of type %s: use a directory pool, or boot mode bios or uefi", pool.Name, pool.Type)
	}
	if req.Target != nil || isolated(req) {
		return nil
	}
	name := "default"
	if s.Network.Mode == api.NetworkBridge {
		if s.Network.Bridge == "" {
			return refuse("network mode bridge names no bridge: set the libvirt network or host bridge to use")
		}
		name = s.Network.Bridge
	}
	active, err := c.NetworkActive(ctx, name)
	switch {
	case errors.Is(err, libvirt.ErrNotFound) && s.Network.Mode == api.NetworkBridge:
		return nil // a host bridge, not a libvirt network
	case errors.Is(err, libvirt.ErrNotFound):
		return refuse("network mode user uses the libvirt network \"default\", which does not exist at %s: define it, or use network mode bridge with a libvirt network or bridge, or isolated", c.URI())
	case err != nil:
		return refuse("libvirt site %s: %v", l.site.Name, err)
	case !active:
		return refuse("libvirt network %s at %s is not running: start it (virsh net-start %s)", name, c.URI(), name)
	}
	return nil
}

// checkFree refuses a new domain's name when a domain that is not this recovery's has it.
func (l *Libvirt) checkFree(ctx context.Context, c *libvirt.Client, req Request) error {
	name := domainName(req)
	info, err := c.Domain(ctx, name)
	switch {
	case errors.Is(err, libvirt.ErrNotFound):
		return nil
	case err != nil:
		return refuse("libvirt site %s: %v", l.site.Name, err)
	case info.RecoveryInstance != req.RecoveryInstanceID:
		return refuse("a libvirt domain named %s exists at %s and is not recovery instance %s's: rename or remove it", name, c.URI(), req.RecoveryInstanceID)
	}
	return nil
}

func filePool(typ string) bool { return typ == "dir" || typ == "fs" || typ == "netfs" }

// checkTarget refuses a launch into a domain that is not there, runs, is not tagged
// or whose volumes cannot take the PIT's.
func (l *Libvirt) checkTarget(ctx context.Context, c *libvirt.Client, req Request) error {
	name := domainName(req)
	info, err := c.Domain(ctx, name)
	if errors.Is(err, libvirt.ErrNotFound) {
		return refuse("libvirt domain %s does not exist at %s", name, c.URI())
	}
	if err != nil {
		return refuse("libvirt site %s: %v", l.site.Name, err)
	}
	if !info.AllowLaunch {
		return refuse("libvirt domain %s does not allow launching into it: add <lifeboat:allow-launch xmlns:lifeboat=\"%s\">true</lifeboat:allow-launch> to its <metadata> (virsh metadata %s %s --key lifeboat --set '<allow-launch>true</allow-launch>' --config)",
			name, libvirt.MetadataNS, name, libvirt.MetadataNS)
	}
	st, err := c.State(ctx, name)
	if err != nil {
		return refuse("libvirt site %s: %v", l.site.Name, err)
	}
	if st != libvirt.StateShutoff {
		return refuse("libvirt domain %s is %s, not shut off: shut it down first (virsh shutdown %s)", name, st, name)
	}
	if req.Settings.BootMode != api.BootKernel && info.Boot != req.Settings.BootMode {
		return refuse("libvirt domain %s boots %s and the server's launch settings say %s: the boot modes must match", name, info.Boot, req.Settings.BootMode)
	}
	return l.checkTargetDisks(ctx, c, name, info, req.Volumes)
}

// checkTargetDisks needs a writable pool volume at least as large as each PIT volume.
func (l *Libvirt) checkTargetDisks(ctx context.Context, c *libvirt.Client, name string, info libvirt.DomainInfo, vols []Volume) error {
	if len(info.Disks) < len(vols) {
		return refuse("libvirt domain %s has %d disks and the PIT %d volumes: it needs a disk per volume", name, len(info.Disks), len(vols))
	}
	for i, v := range vols {
		d := info.Disks[i]
		if d.Volume == "" {
			return refuse("disk %s of libvirt domain %s is in no storage pool: Lifeboat writes disks through a pool (virsh pool-define-as for its directory)", d.Path, name)
		}
		if d.ReadOnly {
			return refuse("disk %s/%s of libvirt domain %s is read-only", d.Pool, d.Volume, name)
		}
		vi, err := c.Volume(ctx, d.Pool, d.Volume)
		if err != nil {
			return refuse("disk %s/%s of libvirt domain %s: %v", d.Pool, d.Volume, name, err)
		}
		if vi.CapacityBytes < uint64(v.SizeBytes) {
			return refuse("disk %s/%s of libvirt domain %s holds %d bytes and volume %s needs %d: the domain's disk is too small",
				d.Pool, d.Volume, name, vi.CapacityBytes, v.Name, v.SizeBytes)
		}
	}
	return nil
}

// Launch uploads the disks and starts the domain (or writes into an existing one and
// starts it). What a failed launch made is removed.
func (l *Libvirt) Launch(ctx context.Context, req Request, plan Plan, extras Extras) (Launched, error) {
	c, err := l.dial(ctx)
	if err != nil {
		return Launched{}, err
	}
	defer c.Close()
	if req.Target != nil {
		return l.launchExisting(ctx, c, req, plan)
	}
	name := domainName(req)
	h := api.ProviderHandle{Host: c.URI(), Dir: req.Dir, InstanceID: name, ConsoleLog: filepath.Join(req.Dir, "serial.log")}
	if err := l.launchNew(ctx, c, req, plan, extras, &h); err != nil {
		if errors.Is(err, errForeignDomain) {
			return Launched{}, err
		}
		tctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if terr := l.teardown(tctx, c, h, false); terr != nil {
			l.log.Warn("cleaning up after a failed launch", "domain", name, "err", terr)
		}
		return Launched{}, err
	}
	return l.launched(ctx, c, req, h)
}

// launchNew uploads the disks (and seed, kernel, initrd), makes the network, defines
// the domain and starts it. h.Disks grows as volumes are made, for the cleanup.
func (l *Libvirt) launchNew(ctx context.Context, c *libvirt.Client, req Request, plan Plan, extras Extras, h *api.ProviderHandle) error {
	if _, err := c.EnsurePool(ctx, l.site.Pool, ""); err != nil {
		return err
	}
	name := h.InstanceID
	if err := l.removeStale(ctx, c, req, name); err != nil {
		return err
	}
	spec := libvirt.DomainSpec{Name: name, Type: l.domainType(), CPUs: orInt(req.Settings.CPUs, 1),
		MemoryMiB: orInt(req.Settings.MemoryMiB, 1024), Boot: req.Settings.BootMode, RecoveryInstance: req.RecoveryInstanceID}
	if spec.Boot == api.BootKernel {
		spec.Boot = libvirt.BootBIOS
	}
	for i, d := range plan.Disks {
		vol := diskVolume(name, i)
		h.Disks = append(h.Disks, l.site.Pool+"/"+vol)
		if err := l.upload(ctx, c, d.Path, vol); err != nil {
			return err
		}
		spec.Disks = append(spec.Disks, libvirt.DiskRef{Pool: l.site.Pool, Volume: vol})
	}
	if extras.Seed != "" {
		if err := l.upload(ctx, c, extras.Seed, seedVolume(name)); err != nil {
			return err
		}
		spec.Disks = append(spec.Disks, libvirt.DiskRef{Pool: l.site.Pool, Volume: seedVolume(name), ReadOnly: true})
	}
	if req.Settings.BootMode == api.BootKernel && len(plan.Disks) > 0 {
		if err := l.kernelBoot(ctx, c, req, plan.Disks[0].Path, &spec); err != nil {
			return err
		}
	}
	nic, err := l.nic(ctx, c, req, name)
	if err != nil {
		return err
	}
	spec.NIC = nic
	if err := c.DefineDomain(ctx, spec); err != nil {
		return err
	}
	if err := c.StartDomain(ctx, name, !req.Settings.StartAfterLaunch); err != nil {
		return err
	}
	l.captureConsole(c, name, h.ConsoleLog)
	return nil
}

// errForeignDomain is a domain of the launch's name that is not the launch's.
var errForeignDomain = errors.New("not this recovery's")

// removeStale removes the domain an interrupted launch of this recovery defined, and
// refuses to touch a domain of that name that is not this recovery's.
func (l *Libvirt) removeStale(ctx context.Context, c *libvirt.Client, req Request, name string) error {
	info, err := c.Domain(ctx, name)
	switch {
	case errors.Is(err, libvirt.ErrNotFound):
		return nil
	case err != nil:
		return err
	case info.RecoveryInstance != req.RecoveryInstanceID:
		return fmt.Errorf("a libvirt domain named %s exists at %s and is %w", name, c.URI(), errForeignDomain)
	}
	if err := c.DestroyDomain(ctx, name); err != nil {
		return err
	}
	return c.UndefineDomain(ctx, name)
}

func orInt(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}

func (l *Libvirt) domainType() string {
	if l.opts.Accel == "kvm" {
		return libvirt.DomainTypeKVM
	}
	return libvirt.DomainTypeQEMU
}

// upload puts a local image into a new volume of the site's pool, replacing one of
// that name an interrupted launch left.
func (l *Libvirt) upload(ctx context.Context, c *libvirt.Client, path, vol string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := c.DeleteVolume(ctx, l.site.Pool, vol); err != nil {
		return err
	}
	start, next := time.Now(), 0.1
	err = c.UploadVolume(ctx, libvirt.UploadSpec{Pool: l.site.Pool, Name: vol, Source: f, Size: fi.Size(),
		Progress: func(done, total int64) {
			if total > 0 && float64(done) >= next*float64(total) {
				l.log.Debug("uploading", "volume", vol, "done", done, "total", total)
				next += 0.1
			}
		}})
	if err != nil {
		return err
	}
	l.log.Info("uploaded a disk", "volume", l.site.Pool+"/"+vol, "bytes", fi.Size(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// kernelBoot extracts the kernel and initrd from the boot disk and uploads them into
// volumes whose paths on the host the domain boots.
func (l *Libvirt) kernelBoot(ctx context.Context, c *libvirt.Client, req Request, boot string, spec *libvirt.DomainSpec) error {
	b, err := qemu.ExtractBoot(ctx, boot, filepath.Join(req.Dir, "boot"))
	if err != nil {
		return err
	}
	for _, k := range []struct {
		file, vol string
		path      *string
	}{{b.Kernel, kernelVolume(spec.Name), &spec.Kernel}, {b.Initrd, initrdVolume(spec.Name), &spec.Initrd}} {
		if k.file == "" {
			continue
		}
		if err := l.upload(ctx, c, k.file, k.vol); err != nil {
			return err
		}
		vi, err := c.Volume(ctx, l.site.Pool, k.vol)
		if err != nil {
			return err
		}
		*k.path = vi.Path
	}
	spec.Cmdline = b.Cmdline
	if req.Settings.KernelArgs != "" {
		spec.Cmdline = req.Settings.KernelArgs
	}
	if spec.Cmdline == "" {
		spec.Cmdline = defaultKernelCmdline
	}
	return nil
}

// nic is the domain's network: a fresh isolated network (drills, isolated mode), the
// libvirt network or host bridge of bridge mode, or the "default" network (user mode).
func (l *Libvirt) nic(ctx context.Context, c *libvirt.Client, req Request, domain string) (*libvirt.NIC, error) {
	if isolated(req) {
		n := drillNetwork(domain)
		if err := c.CreateIsolatedNetwork(ctx, n); err != nil {
			return nil, err
		}
		return &libvirt.NIC{Network: n}, nil
	}
	if req.Settings.Network.Mode != api.NetworkBridge {
		return &libvirt.NIC{Network: "default"}, nil
	}
	b := req.Settings.Network.Bridge
	if _, err := c.NetworkActive(ctx, b); errors.Is(err, libvirt.ErrNotFound) {
		return &libvirt.NIC{Bridge: b}, nil
	} else if err != nil {
		return nil, err
	}
	return &libvirt.NIC{Network: b}, nil
}

// launchExisting writes only the differing blocks into the target domain's volumes
// and starts it. The handle names no disks: terminate keeps them.
func (l *Libvirt) launchExisting(ctx context.Context, c *libvirt.Client, req Request, plan Plan) (Launched, error) {
	if err := l.checkTarget(ctx, c, req); err != nil {
		return Launched{}, err
	}
	name := domainName(req)
	info, err := c.Domain(ctx, name)
	if err != nil {
		return Launched{}, err
	}
	var notes []string
	for i, d := range plan.Disks {
		note, err := l.writeDiffering(ctx, c, d.Path, info.Disks[i])
		if err != nil {
			return Launched{}, err
		}
		notes = append(notes, note)
	}
	if err := l.startExisting(ctx, c, req, name); err != nil {
		return Launched{}, err
	}
	h := api.ProviderHandle{Host: c.URI(), Dir: req.Dir, InstanceID: name, ConsoleLog: filepath.Join(req.Dir, "serial.log")}
	l.captureConsole(c, name, h.ConsoleLog)
	out, err := l.launched(ctx, c, req, h)
	out.Note = strings.Join(notes, "; ")
	return out, err
}

// startExisting starts the domain launched into. Isolated (a drill), it starts paused,
// its interfaces' links are set down on the running domain only (its definition stays
// its owner's), and then its CPUs run: it never reaches the network it is defined on.
func (l *Libvirt) startExisting(ctx context.Context, c *libvirt.Client, req Request, name string) error {
	iso := isolated(req)
	if err := c.StartDomain(ctx, name, iso || !req.Settings.StartAfterLaunch); err != nil {
		return err
	}
	if !iso {
		return nil
	}
	n, err := c.IsolateLive(ctx, name)
	if err != nil {
		if derr := c.DestroyDomain(ctx, name); derr != nil {
			l.log.Warn("stopping a domain that could not be isolated", "domain", name, "err", derr)
		}
		return fmt.Errorf("isolate libvirt domain %s: %w", name, err)
	}
	l.log.Info("isolated the domain launched into: its links are down", "domain", name, "interfaces", n)
	if req.Settings.StartAfterLaunch {
		return c.ResumeDomain(ctx, name)
	}
	return nil
}

// writeDiffering writes into a domain's volume the blocks of a disk image that differ,
// and says how many it wrote.
func (l *Libvirt) writeDiffering(ctx context.Context, c *libvirt.Client, path string, d libvirt.DiskRef) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	st, err := c.WriteDiffering(ctx, d.Pool, d.Volume, f, fi.Size(), nil)
	if err != nil {
		return "", err
	}
	l.log.Info("wrote the differing blocks into an existing domain's disk", "volume", d.Pool+"/"+d.Volume,
		"blocks", st.Blocks, "differing", st.Differing, "bytes", st.BytesWritten)
	return fmt.Sprintf("wrote %d of %d blocks (the ones that differ) into %s/%s", st.Differing, st.Blocks, d.Pool, d.Volume), nil
}

// launched describes the domain.
func (l *Libvirt) launched(ctx context.Context, c *libvirt.Client, req Request, h api.ProviderHandle) (Launched, error) {
	st, err := c.State(ctx, h.InstanceID)
	if err != nil {
		return Launched{}, err
	}
	out := Launched{Handle: h, State: api.InstanceStopped}
	if st == libvirt.StateRunning {
		out.State = api.InstanceRunning
	}
	if req.Settings.IP != "" {
		out.Address, _, _ = strings.Cut(req.Settings.IP, "/")
	}
	return out, nil
}

// captureConsole copies the domain's serial console into the log file in the
// background until the domain stops or Terminate; at most maxConsoleLog bytes.
func (l *Libvirt) captureConsole(c *libvirt.Client, domain, path string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		l.log.Warn("the serial console is not captured", "domain", domain, "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.mu.Lock()
	if old := l.consoles[domain]; old != nil {
		old()
	}
	l.consoles[domain] = cancel
	l.mu.Unlock()
	go func() {
		defer f.Close()
		err := c.CaptureConsole(ctx, domain, &cappedWriter{w: f, left: maxConsoleLog})
		if err != nil && ctx.Err() == nil {
			l.log.Warn("the serial console capture ended", "domain", domain, "err", err)
		}
	}()
}

func (l *Libvirt) stopConsole(domain string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cancel := l.consoles[domain]; cancel != nil {
		cancel()
		delete(l.consoles, domain)
	}
}

// cappedWriter writes up to left bytes and discards the rest.
type cappedWriter struct {
	w    io.Writer
	left int64
}

func (c *cappedWriter) Write(p []byte) (int, error) {
	n := len(p)
	if c.left <= 0 {
		return n, nil
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	k, err := c.w.Write(p)
	c.left -= int64(k)
	if err != nil {
		return k, err
	}
	return n, nil
}

// Adopt finds the domain of an interrupted launch and captures its console again.
func (l *Libvirt) Adopt(ctx context.Context, req Request, _ Plan) (Launched, error) {
	c, err := l.dial(ctx)
	if err != nil {
		return Launched{}, err
	}
	defer c.Close()
	name := domainName(req)
	st, err := c.State(ctx, name)
	if errors.Is(err, libvirt.ErrNotFound) || st == libvirt.StateShutoff {
		return Launched{}, ErrNotRunning
	}
	if err != nil {
		return Launched{}, err
	}
	h := api.ProviderHandle{Host: c.URI(), Dir: req.Dir, InstanceID: name, ConsoleLog: filepath.Join(req.Dir, "serial.log")}
	if req.Target == nil {
		for i := range req.Volumes {
			h.Disks = append(h.Disks, l.site.Pool+"/"+diskVolume(name, i))
		}
	}
	if st == libvirt.StateRunning {
		l.captureConsole(c, name, h.ConsoleLog)
	}
	return l.launched(ctx, c, req, h)
}

// State is the domain's state: RUNNING, or STOPPED (paused, shut off or gone).
func (l *Libvirt) State(ctx context.Context, h api.ProviderHandle) (string, error) {
	if h.InstanceID == "" {
		return api.InstanceStopped, nil
	}
	c, err := l.dial(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	st, err := c.State(ctx, h.InstanceID)
	if errors.Is(err, libvirt.ErrNotFound) {
		return api.InstanceStopped, nil
	}
	if err != nil {
		return "", err
	}
	if st == libvirt.StateRunning {
		return api.InstanceRunning, nil
	}
	return api.InstanceStopped, nil
}

// Resume runs a domain launched paused (or shut off since).
func (l *Libvirt) Resume(ctx context.Context, h api.ProviderHandle) error {
	c, err := l.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.State(ctx, h.InstanceID)
	if errors.Is(err, libvirt.ErrNotFound) {
		return refuse("libvirt domain %s is gone: terminate the instance and launch again", h.InstanceID)
	}
	switch {
	case err != nil:
		return err
	case st == libvirt.StatePaused:
		err = c.ResumeDomain(ctx, h.InstanceID)
	case st == libvirt.StateShutoff:
		err = l.restart(ctx, c, h.InstanceID)
	}
	if err == nil && st != libvirt.StateRunning {
		l.captureConsole(c, h.InstanceID, h.ConsoleLog)
	}
	return err
}

// restart starts a shut-off domain Lifeboat made (its definition holds the launch's
// network); a domain launched into may have been isolated only while it ran, so it is
// refused.
func (l *Libvirt) restart(ctx context.Context, c *libvirt.Client, name string) error {
	info, err := c.Domain(ctx, name)
	if err != nil {
		return err
	}
	if info.RecoveryInstance == "" {
		return refuse("libvirt domain %s was launched into and is shut off now: launch into it again", name)
	}
	return c.StartDomain(ctx, name, false)
}

// Terminate powers the domain off; a domain Lifeboat made is undefined (with its UEFI
// variables) and its volumes and drill network deleted; an existing domain launched
// into stays, with its disks. The recovery's directory is removed. Terminating twice
// is harmless.
func (l *Libvirt) Terminate(ctx context.Context, h api.ProviderHandle) error {
	if h.InstanceID != "" {
		l.stopConsole(h.InstanceID)
		c, err := l.dial(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := l.teardown(ctx, c, h, true); err != nil {
			return err
		}
	}
	if h.Dir != "" {
		if err := os.RemoveAll(h.Dir); err != nil {
			return fmt.Errorf("remove the recovery instance's files: %w", err)
		}
	}
	return nil
}

// teardown removes the domain (only if Lifeboat made it), its volumes and network.
// checkOwner reads the domain's metadata first; a failed launch's cleanup knows the
// domain is its own.
func (l *Libvirt) teardown(ctx context.Context, c *libvirt.Client, h api.ProviderHandle, checkOwner bool) error {
	name := h.InstanceID
	l.stopConsole(name)
	ours := true
	if checkOwner {
		info, err := c.Domain(ctx, name)
		switch {
		case errors.Is(err, libvirt.ErrNotFound):
		case err != nil:
			return err
		default:
			ours = info.RecoveryInstance != ""
		}
	}
	if err := c.DestroyDomain(ctx, name); err != nil {
		return err
	}
	if !ours {
		return nil // an existing domain launched into: stopped, kept with its disks
	}
	if err := c.UndefineDomain(ctx, name); err != nil {
		return err
	}
	vols := append([]string{}, h.Disks...)
	for _, v := range []string{seedVolume(name), kernelVolume(name), initrdVolume(name)} {
		vols = append(vols, l.site.Pool+"/"+v)
	}
	for _, pv := range vols {
		pool, vol, ok := strings.Cut(pv, "/")
		if !ok {
			continue
		}
		if err := c.DeleteVolume(ctx, pool, vol); err != nil && !errors.Is(err, libvirt.ErrNotFound) {
			return err
		}
	}
	return c.RemoveNetwork(ctx, drillNetwork(name))
}
