package api

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// TestVolumeNamesAndSizesAreBounded: what an agent reports about its volumes (at
// registration, in PUT volumes) and what a replicator records for a PIT is refused
// with a 400 when a name is not a plain name or a size is beyond the bounds.
func TestVolumeNamesAndSizesAreBounded(t *testing.T) {
	vol := func(name string, size int64) Volume { return Volume{Name: name, Path: "/dev/x", SizeBytes: size} }
	const tib = int64(1) << 40
	bad := map[string][]Volume{
		"parent":       {vol("../../../../tmp/x", 1)},
		"path":         {vol("/dev/vda", 1)},
		"slash":        {vol("a/b", 1)},
		"dot-dot":      {vol("..", 1)},
		"hidden":       {vol(".vda", 1)},
		"option":       {vol("-vda", 1)},
		"space":        {vol("my disk.img", 1)},
		"long":         {vol(strings.Repeat("a", 129), 1)},
		"over 64 TiB":  {vol("vda", 64*tib+1)},
		"negative":     {vol("vda", -1)},
		"sum over 256": {vol("a", 64*tib), vol("b", 64*tib), vol("c", 64*tib), vol("d", 64*tib), vol("e", 1)},
		"twice":        {vol("vda", 1), vol("vda", 2)},
		"too many":     make([]Volume, 257),
	}
	for i := range bad["too many"] {
		bad["too many"][i] = vol("v"+strings.Repeat("1", i%100)+string(rune('a'+i/100)), 1)
	}
	for name, vs := range bad {
		err := ValidateVolumes(vs)
		if e, ok := err.(*Error); !ok || e.Status != http.StatusBadRequest {
			t.Errorf("%s: %v, want a 400", name, err)
		}
		req := CreateRecoverySnapshotRequest{Time: time.Now(), Level: consistency.Crash}
		for _, v := range vs {
			req.Volumes = append(req.Volumes, SnapshotVolume{Name: v.Name, SizeBytes: v.SizeBytes})
		}
		if err := req.Validate(); err == nil {
			t.Errorf("%s: a snapshot record with these volumes was accepted", name)
		}
	}
	good := []Volume{vol("vda", 10<<30), vol("nvme0n1", 64*tib), vol("disk0.img", 1), vol("mmcblk0", 0), vol("db_data-2.raw", 64*tib)}
	if err := ValidateVolumes(good); err != nil {
		t.Errorf("real volume names: %v", err)
	}
}
