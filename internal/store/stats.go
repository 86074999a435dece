package store

import (
	"context"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// ServerStats is how much one source server's PITs cost.
type ServerStats struct {
	Server string `json:"server"`
	PITs   int    `json:"pits"`
	// LogicalBytes: the data (non-zero blocks) of the newest PIT.
	LogicalBytes int64 `json:"logicalBytes"`
	// ReferencedBytes: the data of every PIT added up: what full copies would cost.
	ReferencedBytes int64 `json:"referencedBytes"`
	// UniqueBytes: the distinct chunks the PITs reference, uncompressed.
	UniqueBytes int64 `json:"uniqueBytes"`
	// StoredBytes: those chunks as stored (compressed, encrypted), plus tree nodes.
	StoredBytes   int64 `json:"storedBytes"`
	MetadataBytes int64 `json:"metadataBytes"` // tree nodes, as stored
	// DedupRatio is ReferencedBytes / UniqueBytes; CompressionRatio is UniqueBytes /
	// stored data bytes.
	DedupRatio       float64 `json:"dedupRatio"`
	CompressionRatio float64 `json:"compressionRatio"`
}

// Stats is the repository's size, in total and per server.
type Stats struct {
	Packs       int           `json:"packs"`
	PackBytes   int64         `json:"packBytes"` // everything stored in packs
	Chunks      int           `json:"chunks"`
	RawBytes    int64         `json:"rawBytes"`    // all indexed chunks, uncompressed
	StoredBytes int64         `json:"storedBytes"` // all indexed chunks, as stored
	Servers     []ServerStats `json:"servers"`
}

// Stats computes the repository's statistics by walking every PIT.
func (r *Repo) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	if err := r.refreshView(ctx, false); err != nil {
		return st, err
	}
	if err := r.be.List(ctx, "data/", func(oi backend.ObjectInfo) error {
		st.Packs++
		st.PackBytes += oi.Size
		return nil
	}); err != nil {
		return st, err
	}
	r.mu.RLock()
	st.Chunks, st.RawBytes, st.StoredBytes = r.ix.all.chunks, r.ix.all.raw, r.ix.all.stored
	r.mu.RUnlock()
	servers, err := r.Servers(ctx)
	if err != nil {
		return st, err
	}
	for _, server := range servers {
		pits, err := r.ListPITs(ctx, server)
		if err != nil {
			return st, err
		}
		ss := ServerStats{Server: server, PITs: len(pits)}
		unique := map[ID]bool{}
		nodes := map[ID]bool{}
		// A leaf's non-zero data bytes, remembered across PITs (most leaves are shared).
		leafBytes := map[ID]int64{}
		for i, p := range pits {
			var pitBytes int64
			for _, v := range p.Volumes {
				err := r.walkLeaves(ctx, v.Root, v.RootLevel, func(leaf ID) error {
					if n, ok := leafBytes[leaf]; ok {
						pitBytes += n
						return nil
					}
					children, err := r.loadNode(ctx, leaf, 0)
					if err != nil {
						return err
					}
					var n int64
					for _, c := range children {
						if c.IsZero() {
							continue
						}
						l, _, ok := r.lookup(c)
						if !ok {
							return fmt.Errorf("PIT %s: chunk %s: %w", p.ID, c, ErrNotFound)
						}
						n += int64(l.rawLen)
						if !unique[c] {
							unique[c] = true
							ss.UniqueBytes += int64(l.rawLen)
							ss.StoredBytes += int64(l.length)
						}
					}
					leafBytes[leaf] = n
					pitBytes += n
					return nil
				}, func(node ID) {
					if !nodes[node] {
						nodes[node] = true
						if l, _, ok := r.lookup(node); ok {
							ss.MetadataBytes += int64(l.length)
						}
					}
				})
				if err != nil {
					return st, err
				}
			}
			ss.ReferencedBytes += pitBytes
			if i == len(pits)-1 {
				ss.LogicalBytes = pitBytes
			}
		}
		if ss.UniqueBytes > 0 {
			ss.DedupRatio = float64(ss.ReferencedBytes) / float64(ss.UniqueBytes)
		}
		if ss.StoredBytes > 0 {
			ss.CompressionRatio = float64(ss.UniqueBytes) / float64(ss.StoredBytes)
		}
		ss.StoredBytes += ss.MetadataBytes
		st.Servers = append(st.Servers, ss)
	}
	return st, nil
}

// walkLeaves calls leaf for every distinct non-zero leaf under root (in order) and
// node for every tree node including the leaves.
func (r *Repo) walkLeaves(ctx context.Context, root ID, level uint8, leaf func(ID) error, node func(ID)) error {
	if root.IsZero() {
		return nil
	}
	node(root)
	if level == 0 {
		return leaf(root)
	}
	children, err := r.loadNode(ctx, root, level)
	if err != nil {
		return err
	}
	for _, c := range children {
		if err := r.walkLeaves(ctx, c, level-1, leaf, node); err != nil {
			return err
		}
	}
	return nil
}
