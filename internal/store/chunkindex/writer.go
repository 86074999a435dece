package chunkindex

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// segWriter writes a segment from entries given in increasing id order, to a
// temporary file that finish renames into place.
type segWriter struct {
	tmp, path string
	f         *os.File
	w         *bufio.Writer
	page      []byte
	inPage    int // records in page
	pages     uint64
	count     uint64
	fences    []ID
	filter    filter
	last      ID
}

// newSegWriter starts the segment path, its filter sized for at most n entries.
func newSegWriter(path string, n uint64, bitsPerKey int) (*segWriter, error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create chunk index segment: %w", err)
	}
	return &segWriter{tmp: tmp, path: path, f: f, w: bufio.NewWriterSize(f, 1<<20),
		page: make([]byte, pageSize), fences: make([]ID, 0, (n+recordsPerPage-1)/recordsPerPage),
		filter: newFilter(filterBlocks(n, bitsPerKey), filterHashes(bitsPerKey))}, nil
}

// add appends an entry; ids must come in strictly increasing order.
func (w *segWriter) add(id *ID, l Loc) error {
	if w.count > 0 && bytes.Compare(w.last[:], id[:]) >= 0 {
		return fmt.Errorf("chunk index segment %s: entries out of order (a bug)", w.path)
	}
	if w.inPage == 0 {
		w.fences = append(w.fences, *id)
	}
	encodeRecord(w.page[w.inPage*recordSize:], id, l)
	w.filter.add(id)
	w.last = *id
	w.count++
	if w.inPage++; w.inPage == recordsPerPage {
		return w.endPage()
	}
	return nil
}

func (w *segWriter) endPage() error {
	clear(w.page[w.inPage*recordSize : pageCRCOff])
	binary.LittleEndian.PutUint32(w.page[pageCRCOff:], pageCRC(w.pages, w.page))
	if _, err := w.w.Write(w.page); err != nil {
		return fmt.Errorf("write chunk index segment %s: %w", w.tmp, err)
	}
	w.pages++
	w.inPage = 0
	return nil
}

// finish writes the fences, filter and footer, syncs the file, renames it into place,
// syncs the directory and returns the segment open for reading.
func (w *segWriter) finish(lo, hi uint64) (*segment, error) {
	if w.inPage > 0 {
		if err := w.endPage(); err != nil {
			return nil, err
		}
	}
	crc, err := w.writeMeta()
	if err != nil {
		return nil, fmt.Errorf("write chunk index segment %s: %w", w.tmp, err)
	}
	ft := footer{hashes: w.filter.k, count: w.count, pages: w.pages, filterBlocks: uint64(len(w.filter.words) / blockWords)}
	fb := ft.encode()
	binary.LittleEndian.PutUint32(fb[footerSize-4:], crc32.Update(crc, castagnoli, fb[:footerSize-4]))
	if _, err := w.w.Write(fb); err != nil {
		return nil, fmt.Errorf("write chunk index segment %s: %w", w.tmp, err)
	}
	if err := w.w.Flush(); err != nil {
		return nil, fmt.Errorf("write chunk index segment %s: %w", w.tmp, err)
	}
	if err := w.f.Sync(); err != nil {
		return nil, fmt.Errorf("sync chunk index segment %s: %w", w.tmp, err)
	}
	if err := w.f.Close(); err != nil {
		return nil, fmt.Errorf("close chunk index segment %s: %w", w.tmp, err)
	}
	w.f = nil
	if err := os.Rename(w.tmp, w.path); err != nil {
		return nil, fmt.Errorf("chunk index segment: %w", err)
	}
	if err := syncDir(filepath.Dir(w.path)); err != nil {
		return nil, err
	}
	// Opened again, so that its fences and filter are mapped rather than kept in the heap.
	return openSegment(w.path, lo, hi)
}

// writeMeta writes the fences and the filter and returns their CRC.
func (w *segWriter) writeMeta() (uint32, error) {
	var crc uint32
	for i := range w.fences {
		crc = crc32.Update(crc, castagnoli, w.fences[i][:])
		if _, err := w.w.Write(w.fences[i][:]); err != nil {
			return 0, err
		}
	}
	var b [blockBits / 8]byte
	for i := 0; i < len(w.filter.words); i += blockWords {
		for j := range blockWords {
			binary.LittleEndian.PutUint64(b[j*8:], w.filter.words[i+j])
		}
		crc = crc32.Update(crc, castagnoli, b[:])
		if _, err := w.w.Write(b[:]); err != nil {
			return 0, err
		}
	}
	return crc, nil
}

// abort removes the temporary file of a segment not finished.
func (w *segWriter) abort() {
	if w.f != nil {
		w.f.Close()
	}
	os.Remove(w.tmp)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync chunk index directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync chunk index directory %s: %w", dir, err)
	}
	return nil
}
