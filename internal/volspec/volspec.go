// Package volspec is the one rule for what an agent may call a volume and how large it
// may say it is. A volume name becomes part of staging store object names and of file
// names (exports, recovery disks), and a size decides how much the replicator and the
// store set up, so every place where an agent's volumes enter — the API (registration,
// PUT volumes, recorded snapshots), the wire protocol's Hello (docs/wire.md §5.1) and
// the staging store's heads — checks them here.
package volspec

import "fmt"

// Limits of a source server's volumes.
const (
	MaxNameLen = 128 // bytes of a volume name
	MaxCount   = 256 // volumes of one source server
	// MaxBytes is the largest volume: 64 TiB.
	MaxBytes = 64 << 40
	// MaxServerBytes is the largest sum of a source server's volume sizes: 256 TiB.
	MaxServerBytes = 256 << 40
)

// CheckName checks a volume name: 1 to MaxNameLen bytes of ASCII letters, digits, '.',
// '_' and '-', not starting with '.' or '-' (so never "." or "..", never hidden, never
// an option). The names agents produce — a device's kernel name (vda, nvme0n1,
// mmcblk0) or an image file's base name (disk0.img) — are such names.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("volume name %q must be 1 to %d bytes long", name, MaxNameLen)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("volume name %q must not start with '.' or '-': rename the image file", name)
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return fmt.Errorf("volume name %q may hold only letters, digits, '.', '_' and '-': rename the image file", name)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// Check checks a source server's volume list, given as n volumes whose name and size
// at returns: at most MaxCount volumes, each with a valid and distinct name and a size
// of at most MaxBytes, together at most MaxServerBytes. The error names the first
// problem and what bound it broke.
func Check(n int, at func(i int) (name string, size uint64)) error {
	if n > MaxCount {
		return fmt.Errorf("%d volumes, at most %d allowed", n, MaxCount)
	}
	seen := make(map[string]bool, n)
	var total uint64
	for i := range n {
		name, size := at(i)
		if err := CheckName(name); err != nil {
			return err
		}
		if seen[name] {
			return fmt.Errorf("two volumes are named %s", name)
		}
		seen[name] = true
		if size > MaxBytes {
			return fmt.Errorf("volume %s is %d bytes, more than the %d (64 TiB) a volume may have", name, size, uint64(MaxBytes))
		}
		total += size // at most MaxCount × MaxBytes: no overflow
	}
	if total > MaxServerBytes {
		return fmt.Errorf("the volumes add up to %d bytes, more than the %d (256 TiB) one source server may replicate", total, uint64(MaxServerBytes))
	}
	return nil
}
