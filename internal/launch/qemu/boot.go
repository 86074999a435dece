package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
)

// ExtractBoot copies the kernel and initrd of a recovered disk image into dir (as
// "vmlinuz" and "initrd.img", replacing earlier copies) and returns a Boot for direct
// kernel boot, so that the server boots its own kernel without a bootloader or firmware.
//
// The image is raw: a whole-disk ext2/3/4 filesystem, or an MBR/GPT disk whose root
// filesystem (the first ext filesystem with an /etc) is in a primary partition. The
// kernel is the newest /boot/vmlinuz-VERSION (or /boot/vmlinuz) that is a regular file;
// a separate ext /boot partition (kernels at its top) is found too. Its initrd is the
// matching initrd.img-VERSION (Debian, Ubuntu), initramfs-VERSION.img (Red Hat) or
// initrd-VERSION (SUSE); a kernel without one is booted without.
//
// The command line mounts the root filesystem by UUID, so it does not depend on disk
// order, names the serial console, and asks for classic NIC names (net.ifnames=0: the
// first NIC is eth0, which the network settings of package conversion match). Root on
// LVM, LUKS, btrfs or XFS is not handled.
//
// The image must not be in use by a running VM.
func ExtractBoot(ctx context.Context, image, dir string) (Boot, error) {
	all, err := ext4image.Find(image)
	if err != nil {
		return Boot{}, fmt.Errorf("find the kernel to boot: %w", err)
	}
	root, err := ext4image.Root(ctx, image)
	if err != nil {
		return Boot{}, fmt.Errorf("find the kernel to boot: %w", err)
	}
	// The kernel is in the root filesystem's /boot, or at the top of a /boot partition.
	type place struct {
		fs  ext4image.Filesystem
		dir string
	}
	places := []place{{root, "/boot"}}
	for _, f := range all {
		if f.Offset != root.Offset {
			places = append(places, place{f, "/"})
		}
	}
	for _, pl := range places {
		entries, err := pl.fs.ReadDir(ctx, pl.dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Boot{}, fmt.Errorf("find the kernel to boot: %w", err)
		}
		kernel, initrd := pickKernel(entries)
		if kernel == "" {
			continue
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return Boot{}, fmt.Errorf("extract the kernel: %w", err)
		}
		b := Boot{Mode: BootKernel, Kernel: filepath.Join(dir, "vmlinuz"),
			Cmdline: "root=UUID=" + root.UUID + " ro console=ttyS0 net.ifnames=0"}
		if err := copyOut(ctx, pl.fs, path.Join(pl.dir, kernel), b.Kernel); err != nil {
			return Boot{}, err
		}
		if initrd != "" {
			b.Initrd = filepath.Join(dir, "initrd.img")
			if err := copyOut(ctx, pl.fs, path.Join(pl.dir, initrd), b.Initrd); err != nil {
				return Boot{}, err
			}
		} else if err := os.Remove(filepath.Join(dir, "initrd.img")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return Boot{}, fmt.Errorf("remove an earlier initrd: %w", err)
		}
		return b, nil
	}
	return Boot{}, fmt.Errorf("no kernel (vmlinuz*) in /boot of %s, nor in a separate /boot partition: boot it from disk (Boot.Mode disk) instead", root)
}

func copyOut(ctx context.Context, f ext4image.Filesystem, src, dst string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace %s: %w", dst, err)
	}
	if err := f.CopyOut(ctx, src, dst); err != nil {
		return fmt.Errorf("extract %s from %s: %w", src, f, err)
	}
	return nil
}

// pickKernel chooses the newest kernel among directory entries and its initrd.
func pickKernel(entries []ext4image.Entry) (kernel, initrd string) {
	files := map[string]bool{}
	var versions []string
	plain := false
	for _, e := range entries {
		if !e.IsRegular() || e.Size == 0 {
			continue
		}
		files[e.Name] = true
		switch {
		case e.Name == "vmlinuz":
			plain = true
		case strings.HasPrefix(e.Name, "vmlinuz-") && !strings.HasSuffix(e.Name, ".old"):
			versions = append(versions, strings.TrimPrefix(e.Name, "vmlinuz-"))
		}
	}
	if len(versions) > 0 {
		sort.Slice(versions, func(i, j int) bool { return versionLess(versions[i], versions[j]) })
		v := versions[len(versions)-1]
		for _, name := range []string{"initrd.img-" + v, "initramfs-" + v + ".img", "initrd-" + v} {
			if files[name] {
				return "vmlinuz-" + v, name
			}
		}
		return "vmlinuz-" + v, ""
	}
	if plain {
		for _, name := range []string{"initrd.img", "initramfs.img", "initrd"} {
			if files[name] {
				return "vmlinuz", name
			}
		}
		return "vmlinuz", ""
	}
	return "", ""
}

// versionLess orders kernel versions by their numeric runs ("6.1.0-9" before
// "6.1.0-10"), then as strings.
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	}
	x, y := split(a), split(b)
	for i := 0; i < len(x) && i < len(y); i++ {
		xi, yi := strings.TrimLeft(x[i], "0"), strings.TrimLeft(y[i], "0")
		if len(xi) != len(yi) {
			return len(xi) < len(yi)
		}
		if xi != yi {
			return xi < yi
		}
	}
	if len(x) != len(y) {
		return len(x) < len(y)
	}
	return a < b
}
