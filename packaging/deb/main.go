// Command deb builds Lifeboat's Debian package:
//
//	go run ./packaging/deb -version 0.1.0 [-arch amd64] [-out dist]
//
// writes dist/lifeboat_0.1.0_amd64.deb and prints its path. The package holds a static
// /usr/bin/lifeboat (built here with CGO_ENABLED=0 and the version linked in, unless
// -binary names one), the systemd units of the control plane, the replicator and the
// agent (package units) in /lib/systemd/system, default settings in
// /etc/lifeboat/server.env and replicator.env (conffiles, mode 0600), and maintainer
// scripts (files/) that create the user lifeboat and /var/lib/lifeboat (mode 0700) and
// start nothing on a first install. It is made with nfpm
// (github.com/goreleaser/nfpm/v2) as a library, so building it needs nothing but Go;
// SOURCE_DATE_EPOCH, when set, is the time of every file in it.
package main

import (
	"context"
	"debug/elf"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"

	"github.com/lifeboat-dr/lifeboat/internal/units"
)

// Where the package installs things.
const (
	binaryPath = "/usr/bin/lifeboat"
	unitDir    = "/lib/systemd/system"
	configDir  = "/etc/lifeboat"
	docDir     = "/usr/share/doc/lifeboat"
)

// versionSymbol is the variable -X sets to the package's version (internal/cli/version.go).
const versionSymbol = "github.com/lifeboat-dr/lifeboat/internal/cli.version"

const description = `Self-hosted disaster recovery for Linux servers
Lifeboat replicates the block devices of Linux servers continuously to
replication servers, keeps crash- and filesystem-consistent point-in-time
snapshots in a deduplicated, compressed, encrypted staging store, and launches
recovery machines from any of them as QEMU VMs, for a drill or a real failover,
then fails back.

One binary, /usr/bin/lifeboat, plays every role: the control plane
(lifeboat-server.service), replication servers (lifeboat-replicator.service)
and the agent of each protected server (lifeboat agent install). No service is
started on installation: configure them in /etc/lifeboat first. A protected
server needs no QEMU: install the package there with --no-install-recommends.`

// assets are the settings files and maintainer scripts.
//
//go:embed files
var assets embed.FS

// semver is a release version: what -version takes.
var semver = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$`)

// elfMachine is the ELF machine of an architecture the package is built for, or 0.
func elfMachine(arch string) elf.Machine {
	switch arch {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	}
	return 0
}

type options struct {
	version    string // a release version (semver); the .deb's is the same with ~ before a pre-release
	arch       string // GOARCH: amd64 or arm64
	out        string // directory the .deb is written to
	binary     string // a lifeboat binary to package instead of building one
	maintainer string
	stderr     io.Writer // go build's output
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the command: exit status 0, 1 when building failed, 2 for a bad command line.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o := options{stderr: stderr}
	fl := flag.NewFlagSet("deb", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./packaging/deb -version X.Y.Z [-arch amd64|arm64] [-out DIR] [-binary FILE]")
		fl.PrintDefaults()
	}
	fl.StringVar(&o.version, "version", "", "version of the package and the binary: X.Y.Z or X.Y.Z-PRERELEASE (required)")
	fl.StringVar(&o.arch, "arch", runtime.GOARCH, "architecture, as GOARCH: amd64 or arm64")
	fl.StringVar(&o.out, "out", "dist", "directory to write the .deb to")
	fl.StringVar(&o.binary, "binary", "", "package this static lifeboat binary instead of building one (its version is not checked)")
	fl.StringVar(&o.maintainer, "maintainer", "Lifeboat maintainers <lifeboat-dr@users.noreply.github.com>", "the package's Maintainer field")
	if err := fl.Parse(args); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil {
		return 2
	}
	o.version = strings.TrimPrefix(o.version, "v")
	var usage error
	switch {
	case fl.NArg() > 0:
		usage = fmt.Errorf("unexpected arguments %q: every setting is a flag", fl.Args())
	case o.version == "":
		usage = errors.New("give the version with -version, e.g. -version 0.1.0")
	case !semver.MatchString(o.version):
		usage = fmt.Errorf("-version %q is not a release version: give X.Y.Z or X.Y.Z-PRERELEASE, e.g. 0.1.0 or 0.2.0-rc.1", o.version)
	case elfMachine(o.arch) == 0:
		usage = fmt.Errorf("-arch %q is not supported: give amd64 or arm64", o.arch)
	}
	if usage != nil {
		fmt.Fprintf(stderr, "deb: %s\n", usage)
		return 2
	}
	path, err := build(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "deb: %s\n", err)
		return 1
	}
	fmt.Fprintln(stdout, path)
	return 0
}

// build makes the .deb and returns its path.
func build(ctx context.Context, o options) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	work, err := os.MkdirTemp("", "lifeboat-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)

	binary := o.binary
	if binary == "" {
		if binary, err = buildBinary(ctx, o, root, work); err != nil {
			return "", err
		}
	}
	if err := checkBinary(binary, o.arch); err != nil {
		return "", err
	}
	contents, err := stage(work, root, binary)
	if err != nil {
		return "", err
	}
	script := func(name string) string { return filepath.Join(work, name) }
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:            "lifeboat",
		Arch:            o.arch,
		Platform:        "linux",
		Version:         o.version,
		Section:         "admin",
		Priority:        "optional",
		Maintainer:      o.maintainer,
		Homepage:        "https://github.com/lifeboat-dr/lifeboat",
		Description:     description,
		DisableGlobbing: true,
		Overridables: nfpm.Overridables{
			// useradd and usermod (postinst).
			Depends: []string{"passwd"},
			// What the control plane runs for drills and recoveries: QEMU, qemu-img,
			// debugfs and e2fsck (conversion), xorriso (cloud-init seeds), OVMF (UEFI
			// servers). A protected server needs none of them.
			Recommends: []string{"qemu-system-x86", "qemu-utils", "e2fsprogs", "xorriso", "ovmf"},
			Suggests:   []string{"postgresql"},
			Contents:   contents,
			Scripts:    nfpm.Scripts{PostInstall: script("postinst"), PreRemove: script("prerm"), PostRemove: script("postrm")},
			Deb:        nfpm.Deb{Compression: "xz"},
		},
	})
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("the package's contents: %w", err)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(o.out, deb.Default.ConventionalFileName(info))
	f, err := os.CreateTemp(o.out, ".lifeboat-*.deb")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name()) // after the rename, there is nothing left to remove
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		return "", fmt.Errorf("write the package: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return path, os.Rename(f.Name(), path)
}

// moduleRoot is the lifeboat repository's top directory, from go env GOMOD.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w (is Go installed?)", err)
	}
	gomod := strings.TrimSpace(string(out))
	b, err := os.ReadFile(gomod)
	if err != nil || !strings.HasPrefix(string(b), "module github.com/lifeboat-dr/lifeboat\n") {
		return "", fmt.Errorf("run this inside the lifeboat repository (go env GOMOD says %q)", gomod)
	}
	return filepath.Dir(gomod), nil
}

// buildBinary builds a static lifeboat for o.arch with o.version linked in.
func buildBinary(ctx context.Context, o options, root, dir string) (string, error) {
	out := filepath.Join(dir, "lifeboat")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X "+versionSymbol+"="+o.version,
		"-o", out, "./cmd/lifeboat")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.arch)
	cmd.Stdout, cmd.Stderr = o.stderr, o.stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/lifeboat for linux/%s failed: %w", o.arch, err)
	}
	return out, nil
}

// checkBinary refuses a binary that is not a static ELF executable for arch: the
// package promises one that runs on any Debian, without a C library.
func checkBinary(path, arch string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not a Linux executable: %w", path, err)
	}
	defer f.Close()
	if f.Machine != elfMachine(arch) {
		return fmt.Errorf("%s is built for %s, not %s", path, f.Machine, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is linked dynamically (it names an ELF interpreter): build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}

// stage writes the files the package holds into dir and returns its contents.
func stage(dir, root, binary string) (files.Contents, error) {
	file := func(src, dst string, mode os.FileMode) *files.Content {
		return &files.Content{Source: src, Destination: dst, FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode}}
	}
	contents := files.Contents{
		file(binary, binaryPath, 0o755),
		{Destination: configDir, Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: 0o755}},
		file(filepath.Join(root, "README.md"), docDir+"/README.md", 0o644),
	}
	for _, name := range units.Names() {
		b, err := units.Render(name, units.Params{Binary: binaryPath, AgentConfig: configDir + "/agent.yaml"})
		if err != nil {
			return nil, err
		}
		src := filepath.Join(dir, name)
		if err := os.WriteFile(src, b, 0o644); err != nil {
			return nil, err
		}
		contents = append(contents, file(src, unitDir+"/"+name, 0o644))
	}
	for _, name := range []string{"server.env", "replicator.env", "postinst", "prerm", "postrm"} {
		b, err := assets.ReadFile("files/" + name)
		if err != nil {
			return nil, err
		}
		src := filepath.Join(dir, name)
		if err := os.WriteFile(src, b, 0o600); err != nil {
			return nil, err
		}
		if strings.HasSuffix(name, ".env") {
			// Settings that may hold secrets: root's only (systemd reads them as root).
			c := file(src, configDir+"/"+name, 0o600)
			c.Type = files.TypeConfigNoReplace
			contents = append(contents, c)
		}
	}
	// A copyright file, once the repository has a licence.
	if _, err := os.Stat(filepath.Join(root, "LICENSE")); err == nil {
		contents = append(contents, file(filepath.Join(root, "LICENSE"), docDir+"/copyright", 0o644))
	}
	return contents, nil
}
