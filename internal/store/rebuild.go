package store

import (
	"context"
	"fmt"
	"strings"

	"github.com/zeebo/blake3"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// RebuildStats reports what RebuildIndex did.
type RebuildStats struct {
	Packs      int      `json:"packs"`
	Chunks     int      `json:"chunks"`
	Unreadable []string `json:"unreadable"` // packs whose own index could not be read: their chunks are lost
	OldIndex   int      `json:"oldIndex"`   // index objects replaced
	NewIndex   int      `json:"newIndex"`
}

// RebuildIndex replaces the index with one read from every pack's own index (its
// trailer): the remedy for lost or corrupt index objects. Run it while no replicator
// writes (it replaces index objects written before it listed them).
func (r *Repo) RebuildIndex(ctx context.Context) (RebuildStats, error) {
	var st RebuildStats
	var old []string
	if err := r.be.List(ctx, "index/", func(oi backend.ObjectInfo) error {
		old = append(old, oi.Name)
		return nil
	}); err != nil {
		return st, err
	}
	var packs []backend.ObjectInfo
	if err := r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		packs = append(packs, oi)
		return nil
	}); err != nil {
		return st, err
	}
	var all []packEntries
	for _, oi := range packs {
		id, err := ParseID(oi.Name[strings.LastIndexByte(oi.Name, '/')+1:])
		if err != nil {
			continue
		}
		entries, err := r.readTrailer(ctx, oi.Name, id, oi.Size)
		if err != nil {
			if isBackendFailure(err) {
				return st, err
			}
			st.Unreadable = append(st.Unreadable, fmt.Sprintf("%s: %v", oi.Name, err))
			continue
		}
		st.Packs++
		st.Chunks += len(entries)
		all = append(all, packEntries{Pack: id, Entries: entries})
	}
	wrote := map[string]bool{}
	for i := 0; i < len(all); {
		n, j := 0, i
		for j < len(all) && (n == 0 || n+len(all[j].Entries) <= 50000) {
			n += len(all[j].Entries)
			j++
		}
		plain := encodeIndex(all[i:j])
		name := indexName(ID(blake3.Sum256(plain)))
		if err := r.putSealed(ctx, name, plain, backend.PutOptions{}); err != nil {
			return st, fmt.Errorf("write the rebuilt index: %w", err)
		}
		wrote[name] = true
		st.NewIndex++
		i = j
	}
	for _, name := range old {
		if wrote[name] {
			continue
		}
		if err := r.be.Delete(ctx, name); err != nil {
			return st, fmt.Errorf("remove old index object: %w", err)
		}
		st.OldIndex++
	}
	return st, r.refreshView(ctx, true)
}

// readTrailer reads a pack's own index from the backend.
func (r *Repo) readTrailer(ctx context.Context, name string, id ID, size int64) ([]entry, error) {
	entries, _, err := r.readTrailerWith(name, id, size, func(off, n int64) ([]byte, error) { return r.be.ReadAt(ctx, name, off, n) })
	return entries, err
}

// readTrailerWith reads the own index of pack id (stored as name) with read (from the
// backend or a pack in memory), and returns it and where the sealed trailer begins.
// Damage is a CorruptError naming the pack.
func (r *Repo) readTrailerWith(name string, id ID, size int64, read func(off, n int64) ([]byte, error)) ([]entry, int64, error) {
	if size < int64(packHeaderSize+packFooterSize) {
		return nil, 0, corrupt(name, fmt.Errorf("%d bytes is too short for a pack (truncated)", size))
	}
	footer, err := read(size-packFooterSize, packFooterSize)
	if err != nil {
		return nil, 0, err
	}
	tlen, err := decodeFooter(footer, size)
	if err != nil {
		return nil, 0, corrupt(name, err)
	}
	tstart := size - packFooterSize - tlen
	sealed, err := read(tstart, tlen)
	if err != nil {
		return nil, 0, err
	}
	plain, err := r.keys.open(nil, sealed, trailerAAD(id))
	if err != nil {
		return nil, 0, corrupt(name, fmt.Errorf("its own index %w (damaged, or the trailer of another pack)", err))
	}
	entries, err := decodeTrailer(plain, tstart)
	if err != nil {
		return nil, 0, corrupt(name, err)
	}
	return entries, tstart, nil
}
