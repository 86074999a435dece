package recovery

import (
	"errors"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
)

// TestChooseDisk: the disk named, if large enough; else the smallest that holds the
// volume; a refusal (with the reason) when none does.
func TestChooseDisk(t *testing.T) {
	disks := []api.FailbackDisk{{Name: "sda", SizeBytes: 100}, {Name: "sdb", SizeBytes: 40}, {Name: "sdc", SizeBytes: 60}}
	for _, c := range []struct {
		name string
		size int64
		want string
	}{{"", 50, "sdc"}, {"", 30, "sdb"}, {"sda", 50, "sda"}, {"", 100, "sda"}} {
		got, err := chooseDisk(disks, c.name, c.size)
		if err != nil || got != c.want {
			t.Errorf("chooseDisk(%q, %d) = %q, %v; want %s", c.name, c.size, got, err, c.want)
		}
	}
	var ref *launch.Refusal
	for _, c := range []struct {
		name string
		size int64
	}{{"sdb", 50}, {"", 101}, {"sdz", 1}} {
		if _, err := chooseDisk(disks, c.name, c.size); !errors.As(err, &ref) {
			t.Errorf("chooseDisk(%q, %d): %v, want a refusal", c.name, c.size, err)
		}
	}
}
