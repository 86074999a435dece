package store

import "slices"

// idTable holds one level of a volume's tree: the ids of its leaves, or of the nodes of
// a level above them. Its ids live in pages that are allocated when a non-zero id is
// stored into them, so a table costs what the volume holds, not what it declares: a
// fresh or sparse volume of 64 TiB costs a few hundred page pointers.
type idTable struct {
	n     uint64
	per   uint64 // ids per page: a multiple of the fanout, so a node's children share a page
	pages [][]ID // nil: every id of the page is the zero id
}

// idPageMin is the fewest ids a page holds (128 KiB of ids); pages hold a whole number
// of nodes' worth of children.
const idPageMin = 4096

func newIDTable(n uint64, fanout int) *idTable {
	f := uint64(fanout)
	per := (idPageMin + f - 1) / f * f
	return &idTable{n: n, per: per, pages: make([][]ID, (n+per-1)/per)}
}

func (t *idTable) len() uint64 { return t.n }

func (t *idTable) get(i uint64) ID {
	if p := t.pages[i/t.per]; p != nil {
		return p[i%t.per]
	}
	return ID{}
}

func (t *idTable) set(i uint64, id ID) {
	k := i / t.per
	p := t.pages[k]
	if p == nil {
		if id.IsZero() {
			return
		}
		p = make([]ID, t.pageLen(k))
		t.pages[k] = p
	}
	p[i%t.per] = id
}

// pageLen is the number of ids page k holds: per, or fewer for the last page.
func (t *idTable) pageLen(k uint64) uint64 { return min(t.per, t.n-k*t.per) }

// resize changes the number of ids. Ids past a shrunk end are forgotten, so growing
// again shows zero ids.
func (t *idTable) resize(n uint64) {
	oldLast := uint64(len(t.pages)) - 1
	np := (n + t.per - 1) / t.per
	if np < uint64(len(t.pages)) {
		clear(t.pages[np:])
		t.pages = t.pages[:np]
	}
	for uint64(len(t.pages)) < np {
		t.pages = append(t.pages, nil)
	}
	t.n = n
	// The old last page and the new one may hold a part of a page: fit them.
	for _, k := range []uint64{oldLast, np - 1} {
		if k >= np || t.pages[k] == nil {
			continue
		}
		p, want := t.pages[k], t.pageLen(k)
		if uint64(len(p)) > want {
			clear(p[want:])
			p = p[:want]
		} else {
			p = append(p, make([]ID, want-uint64(len(p)))...)
		}
		t.pages[k] = p
	}
}

// with returns a copy of t with updates applied; pages without an update are shared
// with t, so neither may change them afterwards except through with.
func (t *idTable) with(updates map[uint64]ID) *idTable {
	c := &idTable{n: t.n, per: t.per, pages: slices.Clone(t.pages)}
	copied := map[uint64]bool{}
	for i, id := range updates {
		k := i / t.per
		if !copied[k] && c.pages[k] != nil {
			c.pages[k] = slices.Clone(c.pages[k])
		}
		copied[k] = true
		c.set(i, id)
	}
	return c
}

// groups calls fn for every group of fanout consecutive ids (the children of one node
// of the level above) that holds a non-zero id, with the group's number; the last
// group may be shorter.
func (t *idTable) groups(fanout int, fn func(g uint64, ids []ID) error) error {
	f := uint64(fanout)
	for k, p := range t.pages {
		for off := uint64(0); off < uint64(len(p)); off += f {
			ids := p[off:min(off+f, uint64(len(p)))]
			if allZeroIDs(ids) {
				continue
			}
			if err := fn((uint64(k)*t.per+off)/f, ids); err != nil {
				return err
			}
		}
	}
	return nil
}

func allZeroIDs(ids []ID) bool {
	for i := range ids {
		if !ids[i].IsZero() {
			return false
		}
	}
	return true
}
