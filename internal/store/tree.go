package store

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

// chunkAAD binds a sealed chunk to its type and id: a chunk moved to another id or
// type does not authenticate.
func chunkAAD(typ blobType, id ID) []byte {
	var aad [33]byte
	aad[0] = byte(typ)
	copy(aad[1:], id[:])
	return aad[:]
}

// sealChunk compresses and encrypts a chunk's plaintext into a buffer of its own;
// scratch (may be nil) holds the compressed form.
func (r *Repo) sealChunk(codec Codec, typ blobType, id ID, plain []byte, scratch []byte) []byte {
	comp := r.codecs.compress(scratch[:0], codec, plain)
	return r.keys.seal(make([]byte, 0, len(comp)+sealOverhead), comp, chunkAAD(typ, id))
}

// sealPrecompressed encrypts a chunk whose compressed form the caller made into a
// buffer of its own; scratch (may be nil) holds the codec byte and the compressed form.
func (r *Repo) sealPrecompressed(codec Codec, typ blobType, id ID, comp []byte, scratch []byte) []byte {
	plain := append(append(scratch[:0], byte(codec)), comp...)
	return r.keys.seal(make([]byte, 0, len(plain)+sealOverhead), plain, chunkAAD(typ, id))
}

// storeChunk stores a chunk unless it is already stored (and not condemned) or
// pending. It returns the id, the pack generation to wait for (0: already durable),
// and the bytes added to the store.
func (r *Repo) storeChunk(ctx context.Context, typ blobType, plain []byte) (ID, uint64, int, error) {
	id := r.keys.id(plain)
	if g, ok := r.packer.has(id); ok {
		return id, g, 0, nil
	}
	if r.dedupable(id) {
		return id, 0, 0, nil
	}
	sealed := r.sealChunk(r.codec, typ, id, plain, nil)
	g, err := r.packer.add(ctx, id, typ, len(plain), sealed)
	return id, g, len(sealed), err
}

// readChunk returns the plaintext of a chunk, appended to dst.
func (r *Repo) readChunk(ctx context.Context, id ID, typ blobType, dst []byte) ([]byte, error) {
	var tried ID // the pack last found missing
	for attempt := 0; ; attempt++ {
		l, pack, ok := r.lookup(id)
		if !ok {
			if attempt == 0 {
				// Perhaps written or moved by another process since we loaded the index.
				if err := r.refreshView(ctx, false); err != nil {
					return nil, err
				}
				continue
			}
			return nil, fmt.Errorf("chunk %s: %w (the repository lost data it references: run lifeboat store verify)", id, ErrNotFound)
		}
		sealed, err := r.be.ReadAt(ctx, packName(pack), int64(l.offset), int64(l.length))
		if err != nil {
			// A garbage collection repacked it: reload the index and retry — again while
			// the index moves it on (collections one after another), never for a pack
			// found missing twice.
			if errors.Is(err, backend.ErrNotFound) && pack != tried && attempt < 5 {
				tried = pack
				if err := r.refreshView(ctx, true); err != nil {
					return nil, err
				}
				continue
			}
			return nil, fmt.Errorf("read chunk %s: %w", id, err)
		}
		return r.openChunk(sealed, l, id, typ, packName(pack), dst)
	}
}

// openChunk decrypts and decompresses a sealed chunk read from a pack.
func (r *Repo) openChunk(sealed []byte, l loc, id ID, typ blobType, packObj string, dst []byte) ([]byte, error) {
	if l.typ != typ {
		return nil, corrupt(packObj, fmt.Errorf("chunk %s is a %d, not a %d", id, l.typ, typ))
	}
	comp, err := r.keys.open(nil, sealed, chunkAAD(typ, id))
	if err != nil {
		return nil, corrupt(packObj, fmt.Errorf("chunk %s at offset %d: %w", id, l.offset, err))
	}
	out, err := r.codecs.decompress(dst, comp, int(l.rawLen))
	if err != nil {
		return nil, corrupt(packObj, fmt.Errorf("chunk %s at offset %d: %w", id, l.offset, err))
	}
	return out, nil
}

// storeNode stores a tree node; a node whose children are all zero is the zero id.
func (r *Repo) storeNode(ctx context.Context, level uint8, ids []ID) (ID, uint64, int, error) {
	zero := true
	for i := range ids {
		if !ids[i].IsZero() {
			zero = false
			break
		}
	}
	if zero {
		return ID{}, 0, 0, nil
	}
	id, g, n, err := r.storeChunk(ctx, blobTree, encodeNode(level, ids))
	if err == nil {
		r.nodes.put(id, ids)
	}
	return id, g, n, err
}

// loadNode returns a node's children. The zero id has fanout zero children.
func (r *Repo) loadNode(ctx context.Context, id ID, level uint8) ([]ID, error) {
	if id.IsZero() {
		return make([]ID, r.cfg.Fanout), nil
	}
	if ids, ok := r.nodes.get(id); ok {
		return ids, nil
	}
	plain, err := r.readChunk(ctx, id, blobTree, nil)
	if err != nil {
		return nil, err
	}
	ids, err := decodeNode(plain, level, r.cfg.Fanout)
	if err != nil {
		return nil, corrupt("tree node "+id.String(), err)
	}
	if len(ids) != r.cfg.Fanout {
		return nil, corrupt("tree node "+id.String(), fmt.Errorf("%d children, not %d", len(ids), r.cfg.Fanout))
	}
	r.nodes.put(id, ids)
	return ids, nil
}

// treeShape returns the number of leaves of a volume of nblocks blocks and the level of
// its root (0 when one leaf is the root).
func (r *Repo) treeShape(nblocks uint64) (nleaves uint64, rootLevel uint8) {
	f := uint64(r.cfg.Fanout)
	nleaves = max((nblocks+f-1)/f, 1)
	for n := nleaves; n > 1; n = (n + f - 1) / f {
		rootLevel++
	}
	return nleaves, rootLevel
}

// buildTree stores the interior nodes above leaves and returns the root. It returns the
// highest pack generation the nodes went into. Its work is proportional to the non-zero
// leaves: zero regions of a volume are the zero id at every level.
func (r *Repo) buildTree(ctx context.Context, leaves *idTable) (ID, uint8, uint64, int, error) {
	f := r.cfg.Fanout
	level := uint8(0)
	ids := leaves
	var maxGen uint64
	added := 0
	for ids.len() > 1 {
		level++
		next := newIDTable((ids.len()+uint64(f)-1)/uint64(f), f)
		err := ids.groups(f, func(g uint64, children []ID) error {
			group := make([]ID, f) // the node cache keeps it: a copy of its own
			copy(group, children)
			id, gen, n, err := r.storeNode(ctx, level, group)
			if err != nil {
				return err
			}
			maxGen = max(maxGen, gen)
			added += n
			next.set(g, id)
			return nil
		})
		if err != nil {
			return ID{}, 0, 0, 0, err
		}
		ids = next
	}
	return ids.get(0), level, maxGen, added, nil
}

// loadLeaves returns the ids of the nleaves leaves under root. Zero subtrees are not
// walked, so a sparse volume loads in time and memory proportional to what it holds.
func (r *Repo) loadLeaves(ctx context.Context, root ID, rootLevel uint8, nleaves uint64) (*idTable, error) {
	f := uint64(r.cfg.Fanout)
	t := newIDTable(nleaves, r.cfg.Fanout)
	if rootLevel == 0 {
		t.set(0, root)
		return t, nil
	}
	var walk func(id ID, level uint8, first, span uint64) error
	walk = func(id ID, level uint8, first, span uint64) error {
		children, err := r.loadNode(ctx, id, level)
		if err != nil {
			return err
		}
		for i, c := range children {
			at := first + uint64(i)*span // the first leaf under c
			if at >= nleaves {
				return nil
			}
			if c.IsZero() {
				continue
			}
			if level == 1 {
				t.set(at, c)
			} else if err := walk(c, level-1, at, span/f); err != nil {
				return err
			}
		}
		return nil
	}
	span := uint64(1) // leaves under a child of the root
	for l := uint8(1); l < rootLevel; l++ {
		span *= f
	}
	if err := walk(root, rootLevel, 0, span); err != nil {
		return nil, err
	}
	return t, nil
}

// nodeCache keeps recently used tree nodes, decoded.
type nodeCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[ID]*list.Element
}

type nodeCacheEntry struct {
	id  ID
	ids []ID
}

func newNodeCache(max int) *nodeCache {
	return &nodeCache{max: max, ll: list.New(), m: map[ID]*list.Element{}}
}

func (c *nodeCache) get(id ID) ([]ID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*nodeCacheEntry).ids, true
	}
	return nil, false
}

func (c *nodeCache) put(id ID, ids []ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		return
	}
	c.m[id] = c.ll.PushFront(&nodeCacheEntry{id: id, ids: ids})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.m, e.Value.(*nodeCacheEntry).id)
	}
}
