package chunkindex

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

const segmentExt = ".cix"

// segmentName names the segment covering flush sequence numbers lo to hi.
func segmentName(lo, hi uint64) string {
	return fmt.Sprintf("seg-%016x-%016x%s", lo, hi, segmentExt)
}

type segName struct {
	name   string
	lo, hi uint64
}

// listSegments returns the directory's segments, oldest first. It removes temporary
// files (a flush or merge that did not finish) and segments that another covers (a
// merge that finished but did not remove its inputs).
func listSegments(dir string) ([]segName, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read chunk index directory: %w", err)
	}
	var segs []segName
	for _, de := range des {
		n := de.Name()
		if strings.HasSuffix(n, ".tmp") {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return nil, fmt.Errorf("remove an unfinished chunk index segment: %w", err)
			}
			continue
		}
		var s segName
		if _, err := fmt.Sscanf(n, "seg-%016x-%016x.cix", &s.lo, &s.hi); err != nil || segmentName(s.lo, s.hi) != n {
			continue // not ours
		}
		if s.lo > s.hi {
			return nil, fmt.Errorf("chunk index segment %s: its name covers no flush", filepath.Join(dir, n))
		}
		s.name = n
		segs = append(segs, s)
	}
	// Oldest first; of segments starting together, the widest first.
	slices.SortFunc(segs, func(a, b segName) int {
		if a.lo != b.lo {
			return cmpU64(a.lo, b.lo)
		}
		return cmpU64(b.hi, a.hi)
	})
	var keep []segName
	for _, s := range segs {
		if k := len(keep); k > 0 && s.lo <= keep[k-1].hi {
			if s.hi > keep[k-1].hi {
				return nil, fmt.Errorf("chunk index segments %s and %s overlap without one covering the other",
					filepath.Join(dir, keep[k-1].name), filepath.Join(dir, s.name))
			}
			if err := os.Remove(filepath.Join(dir, s.name)); err != nil {
				return nil, fmt.Errorf("remove a merged chunk index segment: %w", err)
			}
			continue
		}
		keep = append(keep, s)
	}
	return keep, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// maybeMerge merges the newest segments while the next older one is no larger than
// their sum, and more if there are more than MaxSegments. writeMu is held.
func (x *Index) maybeMerge() error {
	x.mu.RLock()
	n := len(x.segs)
	k, sum := 1, x.segs[n-1].count
	for k < n && x.segs[n-k-1].count <= sum {
		sum += x.segs[n-k-1].count
		k++
	}
	x.mu.RUnlock()
	k = max(k, n-x.opts.MaxSegments+1)
	if k < 2 {
		return nil
	}
	return x.mergeTail(k)
}

// mergeTail merges the newest k segments into one, streaming. writeMu is held, so the
// segments do not change under it; Gets go on while it writes.
func (x *Index) mergeTail(k int) error {
	x.mu.RLock()
	in := slices.Clone(x.segs[len(x.segs)-k:])
	x.mu.RUnlock()
	s, err := mergeSegments(x.dir, in, x.opts.BitsPerKey)
	if err != nil {
		return err
	}
	x.mu.Lock()
	x.segs = append(x.segs[:len(x.segs)-k:len(x.segs)-k], s)
	x.mu.Unlock() // no Get reads the inputs any more
	for _, old := range in {
		old.close()
		if err := os.Remove(old.path); err != nil {
			return fmt.Errorf("remove a merged chunk index segment: %w", err)
		}
	}
	return nil
}

// mergeSegments writes the entries of in (oldest first) as one segment, the newest
// entry of an id winning.
func mergeSegments(dir string, in []*segment, bitsPerKey int) (*segment, error) {
	var total uint64
	its := make([]*iterator, len(in))
	live := make([]bool, len(in))
	for i, s := range in {
		total += s.count
		its[i] = newIterator(s)
		ok, err := its[i].next()
		if err != nil {
			return nil, err
		}
		live[i] = ok
	}
	lo, hi := in[0].lo, in[len(in)-1].hi
	w, err := newSegWriter(filepath.Join(dir, segmentName(lo, hi)), total, bitsPerKey)
	if err != nil {
		return nil, err
	}
	if err := mergeInto(w, its, live); err != nil {
		w.abort()
		return nil, err
	}
	s, err := w.finish(lo, hi)
	if err != nil {
		w.abort()
	}
	return s, err
}

// mergeInto writes the iterators' entries to w in order. The iterators are few
// (MaxSegments or so): a linear scan for the smallest id beats a heap.
func mergeInto(w *segWriter, its []*iterator, live []bool) error {
	for {
		best := -1
		for i, it := range its {
			if !live[i] {
				continue
			}
			// >= 0: of equal ids, the newest (latest) iterator wins.
			if best < 0 || bytes.Compare(its[best].id[:], it.id[:]) >= 0 {
				best = i
			}
		}
		if best < 0 {
			return nil
		}
		id, l := its[best].id, its[best].loc
		if err := w.add(&id, l); err != nil {
			return err
		}
		for i, it := range its {
			if !live[i] || it.id != id {
				continue
			}
			ok, err := it.next()
			if err != nil {
				return err
			}
			live[i] = ok
		}
	}
}
