package rescue

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestValidateKernelArgs(t *testing.T) {
	ok := [][]string{
		nil,
		{"lifeboat.server=https://10.0.2.2:8443", "lifeboat.token=lbf_abc-DEF.123", "lifeboat.selftest=1"},
		{"quiet", "lifeboat.disk=nvme0n1"},
		{strings.Repeat("a", maxCommandLine-len(commandLine(nil))-1)},
	}
	for _, args := range ok {
		if err := ValidateKernelArgs(args); err != nil {
			t.Errorf("ValidateKernelArgs(%.60q) = %v, want nil", args, err)
		}
	}
	bad := map[string][]string{
		"empty":     {""},
		"space":     {"a b"},
		"newline":   {"lifeboat.server=x\ninit=/bin/sh"},
		"tab":       {"a\tb"},
		"control":   {"a\x01"},
		"del":       {"a\x7f"},
		"quote":     {`a="b c"`},
		"non-ascii": {"lifeboat.disk=vdä"},
		"too long":  {strings.Repeat("a", maxCommandLine-len(commandLine(nil)))},
		"many":      strings.Fields(strings.Repeat("lifeboat.x=0123456789 ", 200)),
	}
	for name, args := range bad {
		if err := ValidateKernelArgs(args); err == nil {
			t.Errorf("%s: ValidateKernelArgs = nil, want an error", name)
		}
	}
	err := ValidateKernelArgs([]string{"lifeboat.token=secret\x01"})
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("a bad token word: %v; want an error that does not show the token", err)
	}
}

func TestIsolinuxConfig(t *testing.T) {
	cfg := isolinuxConfig([]string{"lifeboat.selftest=1"})
	for _, want := range []string{
		"SERIAL 0 115200\n", "DEFAULT lifeboat\n", "KERNEL /boot/vmlinuz\n", "INITRD /boot/initrd.img\n",
		"APPEND console=ttyS0,115200 console=tty0 lifeboat.selftest=1\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("isolinux.cfg lacks %q:\n%s", want, cfg)
		}
	}
}

// TestScriptsParse runs the shells the scripts meet in their syntax-check mode: busybox
// sh (the rescue media's) and /bin/sh (dash on Debian, stricter about POSIX).
func TestScriptsParse(t *testing.T) {
	dir := t.TempDir()
	scripts := map[string]string{"init": initScript, "udhcpc.script": udhcpcScript}
	var shells [][]string
	if bb, err := exec.LookPath("busybox"); err == nil {
		shells = append(shells, []string{bb, "sh", "-n"})
	}
	shells = append(shells, []string{"/bin/sh", "-n"})
	for name, content := range scripts {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, sh := range shells {
			out, err := exec.Command(sh[0], append(sh[1:], p)...).CombinedOutput()
			if err != nil {
				t.Errorf("%s %s: %v\n%s", strings.Join(sh, " "), name, err, out)
			}
		}
	}
	// What init must say and do, as the failback client and the tests expect it.
	for _, want := range []string{
		"LIFEBOAT-RESCUE-READY", "LIFEBOAT-RESCUE-SELFTEST-END rc=$rc", "LIFEBOAT-RESCUE-REBOOT",
		"LIFEBOAT-RESCUE-FAILED rc=$rc", "poweroff -f", "reboot -f", "--token-file", "set -f",
		"umask 077", "/lifeboat/bin/lifeboat failback-client disks",
	} {
		if !strings.Contains(initScript, want) {
			t.Errorf("init lacks %q", want)
		}
	}
}

func TestDisksIn(t *testing.T) {
	sys := t.TempDir()
	dev := func(name, size, ro, removable, model string) {
		t.Helper()
		dir := filepath.Join(sys, name)
		files := map[string]string{"size": size + "\n", "ro": ro + "\n", "removable": removable + "\n"}
		if model != "" {
			files["device/model"] = model
		}
		for f, content := range files {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	dev("vda", "131072", "0", "0", "")
	dev("sda", "1953525168", "0", "0", "Samsung SSD 870 \n")
	dev("sdb", "30031872", "1", "1", "USB\x1b[31mStick")
	dev("nvme0n1", "2048", "0", "0", "")
	dev("cciss!c0d0", "4096", "0", "0", "")
	for _, skip := range []string{"loop0", "ram0", "zram0", "sr0", "dm-0", "bad name"} {
		dev(skip, "2048", "0", "0", "")
	}
	got, err := disksIn(sys)
	if err != nil {
		t.Fatal(err)
	}
	want := []Disk{
		{Name: "cciss!c0d0", Path: "/dev/cciss/c0d0", SizeBytes: 4096 * 512},
		{Name: "nvme0n1", Path: "/dev/nvme0n1", SizeBytes: 2048 * 512},
		{Name: "sda", Path: "/dev/sda", SizeBytes: 1953525168 * 512, Model: "Samsung SSD 870"},
		{Name: "sdb", Path: "/dev/sdb", SizeBytes: 30031872 * 512, ReadOnly: true, Removable: true, Model: "USB[31mStick"},
		{Name: "vda", Path: "/dev/vda", SizeBytes: 64 << 20},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("disksIn =\n%+v\nwant\n%+v", got, want)
	}

	// An attribute that is not what sysfs writes is an error, not a guess.
	dev("vdb", "many", "0", "0", "")
	if _, err := disksIn(sys); err == nil || !strings.Contains(err.Error(), "not a number") {
		t.Errorf("a size that is not a number: %v", err)
	}
	dev("vdb", strings.Repeat("1", maxSysfsFile+1), "0", "0", "")
	if _, err := disksIn(sys); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a size file too large: %v", err)
	}
	if err := os.Remove(filepath.Join(sys, "vdb", "size")); err != nil {
		t.Fatal(err)
	}
	if _, err := disksIn(sys); err == nil {
		t.Error("a device without a size: nil error")
	}

	empty, err := disksIn(t.TempDir())
	if err != nil || empty == nil || len(empty) != 0 {
		t.Errorf("no block devices: %v, %v; want an empty list", empty, err)
	}
}

func TestNewestKernel(t *testing.T) {
	boot := t.TempDir()
	if _, _, err := newestKernel(boot); err == nil || !strings.Contains(err.Error(), "linux-image-amd64") {
		t.Errorf("no kernel: %v, want an error naming linux-image-amd64", err)
	}
	for _, f := range []string{"vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64",
		"initrd.img-6.1.0-10-amd64", "vmlinuz-6.12.0-1-amd64" /* no initrd */} {
		if err := os.WriteFile(filepath.Join(boot, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k, i, err := newestKernel(boot)
	if err != nil || k != filepath.Join(boot, "vmlinuz-6.1.0-10-amd64") || i != filepath.Join(boot, "initrd.img-6.1.0-10-amd64") {
		t.Errorf("newestKernel = %s, %s, %v; want 6.1.0-10-amd64", k, i, err)
	}
}

// refusal is an ISOOptions BuildISO must refuse, and what its error must say.
type refusal struct {
	o    ISOOptions
	want string
}

// TestBuildISORefuses checks that what is missing or wrong is refused before anything
// is written, with what to do about it.
func TestBuildISORefuses(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "rescue.iso")
	kernel := filepath.Join(dir, "vmlinuz-1")
	for _, f := range []string{kernel, filepath.Join(dir, "initrd.img-1")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A dynamically linked program stands for a busybox or a lifeboat binary built with cgo.
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	static := ""
	if bb, err := filepath.EvalSymlinks("/bin/busybox"); err == nil && checkStatic(bb, "busybox", "") == nil {
		static = bb
	}
	cases := map[string]refusal{
		"no out":          {ISOOptions{}, "no output file"},
		"bad arg":         {ISOOptions{Out: out, KernelArgs: []string{"a b"}}, "not allowed"},
		"initrd only":     {ISOOptions{Out: out, Initrd: kernel}, "without its kernel"},
		"dynamic busybox": {ISOOptions{Out: out, Kernel: kernel, Busybox: dynamic, Binary: dynamic}, "busybox-static"},
		"not elf":         {ISOOptions{Out: out, Kernel: kernel, Busybox: kernel, Binary: dynamic}, "not an ELF"},
	}
	if static != "" {
		cases["dynamic lifeboat"] = refusal{ISOOptions{Out: out, Kernel: kernel, Busybox: static, Binary: dynamic}, "CGO_ENABLED=0"}
		cases["no out dir"] = refusal{ISOOptions{Out: filepath.Join(dir, "none", "x.iso"), Kernel: kernel, Busybox: static, Binary: static}, "does not exist"}
	}
	if _, err := findTools(); err != nil {
		t.Logf("tools missing (%v): only the checks before the tools' are tested", err)
		cases = map[string]refusal{"no out": cases["no out"], "bad arg": cases["bad arg"]}
	}
	for name, c := range cases {
		err := BuildISO(context.Background(), c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: BuildISO = %v, want an error saying %q", name, err, c.want)
		}
	}
	// Without xorriso on PATH, it is named with its package.
	t.Setenv("PATH", dir)
	if err := BuildISO(context.Background(), ISOOptions{Out: out}); err == nil || !strings.Contains(err.Error(), "Debian package xorriso") {
		t.Errorf("no xorriso: %v, want an error naming the package", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("BuildISO wrote into %s although it refused: %v", dir, entries)
	}
}
