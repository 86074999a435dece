package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/agent"
	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
)

// The metadata phase (issue 15): what consistency points every second cost the staging
// store and the control plane's database. The 4 GiB volume is replicated into a store
// of its own with points every 1 s under a light write load (small appends, each made
// durable with fdatasync), the store is measured before and after, and the default PIT
// policy is then applied as it would stand a day later (the store's clock moved on 24 h),
// followed by a garbage collection, to see what thinning leaves.

// storePrefixes are the store's object kinds (docs/store-format.md §1).
var storePrefixes = []string{"snapshots", "index", "data", "heads", "locks", "gc"}

// storeUsage is what a store holds for one server at one instant.
type storeUsage struct {
	at        time.Time
	objects   map[string]float64 // objects per prefix
	bytes     map[string]float64 // their bytes
	treeBytes float64            // tree nodes the server's PITs reference, as stored (inside packs)
	pits      int
}

// metadataBytes is the store's bookkeeping: manifests, index objects, heads and
// journals, and the tree nodes (block tables) inside packs.
func (u storeUsage) metadataBytes() float64 {
	return u.bytes["snapshots"] + u.bytes["index"] + u.bytes["heads"] + u.treeBytes
}

func (u storeUsage) metadataObjects() float64 {
	return u.objects["snapshots"] + u.objects["index"] + u.objects["heads"]
}

// measureStore lists the store's objects and walks the server's PITs (store.Stats); now
// is the store's clock (nil: the real one).
func measureStore(ctx context.Context, cl *cluster, server string, now func() time.Time) (storeUsage, *store.Repo, error) {
	u := storeUsage{at: time.Now(), objects: map[string]float64{}, bytes: map[string]float64{}}
	be, err := file.Open(filepath.Join(cl.dir, "staging"))
	if err != nil {
		return u, nil, err
	}
	mk, err := store.LoadMasterKey(filepath.Join(cl.dir, "cp", "staging.key"))
	if err != nil {
		return u, nil, err
	}
	repo, err := store.Open(ctx, be, mk, store.Options{Now: now})
	if err != nil {
		return u, nil, err
	}
	for _, p := range storePrefixes {
		err := be.List(ctx, p+"/", func(oi backend.ObjectInfo) error {
			u.objects[p]++
			u.bytes[p] += float64(oi.Size)
			return nil
		})
		if err != nil {
			repo.Close()
			return u, nil, err
		}
	}
	st, err := repo.Stats(ctx)
	if err != nil {
		repo.Close()
		return u, nil, err
	}
	for _, s := range st.Servers {
		if s.Server == server {
			u.treeBytes, u.pits = float64(s.MetadataBytes), s.PITs
		}
	}
	return u, repo, nil
}

// metadata runs the phase on the mounted volume (the main agent is stopped: two agents
// must not freeze the same filesystem).
func (b *bench) metadata(ctx context.Context, dev, data, mnt string, size int64) error {
	u := &undo{}
	defer u.run()
	dir := b.path("cluster-meta")
	u.push(func() { _ = os.RemoveAll(dir) })
	codec := strings.TrimSpace(strings.Split(b.f.codecs, ",")[0])
	cl, err := newCluster(ctx, u, b.f.bin, dir, func(s *api.ReplicationSettings) {
		s.Compression, s.ConsistencyPointIntervalSeconds = codec, b.f.metaInterval
	})
	if err != nil {
		return err
	}
	a, err := cl.installAgent(ctx, "ameta", dev)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := a.start(u); err != nil {
		return err
	}
	if _, _, err := a.waitPIT(ctx, t0, 30*time.Minute); err != nil {
		return err
	}
	if _, err := a.waitState(ctx, 5*time.Minute, func(s agent.Status) bool {
		return s.State == api.StateContinuous && s.BacklogBytes == 0 && time.Since(s.UpdatedAt) < 3*time.Second
	}); err != nil {
		return err
	}
	b.quietWait(ctx)
	load := startLoad()
	m, err := b.metaWindow(ctx, cl, a, mnt)
	if err != nil {
		return err
	}
	a.stop()
	cl.rep.stop() // nothing writes the store any more: it can be thinned and collected
	thinned, gcst, err := thinAfterDay(ctx, cl, a.id, m.after.at)
	if err != nil {
		return err
	}
	b.sink.add(result{Phase: "metadata", Name: "lifeboat", Data: data, Seconds: m.after.at.Sub(m.before.at).Seconds(), Bytes: size,
		Load: load, Extra: metaFigures(m, thinned, gcst, b.f.metaInterval),
		Note: fmt.Sprintf("points every %d s for %d s under %d appends of 4 KiB + fdatasync per second to a file of the mounted volume", b.f.metaInterval, b.f.metaSeconds, b.f.metaWrites)})
	return nil
}

// metaRun is what the window of 1 s points measured.
type metaRun struct {
	before, after       storeUsage
	writes              int
	agentCPU, repCPU    time.Duration
	rows                int
	loadStart, loadStop time.Time
}

// metaWindow measures the store, runs the light load, and measures it again.
func (b *bench) metaWindow(ctx context.Context, cl *cluster, a *agentProc, mnt string) (metaRun, error) {
	var m metaRun
	var repo *store.Repo
	var err error
	if m.before, repo, err = measureStore(ctx, cl, a.id, nil); err != nil {
		return m, err
	}
	repo.Close()
	agentCPU0, repCPU0 := cpuTime(a.p.pid()), cpuTime(cl.rep.pid())
	m.loadStart = time.Now()
	m.writes, err = lightLoad(ctx, filepath.Join(mnt, "lifeboat-light-load"), b.f.metaWrites, time.Duration(b.f.metaSeconds)*time.Second)
	m.loadStop = time.Now()
	if err != nil {
		return m, err
	}
	sleepCtx(ctx, 3*time.Second) // the last writes' point sealed
	m.agentCPU, m.repCPU = cpuTime(a.p.pid())-agentCPU0, cpuTime(cl.rep.pid())-repCPU0
	if m.after, repo, err = measureStore(ctx, cl, a.id, nil); err != nil {
		return m, err
	}
	repo.Close()
	m.rows, err = countRows(ctx, cl, a.id)
	return m, err
}

// lightLoad appends 4 KiB of random bytes to path and fdatasyncs it perSec times a
// second for d (at most perSec·d writes); the file is removed at the end.
func lightLoad(ctx context.Context, path string, perSec int, d time.Duration) (int, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	buf := make([]byte, 4096)
	t := time.NewTicker(time.Second / time.Duration(max(perSec, 1)))
	defer t.Stop()
	end := time.After(d)
	n, limit := 0, perSec*int(d/time.Second)
	for n < limit {
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-end:
			return n, nil
		case <-t.C:
		}
		_, _ = rand.Read(buf)
		if _, err := f.Write(buf); err != nil {
			return n, err
		}
		if err := f.Sync(); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// countRows counts the server's recovery snapshots the control plane lists.
func countRows(ctx context.Context, cl *cluster, server string) (int, error) {
	n, tok := 0, ""
	for range 10_000 {
		page, err := cl.admin.RecoverySnapshots(ctx, server, 500, tok)
		if err != nil {
			return n, err
		}
		n += len(page.Items)
		if tok = page.NextPageToken; tok == "" {
			break
		}
	}
	return n, nil
}

// thinAfterDay applies the default PIT policy to the server's PITs as it stands 24 h
// after end (the store's clock moved on), collects garbage (no grace period: no writer
// is left) and measures what remains.
func thinAfterDay(ctx context.Context, cl *cluster, server string, end time.Time) (storeUsage, store.GCStats, error) {
	later := func() time.Time { return end.Add(24 * time.Hour) }
	_, repo, err := measureStore(ctx, cl, server, later)
	if err != nil {
		return storeUsage{}, store.GCStats{}, err
	}
	defer repo.Close()
	if _, err := repo.ApplyRetention(ctx, server, store.DefaultPolicy()); err != nil {
		return storeUsage{}, store.GCStats{}, err
	}
	gcst, err := repo.GC(ctx, store.GCOptions{Grace: time.Millisecond})
	if err != nil {
		return storeUsage{}, gcst, err
	}
	u, r2, err := measureStore(ctx, cl, server, later)
	if r2 != nil {
		r2.Close()
	}
	return u, gcst, err
}

// keptPerDay is how many of a day of points every interval the default policy keeps
// at the day's end (the PITs the store and the control plane hold for that day).
func keptPerDay(interval time.Duration) int {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	n := int(24 * time.Hour / interval)
	pits := make([]store.PIT, n)
	for i := range pits {
		pits[i] = store.PIT{ID: fmt.Sprint(i), Time: start.Add(time.Duration(i) * interval), Level: consistency.Filesystem}
	}
	kept := 0
	for _, d := range store.DefaultPolicy().Apply(pits, start.Add(24*time.Hour)) {
		if d.Keep {
			kept++
		}
	}
	return kept
}

// metaFigures are the phase's figures: per point of the window, after thinning, and
// extrapolated to a day.
func metaFigures(m metaRun, thinned storeUsage, gcst store.GCStats, interval int) map[string]float64 {
	n := float64(m.after.pits - m.before.pits)
	wall := m.after.at.Sub(m.before.at).Seconds()
	d := func(f func(storeUsage) float64) float64 { return (f(m.after) - f(m.before)) / n }
	by := func(k string) func(storeUsage) float64 { return func(u storeUsage) float64 { return u.bytes[k] } }
	ob := func(k string) func(storeUsage) float64 { return func(u storeUsage) float64 { return u.objects[k] } }
	ex := map[string]float64{
		"points": n, "pointsPerSecond": n / wall, "writes": float64(m.writes),
		"agentCPUPercent":       100 * m.agentCPU.Seconds() / m.loadStop.Sub(m.loadStart).Seconds(),
		"replicatorCPUPercent":  100 * m.repCPU.Seconds() / m.loadStop.Sub(m.loadStart).Seconds(),
		"manifestBytesPerPoint": d(by("snapshots")), "manifestObjectsPerPoint": d(ob("snapshots")),
		"treeBytesPerPoint":  d(func(u storeUsage) float64 { return u.treeBytes }),
		"indexBytesPerPoint": d(by("index")), "indexObjectsPerPoint": d(ob("index")),
		"headBytesPerPoint": d(by("heads")), "packObjectsPerPoint": d(ob("data")),
		"packBytesPerPoint":     d(by("data")),
		"metadataBytesPerPoint": d(storeUsage.metadataBytes), "metadataObjectsPerPoint": d(storeUsage.metadataObjects),
		"baseMetadataBytes": m.before.metadataBytes(), "baseMetadataObjects": m.before.metadataObjects(), "basePITs": float64(m.before.pits),
		"afterMetadataBytes": m.after.metadataBytes(), "afterMetadataObjects": m.after.metadataObjects(), "afterPITs": float64(m.after.pits),
		"afterPackObjects": m.after.objects["data"], "afterIndexObjects": m.after.objects["index"],
		"thinnedMetadataBytes": thinned.metadataBytes(), "thinnedMetadataObjects": thinned.metadataObjects(), "thinnedPITs": float64(thinned.pits),
		"thinnedTreeBytes": thinned.treeBytes, "thinnedIndexBytes": thinned.bytes["index"], "thinnedIndexObjects": thinned.objects["index"],
		"thinnedPackObjects": thinned.objects["data"], "gcDeletedPacks": float64(gcst.DeletedPacks), "gcRepackedPacks": float64(gcst.RepackedPacks),
		"gcFreedBytes": float64(gcst.FreedBytes), "gcDeadChunks": float64(gcst.DeadChunks),
		"rowsAfterWindow": float64(m.rows), "intervalSeconds": float64(interval),
		"keptPerDay": float64(keptPerDay(time.Duration(interval) * time.Second)), "keptPerDay10s": float64(keptPerDay(10 * time.Second)),
	}
	// A day's points, before and after the default policy thinned them:
	// the points kept times what one point added in the window (manifest, tree nodes,
	// index objects as written), on top of the volume's own (base) metadata.
	per := ex["manifestBytesPerPoint"] + ex["treeBytesPerPoint"] + ex["indexBytesPerPoint"]
	ex["dayUnthinnedMetadataBytes"] = 86400 / float64(interval) * per
	ex["dayThinnedMetadataBytes"] = ex["keptPerDay"] * per
	ex["dayThinnedMetadataObjects"] = ex["keptPerDay"] * (ex["manifestObjectsPerPoint"] + ex["indexObjectsPerPoint"])
	return ex
}
