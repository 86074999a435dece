package testutil

import (
	"context"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/launch/libvirt"
)

// LibvirtVolumeIs reports whether the first size bytes of a libvirt volume have the
// SHA-256 want. Reading a volume back through libvirt's stream API now and then ends
// early or delivers bytes that are not the volume's (libvirt.Client.DownloadVolume);
// a mismatch is read again, up to three times, so that false is the volume's.
func LibvirtVolumeIs(t testing.TB, ctx context.Context, c *libvirt.Client, pool, vol string, size int64, want [32]byte) bool {
	t.Helper()
	for attempt := 1; attempt <= 3; attempt++ {
		got, err := c.VolumeSHA256(ctx, pool, vol, size)
		if err == nil && got == want {
			return true
		}
		t.Logf("reading volume %s/%s back (attempt %d): sha256 %x, want %x (%v)", pool, vol, attempt, got, want, err)
	}
	return false
}
