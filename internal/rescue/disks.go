package rescue

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Disk is a block device a recovery point can be written onto.
type Disk struct {
	Name      string `json:"name"`            // the kernel's name: vda, sda, nvme0n1
	Path      string `json:"path"`            // its device node: /dev/vda
	SizeBytes int64  `json:"sizeBytes"`       // its size
	ReadOnly  bool   `json:"readOnly"`        // the kernel refuses writes to it
	Removable bool   `json:"removable"`       // removable media (a USB stick, a card)
	Model     string `json:"model,omitempty"` // what the device says it is, when it says
}

// Limits on what Disks reads from sysfs: the number of block devices, and each file.
const (
	maxBlockDevices = 4096
	maxSysfsFile    = 256
)

// notDisks are the name prefixes of block devices that are not disks: loop devices, RAM
// disks, compressed swap in RAM, CD/DVD drives and device-mapper devices.
var notDisks = []string{"loop", "ram", "zram", "sr", "dm-"}

// blockName is what a block device's name may be. sysfs writes a "/" in a name as "!"
// (cciss!c0d0 is /dev/cciss/c0d0).
var blockName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+!-]{0,63}$`)

// Disks lists this machine's disks from /sys/block, sorted by name.
func Disks() ([]Disk, error) {
	return disksIn("/sys/block")
}

// disksIn lists the disks of the sysfs block directory dir.
func disksIn(dir string) ([]Disk, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("list the disks: %w", err)
	}
	names, err := d.Readdirnames(maxBlockDevices + 1)
	d.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("list the disks: read %s: %w", dir, err)
	}
	if len(names) > maxBlockDevices {
		return nil, fmt.Errorf("list the disks: %s holds more than %d block devices", dir, maxBlockDevices)
	}
	slices.Sort(names)
	disks := []Disk{}
	for _, name := range names {
		if !blockName.MatchString(name) || slices.ContainsFunc(notDisks, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		disk, err := readDisk(filepath.Join(dir, name), name)
		if err != nil {
			return nil, fmt.Errorf("list the disks: %w", err)
		}
		disks = append(disks, disk)
	}
	return disks, nil
}

// readDisk reads one block device's attributes from its sysfs directory.
func readDisk(dir, name string) (Disk, error) {
	sectors, err := readSysfsUint(filepath.Join(dir, "size"))
	if err != nil {
		return Disk{}, err
	}
	// sysfs counts 512-byte sectors whatever the device's own sector size.
	if sectors > math.MaxInt64/512 {
		return Disk{}, fmt.Errorf("%s: size of %d sectors is out of range", dir, sectors)
	}
	ro, err := readSysfsUint(filepath.Join(dir, "ro"))
	if err != nil {
		return Disk{}, err
	}
	removable, err := readSysfsUint(filepath.Join(dir, "removable"))
	if err != nil {
		return Disk{}, err
	}
	model, err := readSysfs(filepath.Join(dir, "device", "model"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Disk{}, err
	}
	return Disk{
		Name:      name,
		Path:      "/dev/" + strings.ReplaceAll(name, "!", "/"),
		SizeBytes: int64(sectors) * 512,
		ReadOnly:  ro != 0,
		Removable: removable != 0,
		Model:     printable(model),
	}, nil
}

// readSysfs reads a small sysfs attribute, without its surrounding white space.
func readSysfs(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSysfsFile+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxSysfsFile {
		return "", fmt.Errorf("%s is larger than %d bytes: it is not a sysfs attribute", path, maxSysfsFile)
	}
	return strings.TrimSpace(string(b)), nil
}

func readSysfsUint(path string) (uint64, error) {
	s, err := readSysfs(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s holds %q, not a number", path, s)
	}
	return n, nil
}

// printable keeps the printable ASCII of what a device says about itself: it is shown
// on a terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r >= 0x7f {
			return -1
		}
		return r
	}, s)
}
