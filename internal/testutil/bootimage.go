package testutil

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// BootImageOptions describes the tiny Linux server BuildBootImage makes.
type BootImageOptions struct {
	// SizeMiB is the size of the raw disk image (default 256). The kernel and initrd
	// take ~40 MiB of it; the file is sparse.
	SizeMiB int
	// Hostname goes to /etc/hostname (default "lifeboat-test").
	Hostname string
	// Page is /www/index.html, served on port 80 (default: a page naming the hostname).
	Page string
	// Probe, when set, is written to /etc/lifeboat-probe.sh and run by sh once the
	// network is up; its output goes to the console between the lines
	// "LIFEBOAT-PROBE-BEGIN" and "LIFEBOAT-PROBE-END rc=N".
	Probe string
	// Files are more files to put in the image: absolute path → content, mode 0644
	// (0755 under /bin, /sbin, /usr/bin and /usr/sbin). Parents are created.
	Files map[string]string
}

// Console lines the boot image's init prints, for tests that read the serial log.
const (
	BootedMarker     = "LIFEBOAT-BOOTED"      // followed by " <hostname>"
	ProbeBeginMarker = "LIFEBOAT-PROBE-BEGIN" // the probe's output follows
	ProbeEndMarker   = "LIFEBOAT-PROBE-END"   // followed by " rc=N"
	PowerdownMarker  = "LIFEBOAT-POWERDOWN"   // printed when the ACPI power button is pressed
)

// The image's /sbin/init (PID 1). It reads its network settings from
// /etc/lifeboat/network (KEY=VALUE lines: MODE=static|dhcp, ADDRESS=cidr, GATEWAY=ip,
// DNS=ip), which conversion.Apply writes; without it, the address QEMU user-mode
// networking expects. Values are read, never executed.
const bootInit = `#!/bin/sh
# Lifeboat test image: a tiny Linux server, PID 1.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -o remount,rw / 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
[ -s /etc/hostname ] && hostname -F /etc/hostname

MODE=static ADDRESS=10.0.2.15/24 GATEWAY=10.0.2.2 DNS=
if [ -f /etc/lifeboat/network ]; then
  while IFS='=' read -r k v; do
    case "$k" in
      MODE) MODE=$v ;; ADDRESS) ADDRESS=$v ;; GATEWAY) GATEWAY=$v ;; DNS) DNS=$v ;;
    esac
  done < /etc/lifeboat/network
fi

# The first NIC that is not lo; its name depends on the machine (eth0, ens2, enp0s2...).
nic= i=0
while [ -z "$nic" ] && [ $i -lt 100 ]; do
  for d in /sys/class/net/*; do
    n=${d##*/}
    [ "$n" = lo ] || [ ! -e "$d" ] || { nic=$n; break; }
  done
  [ -n "$nic" ] || { usleep 100000; i=$((i+1)); }
done
ip link set lo up
if [ -n "$nic" ]; then
  ip link set "$nic" up
  if [ "$MODE" = dhcp ]; then
    udhcpc -i "$nic" -n -q -t 20 -s /etc/lifeboat/udhcpc.script >/dev/null 2>&1
  else
    ip addr add "$ADDRESS" dev "$nic"
    [ -z "$GATEWAY" ] || ip route add default via "$GATEWAY"
  fi
  [ -z "$DNS" ] || echo "nameserver $DNS" > /etc/resolv.conf
fi

# The power button (QMP system_powerdown) powers the machine off.
for m in /lib/modules/lifeboat/*.ko; do [ -f "$m" ] && insmod "$m" 2>/dev/null; done
acpid -c /etc/acpi -l /dev/null

hostname > /www/hostname
httpd -p 80 -h /www
echo "` + BootedMarker + ` $(hostname) nic=$nic addr=$(ip -4 -o addr show dev "$nic" 2>/dev/null | awk '{print $4}')"
if [ -f /etc/lifeboat-probe.sh ]; then
  echo ` + ProbeBeginMarker + `
  sh /etc/lifeboat-probe.sh 2>&1
  echo "` + ProbeEndMarker + ` rc=$?"
fi
while :; do sleep 3600; done
`

const bootPowerButton = `#!/bin/sh
echo ` + PowerdownMarker + ` > /dev/console
sync
mount -o remount,ro / 2>/dev/null
poweroff -f
`

const bootUdhcpcScript = `#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -z "$router" ] || ip route add default via "${router%% *}"
    [ -z "$dns" ] || echo "nameserver ${dns%% *}" > /etc/resolv.conf ;;
esac
`

// HostKernel returns the newest kernel in /boot that has an initrd beside it and its
// modules in /lib/modules, with its version. It needs Debian's linux-image package.
func HostKernel(t testing.TB) (kernel, initrd, version string) {
	t.Helper()
	vmlinuz, _ := filepath.Glob("/boot/vmlinuz-*")
	var versions []string
	for _, k := range vmlinuz {
		v := strings.TrimPrefix(k, "/boot/vmlinuz-")
		if readable("/boot/initrd.img-"+v) && readable(k) {
			versions = append(versions, v)
		}
	}
	Need(t, len(versions) > 0, "no readable kernel with an initrd in /boot (apt-get install linux-image-amd64)")
	sort.Slice(versions, func(i, j int) bool { return versionLess(versions[i], versions[j]) })
	v := versions[len(versions)-1]
	return "/boot/vmlinuz-" + v, "/boot/initrd.img-" + v, v
}

func readable(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// versionLess compares kernel versions by their numeric runs ("6.1.0-9" < "6.1.0-10").
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	}
	x, y := split(a), split(b)
	for i := 0; i < len(x) && i < len(y); i++ {
		if len(x[i]) != len(y[i]) {
			return len(x[i]) < len(y[i])
		}
		if x[i] != y[i] {
			return x[i] < y[i]
		}
	}
	if len(x) != len(y) {
		return len(x) < len(y)
	}
	return a < b
}

// BuildBootImage builds, without mounting, a raw disk image holding one ext4 filesystem
// (no partition table: boot it with root=/dev/vda) with a tiny bootable Linux: the host's
// Debian kernel and initrd in /boot/vmlinuz and /boot/initrd.img, busybox-static with its
// applet links, and an /sbin/init that mounts proc, sys and dev, sets the hostname from
// /etc/hostname, configures the first NIC that is not lo (10.0.2.15/24 via 10.0.2.2, the
// QEMU user-mode network, unless /etc/lifeboat/network says otherwise), powers off on
// the ACPI power button, serves /www with busybox httpd on port 80 (/www/hostname holds
// the running hostname), prints "LIFEBOAT-BOOTED <hostname>" on the console and runs the
// probe, if any. The image is removed when the test ends.
//
// It takes well under a second (copying ~40 MiB of kernel and initrd, then mkfs.ext4 -d),
// as long as caching a built image and copying it would, so nothing is cached: each test
// gets a fresh image of its own to change.
func BuildBootImage(t testing.TB, opts BootImageOptions) string {
	t.Helper()
	RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	busybox := "/bin/busybox"
	Need(t, readable(busybox), "busybox is not installed (apt-get install busybox-static)")
	out, err := Output(busybox, "--list-full")
	Need(t, err == nil && strings.Contains(out, "sbin/httpd"), "busybox has no httpd applet (apt-get install busybox-static)")
	kernel, initrd, version := HostKernel(t)
	if opts.SizeMiB == 0 {
		opts.SizeMiB = 256
	}
	if opts.Hostname == "" {
		opts.Hostname = "lifeboat-test"
	}
	if opts.Page == "" {
		opts.Page = "<h1>Lifeboat test server " + opts.Hostname + "</h1>\n"
	}

	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "boot", "etc/lifeboat", "etc/acpi/PWRF",
		"lib/modules/lifeboat", "proc", "sys", "dev", "tmp", "run", "root", "var/log", "www", "mnt"} {
		mkdirAll(t, filepath.Join(root, d))
	}
	// Files first, links last: a link is only made where nothing was written, and no
	// file is ever written through a link (the links point at /bin/busybox, which on the
	// host is the host's own busybox).
	copyFile(t, busybox, filepath.Join(root, "bin/busybox"), 0o755)
	copyFile(t, kernel, filepath.Join(root, "boot/vmlinuz"), 0o644)
	copyFile(t, initrd, filepath.Join(root, "boot/initrd.img"), 0o644)
	// The power button needs the ACPI button driver and evdev, which Debian builds as
	// modules and its initrd does not load.
	for _, m := range []string{"kernel/drivers/input/evdev.ko", "kernel/drivers/acpi/button.ko"} {
		src := filepath.Join("/lib/modules", version, m)
		if readable(src) {
			copyFile(t, src, filepath.Join(root, "lib/modules/lifeboat", path.Base(m)), 0o644)
		}
	}
	writeFile(t, root, "/sbin/init", bootInit, 0o755)
	writeFile(t, root, "/etc/acpi/PWRF/00000080", bootPowerButton, 0o755)
	writeFile(t, root, "/etc/lifeboat/udhcpc.script", bootUdhcpcScript, 0o755)
	writeFile(t, root, "/etc/hostname", opts.Hostname+"\n", 0o644)
	writeFile(t, root, "/etc/hosts", "127.0.0.1 localhost\n", 0o644)
	writeFile(t, root, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
	writeFile(t, root, "/etc/group", "root:x:0:\n", 0o644)
	writeFile(t, root, "/www/index.html", opts.Page, 0o644)
	if opts.Probe != "" {
		writeFile(t, root, "/etc/lifeboat-probe.sh", opts.Probe, 0o755)
	}
	for p, content := range opts.Files {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
			t.Fatalf("BootImageOptions.Files: %q is not a clean absolute path", p)
		}
		mode := os.FileMode(0o644)
		for _, d := range []string{"/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/"} {
			if strings.HasPrefix(p, d) {
				mode = 0o755
			}
		}
		mkdirAll(t, filepath.Join(root, path.Dir(p)))
		writeFile(t, root, p, content, mode)
	}
	for _, applet := range strings.Fields(out) {
		link := filepath.Join(root, applet)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		mkdirAll(t, filepath.Dir(link))
		if err := os.Symlink("/bin/busybox", link); err != nil {
			t.Fatalf("boot image: link %s: %v", applet, err)
		}
	}

	image := filepath.Join(dir, "disk.raw")
	Run(t, "mkfs.ext4", "-q", "-F", "-L", "lifeboat-root", "-E", "root_owner=0:0", "-d", root, image, fmt.Sprintf("%dM", opts.SizeMiB))
	// The staging tree is not needed any more: only the image is kept.
	if err := os.RemoveAll(root); err != nil {
		t.Fatalf("boot image: remove staging tree: %v", err)
	}
	return image
}

func mkdirAll(t testing.TB, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("boot image: %v", err)
	}
}

// writeFile writes content at root+p, first removing whatever is there, so that it never
// writes through a symbolic link.
func writeFile(t testing.TB, root, p, content string, mode os.FileMode) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.Remove(full); err != nil && !os.IsNotExist(err) {
		t.Fatalf("boot image: %v", err)
	}
	f, err := os.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		t.Fatalf("boot image: %v", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		t.Fatalf("boot image: write %s: %v", p, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("boot image: write %s: %v", p, err)
	}
	if err := os.Chmod(full, mode); err != nil { // the umask may have taken bits away
		t.Fatalf("boot image: %v", err)
	}
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatalf("boot image: %v", err)
	}
	defer in.Close()
	if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
		t.Fatalf("boot image: %v", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		t.Fatalf("boot image: %v", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatalf("boot image: copy %s: %v", src, err)
	}
	if err := out.Close(); err != nil {
		t.Fatalf("boot image: copy %s: %v", src, err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		t.Fatalf("boot image: %v", err)
	}
}

// SetFileInImage writes content to path (absolute, its directory must exist) inside the
// ext4 filesystem of a whole-disk image such as BuildBootImage makes, without mounting
// it (debugfs). The file is owned by root, mode 0644, and replaces any file there.
func SetFileInImage(t testing.TB, image, p, content string) {
	t.Helper()
	RequireCommand(t, "debugfs", "e2fsprogs")
	checkImagePath(t, p)
	dir, name := path.Split(p)
	local := filepath.Join(t.TempDir(), "content")
	if err := os.WriteFile(local, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	cmds := []string{`cd "` + path.Clean(dir) + `"`}
	if _, err := debugfs(image, false, `stat "`+p+`"`); err == nil {
		cmds = append(cmds, `rm "`+name+`"`)
	}
	cmds = append(cmds, `write "`+local+`" "`+name+`"`, `sif "`+name+`" mode 0100644`,
		`sif "`+name+`" uid 0`, `sif "`+name+`" gid 0`)
	if _, err := debugfs(image, true, cmds...); err != nil {
		t.Fatalf("set %s in %s: %v", p, image, err)
	}
}

// ReadFileFromImage returns the content of a regular file inside the ext4 filesystem of
// a whole-disk image, without mounting it (debugfs).
func ReadFileFromImage(t testing.TB, image, p string) string {
	t.Helper()
	RequireCommand(t, "debugfs", "e2fsprogs")
	checkImagePath(t, p)
	local := filepath.Join(t.TempDir(), "content")
	if _, err := debugfs(image, false, `dump "`+p+`" "`+local+`"`); err != nil {
		t.Fatalf("read %s from %s: %v", p, image, err)
	}
	data, err := os.ReadFile(local)
	if err != nil {
		t.Fatalf("read %s from %s: %v", p, image, err)
	}
	return string(data)
}

func checkImagePath(t testing.TB, p string) {
	t.Helper()
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" || strings.ContainsAny(p, "\"\\\n") {
		t.Fatalf("%q is not a clean absolute file path debugfs can be given", p)
	}
}

// debugfs runs commands on an image. debugfs exits 0 when a command fails, so anything
// on its standard error but its banner is an error.
func debugfs(image string, write bool, cmds ...string) (string, error) {
	var args []string
	if write {
		args = append(args, "-w")
	}
	if len(cmds) == 1 {
		args = append(args, "-R", cmds[0])
	} else {
		args = append(args, "-f", "-") // the commands, one a line, on standard input
	}
	args = append(args, image)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "debugfs", args...)
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var msgs []string
	for _, line := range strings.Split(stderr.String(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "debugfs ") && strings.HasSuffix(line, ")") {
			continue // the version banner
		}
		msgs = append(msgs, line)
	}
	if err != nil || len(msgs) > 0 {
		return stdout.String(), fmt.Errorf("debugfs %s: %v %s", strings.Join(cmds, "; "), err, strings.Join(msgs, "; "))
	}
	return stdout.String(), nil
}
