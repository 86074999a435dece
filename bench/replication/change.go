package main

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"unsafe"
)

// A change of "1% of the volume" rewrites 1% of the volume's 64 KiB blocks, through the
// mounted filesystem: each piece is 64 KiB of an existing file whose data lies on one
// whole, aligned volume block (found with FIEMAP), overwritten in place with random
// bytes. So exactly that many blocks of file data change on the device (plus the
// filesystem's own metadata and journal writes), the files keep their sizes and
// places, and the same seed makes the same change on a copy of the same filesystem.

// piece is 64 KiB of a file that maps to one aligned volume block.
type piece struct {
	path  string
	off   int64 // offset in the file
	block int64 // volume block
}

const (
	fsIocFiemap   = 0xC020660B
	fiemapExtSize = 56
	// Extent flags that make an extent unusable for an in-place rewrite of known blocks.
	fiemapSkip = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
)

// extents returns a file's extents: logical, physical and length in bytes.
func extents(f *os.File, size int64) ([][3]int64, error) {
	const max = 256
	buf := make([]byte, 32+max*fiemapExtSize)
	var out [][3]int64
	start := int64(0)
	for start < size {
		clear(buf)
		binary.LittleEndian.PutUint64(buf[0:], uint64(start))
		binary.LittleEndian.PutUint64(buf[8:], uint64(size-start))
		binary.LittleEndian.PutUint32(buf[24:], max)
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			return nil, e
		}
		n := int(binary.LittleEndian.Uint32(buf[20:]))
		if n == 0 {
			break
		}
		last := false
		for i := 0; i < n; i++ {
			e := buf[32+i*fiemapExtSize:]
			logical := int64(binary.LittleEndian.Uint64(e[0:]))
			physical := int64(binary.LittleEndian.Uint64(e[8:]))
			length := int64(binary.LittleEndian.Uint64(e[16:]))
			flags := binary.LittleEndian.Uint32(e[40:])
			if flags&1 != 0 { // FIEMAP_EXTENT_LAST
				last = true
			}
			if flags&fiemapSkip == 0 {
				out = append(out, [3]int64{logical, physical, length})
			}
			start = logical + length
		}
		if last {
			break
		}
	}
	return out, nil
}

// candidates lists every piece of the files under root, in a stable order.
func candidates(root string, bs int64) ([]piece, error) {
	var paths []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var out []piece
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil || st.Size() < bs {
			f.Close()
			continue
		}
		exts, err := extents(f, st.Size())
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("FIEMAP %s: %w", p, err)
		}
		for _, e := range exts {
			logical, physical, length := e[0], e[1], e[2]
			first := (physical + bs - 1) / bs * bs
			for ph := first; ph+bs <= physical+length; ph += bs {
				off := logical + ph - physical
				if off+bs <= st.Size() {
					out = append(out, piece{path: p, off: off, block: ph / bs})
				}
			}
		}
	}
	return out, nil
}

// choose picks n distinct pieces with a seeded random order.
func choose(all []piece, n int, seed uint64) []piece {
	rng := rand.New(rand.NewPCG(seed, 0x1ee7))
	perm := rng.Perm(len(all))
	n = min(n, len(all))
	out := make([]piece, n)
	for i := range n {
		out[i] = all[perm[i]]
	}
	// Write in file order, as a program updating files would.
	sort.Slice(out, func(i, j int) bool {
		if out[i].path != out[j].path {
			return out[i].path < out[j].path
		}
		return out[i].off < out[j].off
	})
	return out
}

// applyChange overwrites the pieces with random data (seeded) and syncs.
func applyChange(pieces []piece, bs int64, seed uint64) error {
	rng := rand.NewChaCha8(seedBytes(seed))
	buf := make([]byte, bs)
	var f *os.File
	var cur string
	for _, pc := range pieces {
		if pc.path != cur {
			if f != nil {
				f.Close()
			}
			var err error
			if f, err = os.OpenFile(pc.path, os.O_WRONLY, 0); err != nil {
				return err
			}
			cur = pc.path
		}
		_, _ = rng.Read(buf)
		if _, err := f.WriteAt(buf, pc.off); err != nil {
			f.Close()
			return err
		}
	}
	if f != nil {
		f.Close()
	}
	syscall.Sync()
	return nil
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	copy(s[8:], "lifeboat-replication-bench")
	return s
}
