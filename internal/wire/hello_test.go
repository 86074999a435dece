package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// rawHello encodes a Hello payload with no check at all, as a hostile agent could;
// count is the declared volume count (len(vols) unless it says otherwise).
func rawHello(count int, vols []Volume) []byte {
	b := binary.BigEndian.AppendUint16(nil, 1)
	for _, s := range []string{"s-1", "v1", "ebpf"} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	b = binary.BigEndian.AppendUint64(b, 7)
	b = binary.BigEndian.AppendUint16(b, uint16(count))
	for _, v := range vols {
		b = binary.BigEndian.AppendUint16(b, uint16(len(v.Name)))
		b = append(b, v.Name...)
		b = binary.BigEndian.AppendUint64(b, v.SizeBytes)
		b = binary.BigEndian.AppendUint32(b, v.BlockSize)
	}
	return b
}

func volumesOf(n int, size uint64) []Volume {
	vs := make([]Volume, n)
	for i := range vs {
		vs[i] = Volume{Name: fmt.Sprintf("v%d", i), SizeBytes: size, BlockSize: 512}
	}
	return vs
}

// TestDecodeRefusesHelloBeyondItsBounds: a Hello that declares volumes larger, more
// numerous or larger together than docs/wire.md §8 allows, or names that are not plain
// names, is a protocol violation that names the bound, whatever the agent's encoder did.
func TestDecodeRefusesHelloBeyondItsBounds(t *testing.T) {
	for name, tc := range map[string]struct {
		count int // 0: len(vols)
		vols  []Volume
		want  string
	}{
		"volume over 64 TiB":  {vols: volumesOf(1, MaxVolumeBytes+1), want: "64 TiB"},
		"volume of 2^64-1":    {vols: volumesOf(1, ^uint64(0)), want: "64 TiB"},
		"sum over 256 TiB":    {vols: volumesOf(5, MaxVolumeBytes), want: "256 TiB"},
		"257 volumes":         {vols: volumesOf(MaxVolumes+1, 0), want: "at most 256"},
		"65535 declared":      {count: 65535, vols: volumesOf(1, 0), want: "at most 256"},
		"parent directory":    {vols: []Volume{{Name: "../../../etc/x", BlockSize: 512}}, want: "not a volume name"},
		"absolute path":       {vols: []Volume{{Name: "/dev/vda", BlockSize: 512}}, want: "not a volume name"},
		"dot-dot":             {vols: []Volume{{Name: "..", BlockSize: 512}}, want: "not a volume name"},
		"hidden":              {vols: []Volume{{Name: ".x", BlockSize: 512}}, want: "not a volume name"},
		"option":              {vols: []Volume{{Name: "-rf", BlockSize: 512}}, want: "not a volume name"},
		"129-byte name":       {vols: []Volume{{Name: strings.Repeat("a", MaxNameLen+1), BlockSize: 512}}, want: "longer than the 128"},
		"duplicate after all": {vols: []Volume{{Name: "a", BlockSize: 512}, {Name: "a", BlockSize: 512}}, want: "two volumes"},
	} {
		count := tc.count
		if count == 0 {
			count = len(tc.vols)
		}
		_, err := DecodeFrame(frameOf(TypeHello, rawHello(count, tc.vols)))
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrProtocol saying %q", name, err, tc.want)
		}
	}
	// At the bounds, the same Hellos decode.
	for name, vols := range map[string][]Volume{
		"largest volume": volumesOf(1, MaxVolumeBytes),
		"largest sum":    volumesOf(4, MaxVolumeBytes),
		"most volumes":   volumesOf(MaxVolumes, MaxServerBytes/MaxVolumes),
		"longest name":   {{Name: strings.Repeat("a", MaxNameLen), BlockSize: 512}},
	} {
		if _, err := DecodeFrame(frameOf(TypeHello, rawHello(len(vols), vols))); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
