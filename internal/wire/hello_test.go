package wire_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/wire"
	"github.com/lifeboat-dr/lifeboat/internal/wire/wiretest"
)

// volumesOf is n volumes, v0 to vN-1, of size bytes each.
func volumesOf(n int, size uint64) []wire.Volume {
	vs := make([]wire.Volume, n)
	for i := range vs {
		vs[i] = wire.Volume{Name: fmt.Sprintf("v%d", i), SizeBytes: size, BlockSize: 512}
	}
	return vs
}

// TestDecodeRefusesHelloBeyondItsBounds: a Hello that declares volumes larger, more
// numerous or larger together than docs/wire.md §8 allows, or names that are not plain
// names, is a protocol violation that names the bound, whatever the agent's encoder did.
func TestDecodeRefusesHelloBeyondItsBounds(t *testing.T) {
	for name, tc := range map[string]struct {
		count int // 0: len(vols)
		vols  []wire.Volume
		want  string
	}{
		"volume over 64 TiB":  {vols: volumesOf(1, wire.MaxVolumeBytes+1), want: "64 TiB"},
		"volume of 2^64-1":    {vols: volumesOf(1, ^uint64(0)), want: "64 TiB"},
		"sum over 256 TiB":    {vols: volumesOf(5, wire.MaxVolumeBytes), want: "256 TiB"},
		"257 volumes":         {vols: volumesOf(wire.MaxVolumes+1, 0), want: "at most 256"},
		"65535 declared":      {count: 65535, vols: volumesOf(1, 0), want: "at most 256"},
		"parent directory":    {vols: []wire.Volume{{Name: "../../../etc/x", BlockSize: 512}}, want: "not a volume name"},
		"absolute path":       {vols: []wire.Volume{{Name: "/dev/vda", BlockSize: 512}}, want: "not a volume name"},
		"dot-dot":             {vols: []wire.Volume{{Name: "..", BlockSize: 512}}, want: "not a volume name"},
		"hidden":              {vols: []wire.Volume{{Name: ".x", BlockSize: 512}}, want: "not a volume name"},
		"option":              {vols: []wire.Volume{{Name: "-rf", BlockSize: 512}}, want: "not a volume name"},
		"129-byte name":       {vols: []wire.Volume{{Name: strings.Repeat("a", wire.MaxNameLen+1), BlockSize: 512}}, want: "longer than the 128"},
		"duplicate after all": {vols: []wire.Volume{{Name: "a", BlockSize: 512}, {Name: "a", BlockSize: 512}}, want: "two volumes"},
	} {
		count := tc.count
		if count == 0 {
			count = len(tc.vols)
		}
		_, err := wire.DecodeFrame(wiretest.HelloFrame("s-1", count, tc.vols))
		if !errors.Is(err, wire.ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want wire.ErrProtocol saying %q", name, err, tc.want)
		}
	}
	// At the bounds, the same Hellos decode.
	for name, vols := range map[string][]wire.Volume{
		"largest volume": volumesOf(1, wire.MaxVolumeBytes),
		"largest sum":    volumesOf(4, wire.MaxVolumeBytes),
		"most volumes":   volumesOf(wire.MaxVolumes, wire.MaxServerBytes/wire.MaxVolumes),
		"longest name":   {{Name: strings.Repeat("a", wire.MaxNameLen), BlockSize: 512}},
	} {
		if _, err := wire.DecodeFrame(wiretest.HelloFrame("s-1", len(vols), vols)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
