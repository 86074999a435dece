// Package rescue makes the failback client's rescue media: a bootable ISO whose init
// brings up a machine's disks and network and runs `lifeboat failback-client` there,
// and the list of disks that client may write a recovery point onto.
package rescue

import (
	"bytes"
	"context"
	"debug/elf"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
)

// The rescue media's init (PID 1) and udhcpc's hook, put into its initramfs.
var (
	//go:embed init.sh
	initScript string
	//go:embed udhcpc.sh
	udhcpcScript string
)

// Files of Debian's isolinux and syslinux-common packages: BIOS boot from a CD, and the
// MBR that makes the ISO bootable from a disk (a USB stick) as well.
const (
	isolinuxBin = "/usr/lib/ISOLINUX/isolinux.bin"
	ldlinuxC32  = "/usr/lib/syslinux/modules/bios/ldlinux.c32"
	isohdpfxBin = "/usr/lib/ISOLINUX/isohdpfx.bin"
)

// ISOOptions says what BuildISO puts on the rescue media.
type ISOOptions struct {
	// Out is the ISO file to write. It is replaced atomically, mode 0600: its kernel
	// command line may hold a token.
	Out string
	// Kernel and Initrd are a Debian kernel and its initrd (default: the newest
	// /boot/vmlinuz-* that has its /boot/initrd.img-*). The initrd provides the
	// kernel's modules.
	Kernel, Initrd string
	// Binary is the lifeboat binary to put on the media, statically linked (default:
	// the running one).
	Binary string
	// Busybox is a statically linked busybox (default /bin/busybox, from Debian's
	// busybox-static): the media's shell and tools.
	Busybox string
	// KernelArgs are more kernel command-line words, such as
	// lifeboat.server=https://10.0.2.2:8443 (see ValidateKernelArgs).
	KernelArgs []string
	// Progress, when set, is told what BuildISO is doing, one step at a time.
	Progress func(step string)
}

// BuildISO writes the rescue media: a hybrid ISO (a CD, or a disk image for a USB stick)
// that boots with BIOS. Everything it needs is checked before anything is written.
func BuildISO(ctx context.Context, o ISOOptions) error {
	o, xorriso, err := prepare(o)
	if err != nil {
		return err
	}
	tree, err := os.MkdirTemp("", "lifeboat-rescue-*") // mode 0700: it may hold a token
	if err != nil {
		return fmt.Errorf("rescue media: %w", err)
	}
	defer os.RemoveAll(tree)
	o.progress("kernel %s, initrd %s", o.Kernel, o.Initrd)
	if err := writeTree(ctx, tree, o); err != nil {
		return fmt.Errorf("rescue media: %w", err)
	}
	o.progress("writing %s with xorriso", o.Out)
	err = atomicfile.Write(ctx, o.Out, 0o600, func(f *os.File) error {
		return runXorriso(ctx, xorriso, tree, f.Name())
	})
	if err != nil {
		return fmt.Errorf("rescue media: %w", err)
	}
	return nil
}

func (o ISOOptions) progress(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(fmt.Sprintf(format, args...))
	}
}

// prepare fills in the defaults and checks the options, the tools and the input files.
// It returns the options with absolute paths, and xorriso's path.
func prepare(o ISOOptions) (ISOOptions, string, error) {
	if o.Out == "" {
		return o, "", errors.New("rescue media: no output file given")
	}
	if err := ValidateKernelArgs(o.KernelArgs); err != nil {
		return o, "", fmt.Errorf("rescue media: %w", err)
	}
	xorriso, err := findTools()
	if err != nil {
		return o, "", fmt.Errorf("rescue media: %w", err)
	}
	if o, err = withDefaults(o); err != nil {
		return o, "", fmt.Errorf("rescue media: %w", err)
	}
	for _, f := range []string{o.Kernel, o.Initrd} {
		if err := checkRegular(f); err != nil {
			return o, "", fmt.Errorf("rescue media: %w", err)
		}
	}
	if err := checkStatic(o.Busybox, "busybox", "install Debian's busybox-static (apt-get install busybox-static) or name a static busybox"); err != nil {
		return o, "", fmt.Errorf("rescue media: %w", err)
	}
	if err := checkStatic(o.Binary, "lifeboat binary", "build a static one with CGO_ENABLED=0 go build ./cmd/lifeboat, and use it"); err != nil {
		return o, "", fmt.Errorf("rescue media: %w", err)
	}
	if o.Out, err = filepath.Abs(o.Out); err != nil {
		return o, "", fmt.Errorf("rescue media: %w", err)
	}
	if st, err := os.Stat(filepath.Dir(o.Out)); err != nil || !st.IsDir() {
		return o, "", fmt.Errorf("rescue media: the directory of %s does not exist", o.Out)
	}
	return o, xorriso, nil
}

// findTools finds xorriso and the isolinux files, and names the Debian packages of
// those that are missing.
func findTools() (string, error) {
	var missing []string
	xorriso, err := exec.LookPath("xorriso")
	if err != nil {
		missing = append(missing, "xorriso (Debian package xorriso)")
	}
	for _, f := range []struct{ path, pkg string }{
		{isolinuxBin, "isolinux"}, {isohdpfxBin, "isolinux"}, {ldlinuxC32, "syslinux-common"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", f.path, f.pkg))
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("missing %s: apt-get install xorriso isolinux syslinux-common", strings.Join(missing, ", "))
	}
	return xorriso, nil
}

// withDefaults fills in the kernel, initrd, lifeboat binary and busybox not given.
func withDefaults(o ISOOptions) (ISOOptions, error) {
	switch {
	case o.Kernel == "" && o.Initrd != "":
		return o, errors.New("an initrd was given without its kernel: name both")
	case o.Kernel == "":
		k, i, err := newestKernel("/boot")
		if err != nil {
			return o, err
		}
		o.Kernel, o.Initrd = k, i
	case o.Initrd == "":
		dir, base := filepath.Split(o.Kernel)
		v, ok := strings.CutPrefix(base, "vmlinuz-")
		if !ok {
			return o, fmt.Errorf("kernel %s was given without its initrd: name both", o.Kernel)
		}
		o.Initrd = filepath.Join(dir, "initrd.img-"+v)
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("find the running lifeboat binary: %w", err)
		}
		o.Binary = exe
	}
	if o.Busybox == "" {
		o.Busybox = "/bin/busybox"
	}
	return o, nil
}

// checkRegular checks that path is a regular file this process can read.
func checkRegular(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// checkStatic checks that path is a statically linked x86-64 Linux executable: the
// rescue media has no shared libraries it could be sure of. hint says how to get one.
func checkStatic(path, what, hint string) error {
	if err := checkRegular(path); err != nil {
		return fmt.Errorf("%s: %w: %s", what, err, hint)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s %s is not an ELF executable (%v): %s", what, path, err, hint)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s %s is not an x86-64 executable: %s", what, path, hint)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s %s is dynamically linked, and the rescue media needs a statically linked one: %s", what, path, hint)
		}
	}
	return nil
}

// runXorriso makes the hybrid ISO out of tree, into out (an existing empty file).
func runXorriso(ctx context.Context, xorriso, tree, out string) error {
	cmd := exec.CommandContext(ctx, xorriso, "-as", "mkisofs",
		"-o", out,
		"-V", "LIFEBOAT_RESCUE",
		"-R",
		"-isohybrid-mbr", isohdpfxBin,
		"-c", "isolinux/boot.cat",
		"-b", "isolinux/isolinux.bin",
		"-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
		tree)
	var output tailBuffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xorriso: %w: %s", err, strings.TrimSpace(output.String()))
	}
	return nil
}

// tailBuffer keeps the last 4 KiB written to it: the end of a tool's output says what
// went wrong.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	const keep = 4096
	t.b = append(t.b, p...)
	if len(t.b) > keep {
		t.b = append(t.b[:0], t.b[len(t.b)-keep:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(bytes.ToValidUTF8(t.b, nil)) }

// copyFile copies src to dst, a new file of mode perm.
func copyFile(ctx context.Context, src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return ctx.Err()
}
