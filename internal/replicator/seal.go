package replicator

import (
	"context"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/wire"
)

// recorder records sealed PITs with the control plane, which lists them (the
// replicator's ControlPlane is one).
type recorder interface {
	CreateRecoverySnapshot(ctx context.Context, serverID string, req api.CreateRecoverySnapshotRequest) (api.RecoverySnapshot, error)
}

const (
	// recordAttempts: how many times a PIT is offered to the control plane.
	recordAttempts = 4
	// recordRetry is the first wait before offering it again; the next ones grow by as
	// much (0.5, 1, 1.5 s).
	recordRetry = 500 * time.Millisecond
)

// seal makes a PIT of every volume at a marker, records it with the control plane and
// tells the agent the outcome with a Sealed.
func (in *ingest) seal(ctx context.Context, m *wire.Marker) {
	in.out <- in.sealPIT(ctx, m)
}

// sealPIT seals and records the PIT of marker m, and returns the Sealed that says how
// it went.
func (in *ingest) sealPIT(ctx context.Context, m *wire.Marker) *wire.Sealed {
	labels := map[string]string{"freezeMicros": fmt.Sprint(m.FreezeMicros)}
	if m.GroupPoint != "" {
		labels[store.LabelGroupPoint] = m.GroupPoint
	}
	pit, err := in.repo.SealPIT(ctx, store.SealRequest{ID: api.NewID(api.PrefixSnapshot), Server: in.server,
		Time: time.Unix(0, m.TimeUnixNano).UTC(), Level: m.Level, Heads: in.heads, Labels: labels})
	if err != nil {
		in.log.Warn("sealing a PIT failed", "err", err)
		in.stats.failed(false)
		return &wire.Sealed{MarkerID: m.ID, Code: wire.CodeSnapshots, Message: "sealing the PIT failed: " + err.Error()}
	}
	if err := in.record(ctx, snapshotRequest(pit, in.repo.ID())); err != nil {
		in.log.Warn("recording a PIT with the control plane failed; it is in the store but not listed", "pit", pit.ID, "err", err)
		in.stats.failed(true)
		return &wire.Sealed{MarkerID: m.ID, Code: wire.CodeSnapshots, Message: "the PIT was sealed but the control plane could not record it: " + err.Error()}
	}
	in.log.Debug("PIT sealed", "pit", pit.ID, "level", pit.Level, "added", pit.AddedBytes)
	in.stats.sealedPIT(pit.Level)
	return &wire.Sealed{MarkerID: m.ID, PITID: pit.ID}
}

// snapshotRequest is the control plane's record of a sealed PIT. Its manifest digest,
// repository and head versions are what export, recovery and later sessions check the
// store against (docs/security.md §4).
func snapshotRequest(pit store.PIT, storeID string) api.CreateRecoverySnapshotRequest {
	req := api.CreateRecoverySnapshotRequest{ID: pit.ID, Time: pit.Time, Level: pit.Level, SizeBytes: pit.AddedBytes,
		ManifestDigest: pit.Digest, StagingStoreID: storeID, GroupPointID: pit.Labels[store.LabelGroupPoint]}
	for _, v := range pit.Volumes {
		req.Volumes = append(req.Volumes, api.SnapshotVolume{Name: v.Name, SizeBytes: v.Size, Ref: v.Ref(), HeadVersion: v.HeadVersion})
	}
	return req
}

// record offers req to the control plane up to recordAttempts times, waiting longer
// each time, while ctx lasts; it returns the last failure.
func (in *ingest) record(ctx context.Context, req api.CreateRecoverySnapshotRequest) error {
	for attempt := 1; ; attempt++ {
		_, err := in.rec.CreateRecoverySnapshot(ctx, in.server, req)
		if err == nil || attempt == recordAttempts {
			return err
		}
		if sleep(ctx, time.Duration(attempt)*in.recordRetry) != nil {
			return err
		}
	}
}
