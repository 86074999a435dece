package recovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
)

// clientSilence is how long a failback client may go without calling while it has an
// assignment before the failback fails (it resumes if it comes back: fail back again).
const clientSilence = 10 * time.Minute

// prepareClientFailback plans a failback into a failback client: the final PIT is
// materialized (and converted back) into an image on this host, which the client then
// makes its disk equal to, block by block, fetching only the blocks that differ.
func (j *jobCtx) prepareClientFailback(ctx context.Context, st *launchState, p *db.FailbackParams) (db.SourceServer, error) {
	origin, _, err := j.origin(ctx, p)
	if err != nil {
		return origin, err
	}
	if err := j.prepare(ctx, st, func(s *api.LaunchSettings) { s.Provider = api.ProviderImage }); err != nil {
		return origin, err
	}
	if len(st.req.Volumes) != 1 {
		return origin, &launch.Refusal{Reason: fmt.Sprintf("PIT %s has %d volumes: a failback client writes one disk (fail back into an instance instead)", st.pit.ID, len(st.req.Volumes))}
	}
	vol := st.req.Volumes[0]
	var fc db.FailbackClient
	if err := j.r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) { fc, err = tx.FailbackClient(p.Into); return err }); err != nil {
		return origin, fmt.Errorf("failback client %s: %w", p.Into, err)
	}
	disk, err := chooseDisk(fc.Disks, p.Disk, vol.SizeBytes)
	if err != nil {
		return origin, err
	}
	p.Disk = disk
	img := FailbackImage(j.r.cfg.Dir, st.row.RecoveryInstanceID)
	_ = os.Remove(img) // a fresh image: a resumed job writes it again
	st.plan = launch.Plan{Disks: []launch.Disk{{Volume: vol.Name, SizeBytes: vol.SizeBytes, Path: img, Mode: launch.WriteFresh, Format: api.DiskRaw}}}
	return origin, nil
}

// chooseDisk picks the disk a failback client writes: the one named, or the smallest
// that holds the volume.
func chooseDisk(disks []api.FailbackDisk, name string, size int64) (string, error) {
	best := -1
	for i, d := range disks {
		if name != "" && d.Name != name {
			continue
		}
		if d.SizeBytes < size {
			if name != "" {
				return "", &launch.Refusal{Reason: fmt.Sprintf("disk %s holds %d bytes and the volume needs %d: the target disk is too small", name, d.SizeBytes, size)}
			}
			continue
		}
		if best < 0 || d.SizeBytes < disks[best].SizeBytes {
			best = i
		}
	}
	if best < 0 {
		return "", &launch.Refusal{Reason: fmt.Sprintf("the failback client has no disk of %d bytes or more (named %q)", size, name)}
	}
	return disks[best].Name, nil
}

// clientFailbackLaunch assigns the image to the failback client and follows its write
// until it reports the disk complete (synced, bootable again).
func (j *jobCtx) clientFailbackLaunch(ctx context.Context, st *launchState, p *db.FailbackParams, origin db.SourceServer) error {
	if err := j.setStep(ctx, st, api.StepLaunch); err != nil {
		return err
	}
	a := &api.FailbackAssignment{JobID: j.job.ID, RecoveryInstanceID: p.RecoveryInstanceID, Disk: p.Disk,
		SizeBytes: st.plan.Disks[0].SizeBytes, BlockSize: st.repo.BlockSize()}
	if err := j.r.cfg.DB.Update(ctx, func(tx *db.Tx) error { return tx.SetFailbackAssignment(p.Into, a) }); err != nil {
		return failAt(api.StepLaunch, err)
	}
	j.event(ctx, st.row.SourceServerID, api.EventLaunchStart, fmt.Sprintf("failback client %s writes disk %s: only the blocks that differ from PIT %s travel",
		p.Into, p.Disk, st.pit.ID), map[string]any{"failbackClientId": p.Into, "disk": p.Disk})
	prog, err := j.followClient(ctx, st, p.Into)
	if err != nil {
		return failAt(api.StepLaunch, err)
	}
	_ = os.RemoveAll(filepath.Dir(FailbackImage(j.r.cfg.Dir, p.RecoveryInstanceID)))
	return j.failbackDone(ctx, st, p, origin, fmt.Sprintf("failback client %s, disk %s (%s written)", p.Into, p.Disk, sizeText(prog.WrittenBytes)),
		func(*db.Tx, time.Time) error { return nil })
}

// followClient relays a failback client's progress into the job until it is done.
func (j *jobCtx) followClient(ctx context.Context, st *launchState, id string) (api.FailbackProgress, error) {
	lastErr := ""
	for {
		var fc db.FailbackClient
		if err := j.r.cfg.DB.View(ctx, func(tx *db.Tx) (err error) { fc, err = tx.FailbackClient(id); return err }); err != nil {
			return api.FailbackProgress{}, err
		}
		if p := fc.Progress; p != nil && p.JobID == j.job.ID {
			if p.Done {
				return *p, nil
			}
			if p.Error != "" && p.Error != lastErr {
				lastErr = p.Error
				j.event(ctx, st.row.SourceServerID, api.EventLaunchStart, "the failback client retries: "+p.Error, nil)
			}
			st.row.Progress = &api.JobProgress{DoneBytes: p.DoneBytes, TotalBytes: p.TotalBytes}
			_ = j.setServer(ctx, st.row)
		}
		if j.r.cfg.Now().Sub(fc.LastSeenAt) > clientSilence {
			return api.FailbackProgress{}, errors.New("failback client " + id + " has not called for " + clientSilence.String() +
				": its disk is not complete and must not boot; boot the rescue media again and fail back again (only differing blocks are written)")
		}
		select {
		case <-ctx.Done():
			return api.FailbackProgress{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
