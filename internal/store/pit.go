package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// Consistency levels of a PIT (DESIGN §1).
const (
	LevelFilesystem = "filesystem"
	LevelCrash      = "crash"
	LevelNone       = "none"
)

// PIT is a recovery snapshot: the version of every volume of a source server at one
// consistency point. Once its manifest is stored it never changes, except that its
// lock can be extended.
type PIT struct {
	ID         string            `json:"id"`
	Server     string            `json:"server"`
	Time       time.Time         `json:"time"`  // the consistency point
	Level      string            `json:"level"` // filesystem, crash or none
	Created    time.Time         `json:"created"`
	LockUntil  time.Time         `json:"lockUntil,omitzero"`
	Volumes    []PITVolume       `json:"volumes"`
	AddedBytes int64             `json:"addedBytes"` // bytes this PIT added to the store
	Labels     map[string]string `json:"labels,omitempty"`
}

// PITVolume is one volume's version in a PIT.
type PITVolume struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"blockSize"`
	Root      ID     `json:"root"`
	RootLevel uint8  `json:"rootLevel"`
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
	Level     string    // filesystem, crash or none
	Heads     []*Head   // every volume of the server
	LockUntil time.Time // optional: locked until then
	Labels    map[string]string
}

// SealPIT makes a PIT of the heads as they are now: it checkpoints every head (so the
// trees are stored), then stores the PIT's manifest. The PIT exists once the manifest
// is stored: a crash before leaves no trace of it, a crash after leaves it whole.
func (r *Repo) SealPIT(ctx context.Context, req SealRequest) (PIT, error) {
	if !validPathName(req.ID) || !validPathName(req.Server) {
		return PIT{}, fmt.Errorf("PIT id %q or server id %q is not usable in object names", req.ID, req.Server)
	}
	switch req.Level {
	case LevelFilesystem, LevelCrash, LevelNone:
	default:
		return PIT{}, fmt.Errorf("consistency level %q is not filesystem, crash or none", req.Level)
	}
	if len(req.Heads) == 0 {
		return PIT{}, errors.New("a PIT needs at least one volume")
	}
	pit := PIT{ID: req.ID, Server: req.Server, Time: req.Time.UTC(), Level: req.Level,
		Created: r.opts.Now().UTC(), LockUntil: req.LockUntil.UTC(), Labels: req.Labels}
	if req.LockUntil.IsZero() {
		pit.LockUntil = time.Time{}
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
			Root: st.Root, RootLevel: st.RootLevel})
		pit.AddedBytes += h.added.Load()
	}
	sort.Slice(pit.Volumes, func(i, j int) bool { return pit.Volumes[i].Name < pit.Volumes[j].Name })
	if err := r.putManifest(ctx, pit); err != nil {
		return PIT{}, fmt.Errorf("seal PIT %s: %w", req.ID, err)
	}
	for _, h := range req.Heads {
		h.added.Store(0)
	}
	return pit, nil
}

func (r *Repo) putManifest(ctx context.Context, pit PIT) error {
	b, err := json.Marshal(pit)
	if err != nil {
		return err
	}
	var opts backend.PutOptions
	if r.be.Capabilities().Retention && pit.Locked(r.opts.Now()) {
		opts.RetainUntil = pit.LockUntil
	}
	return r.putSealed(ctx, snapshotName(pit.Server, pit.ID), b, opts)
}

func (r *Repo) decodeManifest(name string, plain []byte) (PIT, error) {
	var p PIT
	if err := json.Unmarshal(plain, &p); err != nil {
		return p, corrupt(name, err)
	}
	if snapshotName(p.Server, p.ID) != name || len(p.Volumes) == 0 {
		return p, corrupt(name, fmt.Errorf("manifest names PIT %s of server %s", p.ID, p.Server))
	}
	for _, v := range p.Volumes {
		if v.Size < 0 || v.BlockSize != r.cfg.BlockSize {
			return p, corrupt(name, fmt.Errorf("volume %s has size %d and block size %d", v.Name, v.Size, v.BlockSize))
		}
		if _, level := r.treeShape(uint64((v.Size + int64(v.BlockSize) - 1) / int64(v.BlockSize))); level != v.RootLevel {
			return p, corrupt(name, fmt.Errorf("volume %s: root level %d does not fit its size", v.Name, v.RootLevel))
		}
	}
	return p, nil
}

// LoadPIT reads one PIT's manifest.
func (r *Repo) LoadPIT(ctx context.Context, server, id string) (PIT, error) {
	if !validPathName(server) || !validPathName(id) {
		return PIT{}, fmt.Errorf("PIT %s of server %s: %w", id, server, ErrNotFound)
	}
	name := snapshotName(server, id)
	plain, err := r.getSealed(ctx, name)
	if errors.Is(err, backend.ErrNotFound) {
		return PIT{}, fmt.Errorf("PIT %s of server %s: %w", id, server, ErrNotFound)
	}
	if err != nil {
		return PIT{}, err
	}
	return r.decodeManifest(name, plain)
}

// ListPITs returns a server's PITs, oldest first.
func (r *Repo) ListPITs(ctx context.Context, server string) ([]PIT, error) {
	if !validPathName(server) {
		return nil, fmt.Errorf("server id %q is not valid", server)
	}
	var names []string
	if err := r.be.List(ctx, snapshotPrefix(server), func(oi backend.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list PITs of %s: %w", server, err)
	}
	pits := make([]PIT, 0, len(names))
	for _, name := range names {
		plain, err := r.getSealed(ctx, name)
		if errors.Is(err, backend.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		p, err := r.decodeManifest(name, plain)
		if err != nil {
			return nil, err
		}
		pits = append(pits, p)
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
// A locked PIT is refused with ErrLocked, whatever the backend can enforce.
func (r *Repo) DeletePIT(ctx context.Context, server, id string) error {
	p, err := r.LoadPIT(ctx, server, id)
	if err != nil {
		return err
	}
	if p.Locked(r.opts.Now()) {
		return fmt.Errorf("PIT %s of server %s: %w until %s", id, server, ErrLocked, p.LockUntil.Format(time.RFC3339))
	}
	if err := r.be.Delete(ctx, snapshotName(server, id)); err != nil {
		return fmt.Errorf("delete PIT %s: %w", id, err)
	}
	return nil
}

// ProtectPIT locks a PIT until the given time (a lock can be extended, never
// shortened). Where the backend has object retention, the manifest and every pack
// holding the PIT's chunks are retained by the backend too; elsewhere the store
// enforces the lock (DeletePIT, retention and GC keep it).
func (r *Repo) ProtectPIT(ctx context.Context, server, id string, until time.Time) (PIT, error) {
	p, err := r.LoadPIT(ctx, server, id)
	if err != nil {
		return p, err
	}
	if !p.LockUntil.IsZero() && !until.After(p.LockUntil) {
		return p, nil
	}
	p.LockUntil = until.UTC()
	if err := r.putManifest(ctx, p); err != nil {
		return p, fmt.Errorf("lock PIT %s: %w", id, err)
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
	return p, nil
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
