// Package launch holds the launch providers: what turns a recovery's PIT into a machine.
// The qemu provider runs the recovered server as a QEMU VM on the control plane's host;
// the image provider writes the disks where it is told and stops there (for an outside
// orchestrator); the existing-instance provider writes into the disks of a registered,
// stopped, tagged instance only the blocks that differ, then starts it.
//
// They share one interface, so the job runner (package recovery) treats them alike:
// Plan checks a launch and says where each volume goes before any data moves (a refusal
// names its reason); the runner materializes the PIT into those disks and converts them;
// Launch boots (or hands over) the result; Adopt finds an instance a launch left behind
// when the control plane restarted; State and Terminate serve the recovery instance
// afterwards.
package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// WriteMode says how a PIT's volume is written to its disk.
type WriteMode int

// Write modes.
const (
	// WriteFresh makes a new sparse file: zero blocks are holes.
	WriteFresh WriteMode = iota
	// WriteDevice writes every block (zeros too) into a block device or a file whose
	// content is unknown.
	WriteDevice
	// WriteDiffering reads the disk first and writes only the blocks that differ from
	// the PIT (launch into an existing instance).
	WriteDiffering
	// WriteOverlay writes nothing: the disk is a qcow2 overlay over the PIT's volume
	// served from the staging store (instant launch), filled by Hydrate after boot.
	WriteOverlay
)

func (m WriteMode) String() string {
	switch m {
	case WriteFresh:
		return "fresh sparse file"
	case WriteDevice:
		return "every block"
	case WriteDiffering:
		return "only differing blocks"
	case WriteOverlay:
		return "overlay over the staging store (instant)"
	}
	return fmt.Sprintf("WriteMode(%d)", int(m))
}

// Volume is one volume of the PIT being launched.
type Volume struct {
	Name      string
	SizeBytes int64
}

// Request is one launch: a recovery instance of a source server from a PIT.
type Request struct {
	RecoveryInstanceID string
	SourceServer       api.SourceServer
	Volumes            []Volume // the PIT's volumes, boot volume first
	Settings           api.LaunchSettings
	Drill              bool
	// Isolated cuts the instance off the network (a drill, unless asked otherwise):
	// it reaches nothing, the source included; port forwards still reach it.
	Isolated bool
	// Dir is the recovery instance's own directory (materialized disks, seed, kernel,
	// VM state). Terminate removes what the launch made there.
	Dir string
	// Target is the instance to launch into (existing-instance).
	Target *api.Instance
}

// Disk is where one volume is written.
type Disk struct {
	Volume    string
	SizeBytes int64
	Path      string    // a raw image or a block device: materialization and conversion work on it
	Mode      WriteMode //
	Format    string    // what the launch makes of it: raw, or qcow2 (converted by Launch)
}

// Plan is where a launch writes, decided before any data moves.
type Plan struct {
	Disks []Disk
	// Convert says whether the disks get the recovery's conversion (hostname, network,
	// agent) before launch.
	Convert bool
	// Network is the network the instance gets, for conversion: nil leaves the
	// server's settings as they are.
	Network *GuestNetwork
}

// GuestNetwork is the address the recovered server must configure on its first NIC.
type GuestNetwork struct {
	DHCP    bool
	Address string // CIDR
	Gateway string
	DNS     []string
}

// Extras are made between materialization and launch.
type Extras struct {
	Seed string // a NoCloud seed image to attach read-only, if any
}

// Launched is what a launch produced.
type Launched struct {
	Handle  api.ProviderHandle
	State   string // api.Instance* state
	Address string // where to reach it ("" when nothing can)
	Ports   []api.PortForward
	// Note says what the launch did that the log should show (blocks written into an
	// existing instance's disks, say).
	Note string
}

// Provider is a launch provider.
type Provider interface {
	// Name is the provider's launch-settings name.
	Name() string
	// Plan checks that the launch can happen and says where each volume goes. A
	// refusal is a *Refusal naming the reason.
	Plan(ctx context.Context, req Request) (Plan, error)
	// Launch starts (or hands over) the instance from the planned disks, once they hold
	// the PIT and its conversion.
	Launch(ctx context.Context, req Request, plan Plan, extras Extras) (Launched, error)
	// Adopt finds the instance an interrupted Launch of this request left running
	// (after a control plane restart); ErrNotRunning when there is none.
	Adopt(ctx context.Context, req Request, plan Plan) (Launched, error)
	// State is a launched instance's state now.
	State(ctx context.Context, h api.ProviderHandle) (string, error)
	// Terminate stops the instance and removes what its launch created (the recovery
	// instance's directory, disk images it wrote elsewhere), but never the disks of an
	// existing instance nor block devices. Terminating twice is harmless.
	Terminate(ctx context.Context, h api.ProviderHandle) error
}

// Resumer is a provider whose instances can be launched stopped and started later.
type Resumer interface {
	Resume(ctx context.Context, h api.ProviderHandle) error
}

// ErrNotRunning says no instance runs where a launch would have left it.
var ErrNotRunning = errors.New("no instance is running")

// Refusal is a launch refused before anything was written, with the reason.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

func refuse(format string, args ...any) error { return &Refusal{Reason: fmt.Sprintf(format, args...)} }

// Options configure the providers.
type Options struct {
	// QEMUBinary is the QEMU system emulator (default qemu-system-x86_64 on PATH).
	QEMUBinary string
	// Accel is the QEMU accelerator: tcg (default: works everywhere) or kvm.
	Accel string
	// InstanceDir holds the state of existing instances' VMs (InstanceDir/<id>/).
	InstanceDir string
	// Host names this control plane host in provider handles.
	Host string
	// HydrationBytesPerSecond caps each disk's copy of an instant launch (0: none).
	HydrationBytesPerSecond int64
	Logger                  *slog.Logger
}

// Providers returns the providers by name.
func Providers(o Options) map[string]Provider {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	q := &QEMU{opts: o}
	return map[string]Provider{
		api.ProviderQEMU:             q,
		api.ProviderImage:            &Image{opts: o},
		api.ProviderExistingInstance: &Existing{qemu: q},
	}
}

// diskSize returns the size of a file or block device.
func diskSize(path string) (int64, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, nil, err
	}
	if fi.Mode().IsRegular() {
		return fi.Size(), fi, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fi, err
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	return n, fi, err
}

// isQcow2 reports whether a file starts with the qcow2 magic.
func isQcow2(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, _ = f.ReadAt(magic, 0)
	return string(magic) == "QFI\xfb"
}

// finishDisks turns planned raw disks into their launch format: qcow2 ones are
// converted with qemu-img (the raw image is removed afterwards). It returns the paths
// to launch with.
func finishDisks(ctx context.Context, disks []Disk) ([]string, error) {
	out := make([]string, len(disks))
	for i, d := range disks {
		out[i] = d.Path
		if d.Format != api.DiskQcow2 || d.Mode == WriteOverlay {
			continue
		}
		qcow := strings.TrimSuffix(d.Path, filepath.Ext(d.Path)) + ".qcow2"
		if err := ToQcow2(ctx, d.Path, qcow); err != nil {
			return nil, err
		}
		if err := os.Remove(d.Path); err != nil {
			return nil, fmt.Errorf("remove the raw image after conversion: %w", err)
		}
		out[i] = qcow
	}
	return out, nil
}

// ToQcow2 converts a raw image to qcow2 with qemu-img (holes stay unallocated).
func ToQcow2(ctx context.Context, raw, qcow string) error {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return errors.New("qcow2 disks need qemu-img, which is not installed on the control plane's host: apt-get install qemu-utils")
	}
	cmd := exec.CommandContext(ctx, bin, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(qcow)
		return fmt.Errorf("convert %s to qcow2: %w: %s", raw, err, strings.TrimSpace(string(out)))
	}
	return nil
}
