package store

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// PIT is a recovery snapshot: the version of every volume of a source server at one
// consistency point. Its manifest holds its sealed content (the fields below with a
// JSON name), which never changes and which Digest covers, and its lock, which can be
// extended. Each PIT of a server names the one sealed before it (Prev), so the PITs of
// a server form a hash chain (docs/store-format.md §7).
type PIT struct {
	ID         string            `json:"id"`
	Server     string            `json:"server"`
	Seq        uint64            `json:"seq"`            // 1 for the server's first PIT, then one more than Prev's
	Prev       *PITLink          `json:"prev,omitempty"` // the PIT sealed before this one; nil for the first
	Time       time.Time         `json:"time"`           // the consistency point
	Level      consistency.Level `json:"level"`
	Created    time.Time         `json:"created"`
	Volumes    []PITVolume       `json:"volumes"`
	AddedBytes int64             `json:"addedBytes"` // bytes this PIT added to the store
	Labels     map[string]string `json:"labels,omitempty"`

	// LockUntil is kept beside the sealed content: ProtectPIT extends it.
	LockUntil time.Time `json:"-"`
	// Digest identifies the sealed content (64 hex digits): set by SealPIT and by every
	// load. A caller that records it can load the PIT with LoadPITExpect, which refuses
	// any other content under the PIT's name.
	Digest string `json:"-"`
}

// PITLink names a PIT and the digest of its sealed content.
type PITLink struct {
	ID     string `json:"id"`
	Digest string `json:"digest"`
}

// PITVolume is one volume's version in a PIT.
type PITVolume struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"blockSize"`
	Root      ID     `json:"root"`
	RootLevel uint8  `json:"rootLevel"`
	// HeadVersion is the version of the volume's head object the PIT was sealed from:
	// a head older than that is a rollback.
	HeadVersion uint64 `json:"headVersion"`
}

// Ref is the volume version as the control plane records it.
func (v PITVolume) Ref() string {
	return fmt.Sprintf("v1:%s:%d", v.Root, v.RootLevel)
}

// Locked reports whether the PIT is locked at now.
func (p PIT) Locked(now time.Time) bool { return !p.LockUntil.IsZero() && now.Before(p.LockUntil) }

// Volume returns the named volume of the PIT.
func (p PIT) Volume(name string) (PITVolume, bool) {
	for _, v := range p.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return PITVolume{}, false
}

// SealRequest asks for a PIT of a server from its heads.
type SealRequest struct {
	ID        string    // pit-…; the control plane's id for it
	Server    string    // source server id
	Time      time.Time // consistency point
	Level     consistency.Level
	Heads     []*Head   // every volume of the server
	LockUntil time.Time // optional: locked until then
	Labels    map[string]string
}

// SealPIT makes a PIT of the heads as they are now: it checkpoints every head (so the
// trees are stored), then stores the PIT's manifest, chained to the server's previous
// PIT. The PIT exists once the manifest is stored: a crash before leaves no trace of
// it, a crash after leaves it whole.
func (r *Repo) SealPIT(ctx context.Context, req SealRequest) (PIT, error) {
	if !validPathName(req.ID) || !validPathName(req.Server) {
		return PIT{}, fmt.Errorf("PIT id %q or server id %q is not usable in object names", req.ID, req.Server)
	}
	if !req.Level.Valid() {
		return PIT{}, fmt.Errorf("consistency level %v is not filesystem, crash or none", req.Level)
	}
	if len(req.Heads) == 0 {
		return PIT{}, errors.New("a PIT needs at least one volume")
	}
	chain, err := r.acquireChain(ctx, req.Server)
	if err != nil {
		return PIT{}, fmt.Errorf("seal PIT %s: %w", req.ID, err)
	}
	defer r.releaseChain(req.Server, chain)
	chain.mu.Lock()
	defer chain.mu.Unlock()
	if err := r.loadChainLocked(ctx, req.Server, chain); err != nil {
		return PIT{}, fmt.Errorf("seal PIT %s: %w", req.ID, err)
	}
	pit := PIT{ID: req.ID, Server: req.Server, Seq: chain.seq + 1, Time: req.Time.UTC(), Level: req.Level,
		Created: r.opts.Now().UTC(), Labels: req.Labels}
	if chain.seq > 0 {
		pit.Prev = &PITLink{ID: chain.tip.ID, Digest: chain.tip.Digest}
	}
	if !req.LockUntil.IsZero() {
		pit.LockUntil = req.LockUntil.UTC()
	}
	seen := map[string]bool{}
	for _, h := range req.Heads {
		if h.server != req.Server {
			return PIT{}, fmt.Errorf("volume %s belongs to server %s, not %s", h.volume, h.server, req.Server)
		}
		if seen[h.volume] {
			return PIT{}, fmt.Errorf("volume %s is given twice", h.volume)
		}
		seen[h.volume] = true
		st, err := h.checkpoint(ctx)
		if err != nil {
			return PIT{}, fmt.Errorf("seal PIT %s: %w", req.ID, err)
		}
		pit.Volumes = append(pit.Volumes, PITVolume{Name: h.volume, Size: st.Size, BlockSize: r.cfg.BlockSize,
			Root: st.Root, RootLevel: st.RootLevel, HeadVersion: st.Version})
		pit.AddedBytes += h.added.Load()
	}
	sort.Slice(pit.Volumes, func(i, j int) bool { return pit.Volumes[i].Name < pit.Volumes[j].Name })
	content, err := json.Marshal(pit)
	if err != nil {
		return PIT{}, err
	}
	pit.Digest = manifestDigest(content)
	if err := r.putManifest(ctx, pit, content); err != nil {
		// It may be stored all the same: read the chain again before the next seal.
		chain.loaded = false
		return PIT{}, fmt.Errorf("seal PIT %s: %w", req.ID, err)
	}
	chain.note(pit)
	for _, h := range req.Heads {
		h.added.Store(0)
	}
	return pit, nil
}

// manifestDigest is the digest of a PIT's sealed content: BLAKE3 in key-derivation
// mode (so it is like no other hash the store makes) over the content's bytes as
// stored.
func manifestDigest(content []byte) string {
	var out [32]byte
	blake3.DeriveKey("lifeboat 2026-12-02 PIT manifest digest", content, out[:])
	return hex.EncodeToString(out[:])
}

// encodeManifest returns a manifest's plaintext: {"pit":CONTENT,"lockUntil":TIME}, the
// content byte for byte as given and the lock only when there is one.
func encodeManifest(content []byte, lockUntil time.Time) []byte {
	b := make([]byte, 0, len(content)+64)
	b = append(append(b, `{"pit":`...), content...)
	if !lockUntil.IsZero() {
		lb, _ := json.Marshal(lockUntil.UTC())
		b = append(append(b, `,"lockUntil":`...), lb...)
	}
	return append(b, '}')
}

// parseManifest decodes a manifest's plaintext into its PIT (Digest and LockUntil set)
// and the bytes of its sealed content, and checks what it can without the repository.
func parseManifest(plain []byte) (PIT, []byte, error) {
	var m struct {
		PIT       json.RawMessage `json:"pit"`
		LockUntil time.Time       `json:"lockUntil"`
	}
	var p PIT
	if err := json.Unmarshal(plain, &m); err != nil {
		return p, nil, formatErr("manifest does not decode: %v", err)
	}
	if len(m.PIT) == 0 || m.PIT[0] != '{' {
		return p, nil, formatErr("manifest holds no PIT")
	}
	if err := json.Unmarshal(m.PIT, &p); err != nil {
		return p, nil, formatErr("manifest's PIT does not decode: %v", err)
	}
	p.LockUntil, p.Digest = m.LockUntil, manifestDigest(m.PIT)
	if p.Seq == 0 || (p.Seq == 1) != (p.Prev == nil) {
		return p, nil, formatErr("PIT %s has sequence number %d and previous PIT %v", p.ID, p.Seq, p.Prev)
	}
	if p.Prev != nil && (!validPathName(p.Prev.ID) || !validDigest(p.Prev.Digest)) {
		return p, nil, formatErr("PIT %s names an invalid previous PIT %q (digest %q)", p.ID, p.Prev.ID, p.Prev.Digest)
	}
	if len(p.Volumes) == 0 {
		return p, nil, formatErr("PIT %s has no volume", p.ID)
	}
	for _, v := range p.Volumes {
		if v.Name == "" || len(v.Name) > 255 || v.Size < 0 || v.Size > MaxVolumeBytes || v.BlockSize <= 0 {
			return p, nil, formatErr("PIT %s: volume %q has size %d and block size %d", p.ID, v.Name, v.Size, v.BlockSize)
		}
	}
	return p, m.PIT, nil
}

func validDigest(s string) bool {
	_, err := hex.DecodeString(s)
	return len(s) == 64 && err == nil
}

// putManifest stores a PIT's manifest: its sealed content as given, and its lock.
func (r *Repo) putManifest(ctx context.Context, pit PIT, content []byte) error {
	var opts backend.PutOptions
	if r.be.Capabilities().Retention && pit.Locked(r.opts.Now()) {
		opts.RetainUntil = pit.LockUntil
	}
	return r.putSealed(ctx, snapshotName(pit.Server, pit.ID), encodeManifest(content, pit.LockUntil), opts)
}

// decodeManifest decodes the manifest object name and checks it against its name and
// the repository; it returns the PIT and its sealed content.
func (r *Repo) decodeManifest(name string, plain []byte) (PIT, []byte, error) {
	p, content, err := parseManifest(plain)
	if err != nil {
		return p, nil, corrupt(name, err)
	}
	if snapshotName(p.Server, p.ID) != name {
		return p, nil, corrupt(name, fmt.Errorf("manifest names PIT %s of server %s", p.ID, p.Server))
	}
	for _, v := range p.Volumes {
		if v.BlockSize != r.cfg.BlockSize {
			return p, nil, corrupt(name, fmt.Errorf("volume %s has block size %d", v.Name, v.BlockSize))
		}
		if _, level := r.treeShape(uint64((v.Size + int64(v.BlockSize) - 1) / int64(v.BlockSize))); level != v.RootLevel {
			return p, nil, corrupt(name, fmt.Errorf("volume %s: root level %d does not fit its size", v.Name, v.RootLevel))
		}
	}
	return p, content, nil
}

// loadManifest reads one PIT's manifest: the PIT and its sealed content.
func (r *Repo) loadManifest(ctx context.Context, server, id string) (PIT, []byte, error) {
	if !validPathName(server) || !validPathName(id) {
		return PIT{}, nil, fmt.Errorf("PIT %s of server %s: %w", id, server, ErrNotFound)
	}
	name := snapshotName(server, id)
	plain, err := r.getSealed(ctx, name)
	if errors.Is(err, backend.ErrNotFound) {
		return PIT{}, nil, fmt.Errorf("PIT %s of server %s: %w", id, server, ErrNotFound)
	}
	if err != nil {
		return PIT{}, nil, err
	}
	return r.decodeManifest(name, plain)
}

// LoadPIT reads one PIT's manifest.
func (r *Repo) LoadPIT(ctx context.Context, server, id string) (PIT, error) {
	p, _, err := r.loadManifest(ctx, server, id)
	return p, err
}

// LoadPITExpect reads one PIT's manifest and requires its digest to be digest (the
// PIT's Digest when it was sealed, as the caller recorded it). Another digest is an
// error wrapping ErrRollback: the manifest was replaced by another version.
func (r *Repo) LoadPITExpect(ctx context.Context, server, id, digest string) (PIT, error) {
	if !validDigest(digest) {
		return PIT{}, fmt.Errorf("PIT %s of server %s: %q is not a PIT digest (64 hex digits): give the digest recorded when it was sealed", id, server, digest)
	}
	p, err := r.LoadPIT(ctx, server, id)
	if err != nil {
		return p, err
	}
	if p.Digest != digest {
		return PIT{}, fmt.Errorf("%w: %s has digest %s, but digest %s was recorded when it was sealed: the manifest was replaced by another version (put back or forged by a holder of the key): restore it from a backup or the bucket's object versions, and do not recover from this PIT until then",
			ErrRollback, snapshotName(server, id), p.Digest, digest)
	}
	return p, nil
}

// ListPITs returns a server's PITs, oldest first.
func (r *Repo) ListPITs(ctx context.Context, server string) ([]PIT, error) {
	if !validPathName(server) {
		return nil, fmt.Errorf("server id %q is not valid", server)
	}
	pits, err := r.listManifests(ctx, snapshotPrefix(server))
	if err != nil {
		return nil, fmt.Errorf("list PITs of %s: %w", server, err)
	}
	sort.Slice(pits, func(i, j int) bool {
		if !pits[i].Time.Equal(pits[j].Time) {
			return pits[i].Time.Before(pits[j].Time)
		}
		return pits[i].ID < pits[j].ID
	})
	return pits, nil
}

// Servers lists the servers that have PITs or heads in the repository.
func (r *Repo) Servers(ctx context.Context) ([]string, error) {
	set := map[string]bool{}
	for _, prefix := range []string{"snapshots/", "heads/"} {
		if err := r.be.List(ctx, prefix, func(oi backend.ObjectInfo) error {
			rest := strings.TrimPrefix(oi.Name, prefix)
			if i := strings.IndexByte(rest, '/'); i > 0 {
				set[rest[:i]] = true
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out, nil
}

// DeletePIT removes a PIT's manifest; its chunks go with the next garbage collection.
// A locked PIT is refused with ErrLocked, whatever the backend can enforce — locked by
// its manifest or by its lock record (which keeps a lock when an unlocked manifest was
// put back).
func (r *Repo) DeletePIT(ctx context.Context, server, id string) error {
	p, err := r.LoadPIT(ctx, server, id)
	if err != nil {
		return err
	}
	now := r.opts.Now()
	if p.Locked(now) {
		return fmt.Errorf("PIT %s of server %s: %w until %s", id, server, ErrLocked, p.LockUntil.Format(time.RFC3339))
	}
	rec, err := r.loadLockRecord(ctx, server, id)
	if err != nil {
		return fmt.Errorf("delete PIT %s: %w", id, err)
	}
	if now.Before(rec.LockUntil) {
		return fmt.Errorf("PIT %s of server %s: %w until %s by its lock record %s, though its manifest is unlocked: an old manifest was put back (protect the PIT again to repair it; run lifeboat store verify)",
			id, server, ErrLocked, rec.LockUntil.Format(time.RFC3339), lockName(server, id))
	}
	if err := r.be.Delete(ctx, snapshotName(server, id)); err != nil {
		return fmt.Errorf("delete PIT %s: %w", id, err)
	}
	if !rec.LockUntil.IsZero() {
		if err := r.be.Delete(ctx, lockName(server, id)); err != nil {
			r.log.Warn("could not remove the expired lock record of a deleted PIT", "object", lockName(server, id), "err", err)
		}
	}
	return nil
}

// ProtectPIT locks a PIT until the given time (a lock can be extended, never
// shortened). Where the backend has object retention, the manifest and every pack
// holding the PIT's chunks are retained by the backend too; elsewhere the store
// enforces the lock (DeletePIT, retention and GC keep it). The manifest's sealed
// content, and so its digest, do not change; the lock is written to the manifest and,
// once the PIT's data is retained, to its lock record (docs/store-format.md §7).
func (r *Repo) ProtectPIT(ctx context.Context, server, id string, until time.Time) (PIT, error) {
	p, content, err := r.loadManifest(ctx, server, id)
	if err != nil {
		return p, err
	}
	rec, err := r.loadLockRecord(ctx, server, id)
	if err != nil {
		return p, fmt.Errorf("lock PIT %s: %w", id, err)
	}
	if rec.LockUntil.After(p.LockUntil) {
		r.log.Warn("a PIT's lock record keeps a longer lock than its manifest: an old manifest was put back; the manifest is repaired",
			"object", snapshotName(server, id), "manifest", p.LockUntil, "record", rec.LockUntil)
	}
	lock := until.UTC()
	for _, t := range []time.Time{p.LockUntil, rec.LockUntil} {
		if t.After(lock) {
			lock = t
		}
	}
	if lock.Equal(p.LockUntil) && lock.Equal(rec.LockUntil) {
		return p, nil // locked that long already
	}
	if !lock.Equal(p.LockUntil) {
		p.LockUntil = lock
		if err := r.putManifest(ctx, p, content); err != nil {
			return p, fmt.Errorf("lock PIT %s: %w", id, err)
		}
	}
	if r.be.Capabilities().Retention {
		packs := map[ID]bool{}
		if err := r.walkPIT(ctx, p, func(id ID, _ blobType) error {
			if _, pack, ok := r.lookup(id); ok {
				packs[pack] = true
			}
			return nil
		}); err != nil {
			return p, err
		}
		for pack := range packs {
			if err := r.be.Retain(ctx, packName(pack), p.LockUntil); err != nil {
				return p, fmt.Errorf("lock the data of PIT %s: %w", id, err)
			}
		}
	}
	// The record last: it never claims more than the manifest and the packs hold.
	if err := r.putLockRecord(ctx, lockRecord{Server: server, PIT: id, Digest: p.Digest, LockUntil: p.LockUntil}); err != nil {
		return p, fmt.Errorf("lock PIT %s: %w", id, err)
	}
	return p, nil
}

// lockRecord is the object locks/SERVER/PIT: the longest lock a PIT was given, kept
// apart from its manifest so that a manifest put back to an older, unlocked version is
// caught (by DeletePIT and Verify). Backends with retention retain it until then.
type lockRecord struct {
	Server    string    `json:"server"`
	PIT       string    `json:"pit"`
	Digest    string    `json:"digest"` // of the PIT's sealed content
	LockUntil time.Time `json:"lockUntil"`
}

func lockName(server, pit string) string { return "locks/" + server + "/" + pit }

func decodeLockRecord(name string, plain []byte) (lockRecord, error) {
	var rec lockRecord
	if err := json.Unmarshal(plain, &rec); err != nil {
		return rec, corrupt(name, formatErr("lock record does not decode: %v", err))
	}
	if !validPathName(rec.Server) || !validPathName(rec.PIT) || lockName(rec.Server, rec.PIT) != name ||
		!validDigest(rec.Digest) || rec.LockUntil.IsZero() {
		return rec, corrupt(name, formatErr("lock record names PIT %q of server %q until %s", rec.PIT, rec.Server, rec.LockUntil))
	}
	return rec, nil
}

// loadLockRecord reads a PIT's lock record; none is the zero record.
func (r *Repo) loadLockRecord(ctx context.Context, server, pit string) (lockRecord, error) {
	name := lockName(server, pit)
	plain, err := r.getSealed(ctx, name)
	if errors.Is(err, backend.ErrNotFound) {
		return lockRecord{}, nil
	}
	if err != nil {
		return lockRecord{}, err
	}
	return decodeLockRecord(name, plain)
}

func (r *Repo) putLockRecord(ctx context.Context, rec lockRecord) error {
	var opts backend.PutOptions
	if r.be.Capabilities().Retention {
		opts.RetainUntil = rec.LockUntil
	}
	b, _ := json.Marshal(rec)
	return r.putSealed(ctx, lockName(rec.Server, rec.PIT), b, opts)
}

// walkPIT calls fn for every tree node and data chunk a PIT references (each node
// once per PIT; data chunks once per occurrence).
func (r *Repo) walkPIT(ctx context.Context, p PIT, fn func(ID, blobType) error) error {
	for _, v := range p.Volumes {
		if err := r.walkTree(ctx, v.Root, v.RootLevel, fn); err != nil {
			return fmt.Errorf("PIT %s volume %s: %w", p.ID, v.Name, err)
		}
	}
	return nil
}

func (r *Repo) walkTree(ctx context.Context, root ID, level uint8, fn func(ID, blobType) error) error {
	if root.IsZero() {
		return nil
	}
	if err := fn(root, blobTree); err != nil {
		return err
	}
	children, err := r.loadNode(ctx, root, level)
	if err != nil {
		return err
	}
	for _, c := range children {
		if c.IsZero() {
			continue
		}
		if level == 0 {
			if err := fn(c, blobData); err != nil {
				return err
			}
		} else if err := r.walkTree(ctx, c, level-1, fn); err != nil {
			return err
		}
	}
	return nil
}
