package store

import (
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/store/chunkindex"
)

// chunkMap is where the repository looks a chunk up (docs/store-format.md §12): in RAM
// (memMap, the default) or in an on-disk chunk index (diskMap, Options.IndexDir), so
// that a replicator's memory does not grow with the store.
type chunkMap interface {
	// get returns where id is. An error is the local index failing (I/O, checksum):
	// the store's index objects are intact, and the map is rebuilt from them.
	get(id ID) (loc, bool, error)
	// put records where id is; the caller checks first that it is not there.
	put(id ID, l loc) error
	// addPack is told of each pack before the first chunk that names it is put: the
	// disk index records pack numbers durably (diskindex.go).
	addPack(id ID) error
	close() error
}

// memMap keeps the chunk index in a Go map: 60–120 bytes of RAM per chunk.
type memMap map[ID]loc

func (m memMap) get(id ID) (loc, bool, error) { l, ok := m[id]; return l, ok, nil }
func (m memMap) put(id ID, l loc) error       { m[id] = l; return nil }
func (m memMap) addPack(ID) error             { return nil }
func (m memMap) close() error                 { return nil }

// indexState is the repository's view of its index: which chunks are where, the packs
// they are in (numbered as the view met them), and which index objects it holds. A
// rebuild makes a new one and swaps it in whole.
type indexState struct {
	chunks  chunkMap
	data    indexSize     // the data chunks (counters.go)
	all     indexSize     // every chunk, tree nodes too
	packIDs []ID          // pack number → pack id
	packNum map[ID]uint32 // pack id → number
	loaded  map[string]bool
}

func newIndexState(chunks chunkMap) indexState {
	return indexState{chunks: chunks, packNum: map[ID]uint32{}, loaded: map[string]bool{}}
}

// addPack records a pack's chunks. A chunk already known keeps its location.
func (s *indexState) addPack(pack ID, entries []entry) error {
	n, ok := s.packNum[pack]
	if !ok {
		if err := s.chunks.addPack(pack); err != nil {
			return err
		}
		n = uint32(len(s.packIDs))
		s.packIDs = append(s.packIDs, pack)
		s.packNum[pack] = n
	}
	for _, e := range entries {
		_, dup, err := s.chunks.get(e.ID)
		if err != nil {
			return err
		}
		if dup {
			continue
		}
		if err := s.chunks.put(e.ID, loc{pack: n, offset: e.Offset, length: e.Length, rawLen: e.RawLen, typ: e.Type}); err != nil {
			return err
		}
		s.data.add(e)
		s.all.chunks++
		s.all.raw += int64(e.RawLen)
		s.all.stored += int64(e.Length)
	}
	return nil
}

// toIndexLoc and fromIndexLoc convert between the store's loc and the disk index's.
func toIndexLoc(l loc) chunkindex.Loc {
	return chunkindex.Loc{Pack: l.pack, Offset: l.offset, Length: l.length, RawLen: l.rawLen, Type: uint8(l.typ)}
}

func fromIndexLoc(l chunkindex.Loc) loc {
	return loc{pack: l.Pack, offset: l.Offset, length: l.Length, rawLen: l.RawLen, typ: blobType(l.Type)}
}

// packOf returns the id of pack number n.
func (s *indexState) packOf(n uint32) (ID, error) {
	if int(n) >= len(s.packIDs) {
		return ID{}, fmt.Errorf("the local chunk index names pack number %d of %d", n, len(s.packIDs))
	}
	return s.packIDs[n], nil
}
