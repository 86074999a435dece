package rescue

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// writeTree writes the ISO's files into the empty directory tree:
//
//	isolinux/isolinux.bin, isolinux/ldlinux.c32, isolinux/isolinux.cfg
//	boot/vmlinuz        the kernel
//	boot/initrd.img     Debian's initrd, then the rescue archive (see writeInitrd)
//
// The names are ISO 9660's 8.3 names, which isolinux reads.
func writeTree(ctx context.Context, tree string, o ISOOptions) error {
	for _, d := range []string{"isolinux", "boot"} {
		if err := os.Mkdir(filepath.Join(tree, d), 0o755); err != nil {
			return err
		}
	}
	for _, c := range []struct{ src, dst string }{
		{isolinuxBin, "isolinux/isolinux.bin"},
		{ldlinuxC32, "isolinux/ldlinux.c32"},
		{o.Kernel, "boot/vmlinuz"},
	} {
		if err := copyFile(ctx, c.src, filepath.Join(tree, c.dst), 0o644); err != nil {
			return err
		}
	}
	cfg := isolinuxConfig(o.KernelArgs)
	if err := os.WriteFile(filepath.Join(tree, "isolinux/isolinux.cfg"), []byte(cfg), 0o600); err != nil {
		return err
	}
	o.progress("initrd: Debian's initrd with busybox %s, lifeboat %s and the rescue init", o.Busybox, o.Binary)
	return writeInitrd(ctx, filepath.Join(tree, "boot/initrd.img"), o)
}

// writeInitrd writes Debian's initrd (its kernel's modules) followed by the rescue
// archive, an uncompressed cpio archive whose /init replaces Debian's. The kernel
// unpacks concatenated archives one after the other; each must start at a multiple of
// 4 bytes, so zeros pad the first one.
func writeInitrd(ctx context.Context, path string, o ISOOptions) error {
	if err := copyFile(ctx, o.Initrd, path, 0o644); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := w.Write(make([]byte, pad4(int(st.Size()%4)))); err != nil {
		return err
	}
	if err := writeRescueArchive(w, o.Busybox, o.Binary); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// writeRescueArchive writes the cpio archive the rescue media adds to Debian's initrd.
// It makes no directory Debian's initrd has as a symbolic link (/bin, /lib on Debian 12):
// the kernel would replace the link with the directory.
func writeRescueArchive(w *bufio.Writer, busybox, binary string) error {
	c := newCpioWriter(w)
	dirs := []struct {
		name string
		perm fs.FileMode
	}{
		{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755},
		{"tmp", 0o777 | fs.ModeSticky}, {"root", 0o700}, {"lifeboat", 0o755}, {"lifeboat/bin", 0o755},
	}
	for _, d := range dirs {
		if err := c.dir(d.name, d.perm); err != nil {
			return err
		}
	}
	// The console init starts on, before it mounts devtmpfs.
	if err := c.charDevice("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	for _, f := range []struct{ name, src string }{{"lifeboat/bin/busybox", busybox}, {"lifeboat/bin/lifeboat", binary}} {
		if err := addFile(c, f.name, f.src); err != nil {
			return err
		}
	}
	for _, s := range []struct{ name, content string }{{"lifeboat/udhcpc.script", udhcpcScript}, {"init", initScript}} {
		if err := c.file(s.name, 0o755, int64(len(s.content)), strings.NewReader(s.content)); err != nil {
			return err
		}
	}
	return c.close()
}

// addFile adds the regular file src to the archive as name, mode 0755.
func addFile(c *cpioWriter, name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return c.file(name, 0o755, st.Size(), f)
}

// newestKernel finds the newest kernel in dir (/boot) that has its initrd beside it:
// dir/vmlinuz-VERSION and dir/initrd.img-VERSION.
func newestKernel(dir string) (kernel, initrd string, err error) {
	kernels, _ := filepath.Glob(filepath.Join(dir, "vmlinuz-*"))
	best := ""
	for _, k := range kernels {
		v := strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		if _, err := os.Stat(filepath.Join(dir, "initrd.img-"+v)); err != nil {
			continue
		}
		if best == "" || kernelVersionLess(best, v) {
			best = v
		}
	}
	if best == "" {
		return "", "", fmt.Errorf("no kernel with its initrd in %s (vmlinuz-VERSION and initrd.img-VERSION): install Debian's kernel (apt-get install linux-image-amd64) or name a kernel and its initrd", dir)
	}
	return filepath.Join(dir, "vmlinuz-"+best), filepath.Join(dir, "initrd.img-"+best), nil
}

// kernelVersionLess orders kernel versions by their runs of digits, as numbers
// ("6.1.0-9-amd64" before "6.1.0-10-amd64"), then as strings.
func kernelVersionLess(a, b string) bool {
	notDigit := func(r rune) bool { return r < '0' || r > '9' }
	x, y := strings.FieldsFunc(a, notDigit), strings.FieldsFunc(b, notDigit)
	for i := 0; i < len(x) && i < len(y); i++ {
		m, errM := strconv.ParseUint(x[i], 10, 64)
		n, errN := strconv.ParseUint(y[i], 10, 64)
		if errM == nil && errN == nil && m != n {
			return m < n
		}
	}
	if len(x) != len(y) {
		return len(x) < len(y)
	}
	return a < b
}
