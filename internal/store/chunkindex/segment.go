package chunkindex

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"sort"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Segment format (version 1), all integers little-endian:
//
//	pages    pageCount × 4096 bytes: up to 83 records of 49 bytes sorted by id
//	         (id 32, pack 4, offset 4, length 4, rawLen 4, type 1), zero padding, and at
//	         4092 the CRC-32C of the page number (8 bytes) and the page's first 4092 bytes
//	fences   pageCount × 32 bytes: the first id of each page
//	filter   filterBlocks × 64 bytes: the blocked Bloom filter, 8 uint64 per block
//	footer   64 bytes: magic "LBCHKIX\x00", version u32, recordSize u32, pageSize u32,
//	         hashes u32, count u64, pageCount u64, filterBlocks u64, 8 zero bytes,
//	         4 zero bytes, CRC-32C of fences, filter and the footer's first 60 bytes u32
const (
	formatVersion  = 1
	pageSize       = 4096
	recordSize     = 49
	pageCRCOff     = pageSize - 4
	recordsPerPage = pageCRCOff / recordSize // 83
	fenceSize      = 32
	footerSize     = 64
	footerMagic    = "LBCHKIX\x00"
	metaChunk      = 1 << 20 // Open reads fences and filters in pieces of this size
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// footer is a segment's last 64 bytes.
type footer struct {
	hashes       uint32
	count        uint64
	pages        uint64
	filterBlocks uint64
}

func (ft *footer) encode() []byte {
	b := make([]byte, footerSize)
	copy(b, footerMagic)
	le := binary.LittleEndian
	le.PutUint32(b[8:], formatVersion)
	le.PutUint32(b[12:], recordSize)
	le.PutUint32(b[16:], pageSize)
	le.PutUint32(b[20:], ft.hashes)
	le.PutUint64(b[24:], ft.count)
	le.PutUint64(b[32:], ft.pages)
	le.PutUint64(b[40:], ft.filterBlocks)
	return b
}

// decodeFooter checks a footer against the file's size, which bounds every count in it.
func decodeFooter(b []byte, size int64) (footer, error) {
	le := binary.LittleEndian
	var ft footer
	if string(b[:8]) != footerMagic {
		return ft, errors.New("it has no segment footer (truncated, or not a chunk index segment)")
	}
	if v := le.Uint32(b[8:]); v != formatVersion {
		return ft, fmt.Errorf("its format version is %d, this program reads version %d", v, formatVersion)
	}
	if le.Uint32(b[12:]) != recordSize || le.Uint32(b[16:]) != pageSize {
		return ft, fmt.Errorf("its record size %d or page size %d is not %d and %d",
			le.Uint32(b[12:]), le.Uint32(b[16:]), recordSize, pageSize)
	}
	ft = footer{hashes: le.Uint32(b[20:]), count: le.Uint64(b[24:]), pages: le.Uint64(b[32:]),
		filterBlocks: le.Uint64(b[40:])}
	if ft.hashes < 1 || ft.hashes > maxHashes {
		return ft, fmt.Errorf("its filter sets %d bits per key (1 to %d)", ft.hashes, maxHashes)
	}
	n := uint64(size)
	if ft.count == 0 || ft.pages > n/pageSize || ft.filterBlocks < 1 || ft.filterBlocks > n/(blockBits/8) ||
		ft.pages != (ft.count+recordsPerPage-1)/recordsPerPage {
		return ft, fmt.Errorf("its footer's counts (%d entries, %d pages, %d filter blocks) do not fit together",
			ft.count, ft.pages, ft.filterBlocks)
	}
	if want := ft.pages*(pageSize+fenceSize) + ft.filterBlocks*(blockBits/8) + footerSize; want != n {
		return ft, fmt.Errorf("it is %d bytes, its footer describes %d (truncated or extended)", n, want)
	}
	return ft, nil
}

// segment is one open segment file: its fences and filter in RAM, its pages on disk.
// The fences and filter are mapped from the file (meta) where the platform allows it:
// they are then page cache, outside the Go heap, so a process's soft memory limit
// (the replicator's --memory-limit) counts only what it allocates — with them in the
// heap, 100 million entries took 190 MB of a 224 MiB limit and the collector ran
// without pause.
type segment struct {
	path   string
	f      *os.File
	lo, hi uint64 // the flush sequence numbers it covers
	count  uint64
	fences []ID
	filter filter
	meta   []byte // the mapping of fences, filter and footer; nil: read into the heap
}

// close closes the file and unmaps its fences and filter: no Get may use it after.
func (s *segment) close() {
	s.f.Close()
	if s.meta != nil {
		unix.Munmap(s.meta)
		s.meta, s.fences, s.filter.words = nil, nil, nil
	}
}

// littleEndian: the file's words can be used in place.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// mapMeta maps the fences, filter and footer of f (from off, to its end) and checks
// their checksum. ok is false when the platform cannot use them in place (then they
// are read into the heap).
func (s *segment) mapMeta(ft footer, off, size int64) (ok bool, err error) {
	if !littleEndian || off%int64(os.Getpagesize()) != 0 || size-off > math.MaxInt32 {
		return false, nil
	}
	m, err := unix.Mmap(int(s.f.Fd()), off, int(size-off), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return false, nil // read them instead
	}
	n := len(m) - 4
	if crc32.Checksum(m[:n], castagnoli) != binary.LittleEndian.Uint32(m[n:]) {
		unix.Munmap(m)
		return true, errors.New("the checksum of its fences, filter and footer does not match (the file is damaged)")
	}
	fenceBytes := int(ft.pages) * fenceSize
	s.meta = m
	s.fences = unsafe.Slice((*ID)(unsafe.Pointer(&m[0])), ft.pages)
	s.filter = filter{words: unsafe.Slice((*uint64)(unsafe.Pointer(&m[fenceBytes])), ft.filterBlocks*blockWords), k: ft.hashes}
	return true, nil
}

// openSegment opens a segment file, reading only its footer, fences and filter.
func openSegment(path string, lo, hi uint64) (*segment, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open chunk index segment: %w", err)
	}
	s, err := loadSegment(f, path)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("chunk index segment %s: %w", path, err)
	}
	s.lo, s.hi = lo, hi
	return s, nil
}

func loadSegment(f *os.File, path string) (*segment, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < footerSize+pageSize {
		return nil, fmt.Errorf("it is %d bytes, too short to be a segment (truncated)", size)
	}
	fb := make([]byte, footerSize)
	if _, err := f.ReadAt(fb, size-footerSize); err != nil {
		return nil, fmt.Errorf("read its footer: %w", err)
	}
	ft, err := decodeFooter(fb, size)
	if err != nil {
		return nil, err
	}
	s := &segment{path: path, f: f, count: ft.count}
	mapped, err := s.mapMeta(ft, int64(ft.pages)*pageSize, size)
	if err != nil {
		return nil, err
	}
	if !mapped {
		s.fences, s.filter = make([]ID, ft.pages), newFilter(ft.filterBlocks, ft.hashes)
		crc, err := s.readMeta(int64(ft.pages) * pageSize)
		if err != nil {
			return nil, err
		}
		crc = crc32.Update(crc, castagnoli, fb[:footerSize-4])
		if crc != binary.LittleEndian.Uint32(fb[footerSize-4:]) {
			return nil, errors.New("the checksum of its fences, filter and footer does not match (the file is damaged)")
		}
	}
	for i := 1; i < len(s.fences); i++ {
		if bytes.Compare(s.fences[i-1][:], s.fences[i][:]) >= 0 {
			s.close()
			return nil, fmt.Errorf("its page %d does not start after page %d (the file is damaged)", i, i-1)
		}
	}
	return s, nil
}

// readMeta reads the fences and the filter, from off, in pieces, and returns their CRC.
func (s *segment) readMeta(off int64) (uint32, error) {
	var crc uint32
	buf := make([]byte, metaChunk)
	for i := 0; i < len(s.fences); {
		n := min(len(s.fences)-i, metaChunk/fenceSize)
		b := buf[:n*fenceSize]
		if _, err := s.f.ReadAt(b, off); err != nil {
			return 0, fmt.Errorf("read its fences: %w", err)
		}
		crc = crc32.Update(crc, castagnoli, b)
		for j := range n {
			copy(s.fences[i+j][:], b[j*fenceSize:])
		}
		i, off = i+n, off+int64(len(b))
	}
	w := s.filter.words
	for i := 0; i < len(w); {
		n := min(len(w)-i, metaChunk/8)
		b := buf[:n*8]
		if _, err := s.f.ReadAt(b, off); err != nil {
			return 0, fmt.Errorf("read its filter: %w", err)
		}
		crc = crc32.Update(crc, castagnoli, b)
		for j := range n {
			w[i+j] = binary.LittleEndian.Uint64(b[j*8:])
		}
		i, off = i+n, off+int64(len(b))
	}
	return crc, nil
}

// pageCRC is the checksum of page p's content.
func pageCRC(p uint64, page []byte) uint32 {
	var pb [8]byte
	binary.LittleEndian.PutUint64(pb[:], p)
	return crc32.Update(crc32.Checksum(pb[:], castagnoli), castagnoli, page[:pageCRCOff])
}

// recordsIn is the number of records page p holds.
func (s *segment) recordsIn(p uint64) int {
	return int(min(s.count-p*recordsPerPage, recordsPerPage))
}

// readPage reads page p into buf and checks it.
func (s *segment) readPage(p uint64, buf []byte) error {
	if _, err := s.f.ReadAt(buf[:pageSize], int64(p)*pageSize); err != nil {
		return fmt.Errorf("chunk index segment %s: read page %d: %w", s.path, p, err)
	}
	if pageCRC(p, buf) != binary.LittleEndian.Uint32(buf[pageCRCOff:]) {
		return fmt.Errorf("chunk index segment %s: page %d is damaged (checksum mismatch)", s.path, p)
	}
	return nil
}

// get looks id up: the filter first, then the one page the fences point at.
func (s *segment) get(id *ID, buf []byte) (Loc, bool, error) {
	if !s.filter.has(id) {
		return Loc{}, false, nil
	}
	p := sort.Search(len(s.fences), func(i int) bool { return bytes.Compare(s.fences[i][:], id[:]) > 0 }) - 1
	if p < 0 {
		return Loc{}, false, nil
	}
	if err := s.readPage(uint64(p), buf); err != nil {
		return Loc{}, false, err
	}
	n := s.recordsIn(uint64(p))
	i := sort.Search(n, func(i int) bool { return bytes.Compare(buf[i*recordSize:i*recordSize+32], id[:]) >= 0 })
	if i < n && bytes.Equal(buf[i*recordSize:i*recordSize+32], id[:]) {
		return decodeLoc(buf[i*recordSize+32:]), true, nil
	}
	return Loc{}, false, nil
}

func (s *segment) memoryBytes() int64 {
	return int64(len(s.fences))*fenceSize + s.filter.memoryBytes() + 256
}

func encodeRecord(b []byte, id *ID, l Loc) {
	copy(b, id[:])
	le := binary.LittleEndian
	le.PutUint32(b[32:], l.Pack)
	le.PutUint32(b[36:], l.Offset)
	le.PutUint32(b[40:], l.Length)
	le.PutUint32(b[44:], l.RawLen)
	b[48] = l.Type
}

func decodeLoc(b []byte) Loc {
	le := binary.LittleEndian
	return Loc{Pack: le.Uint32(b), Offset: le.Uint32(b[4:]), Length: le.Uint32(b[8:]),
		RawLen: le.Uint32(b[12:]), Type: b[16]}
}

// iterator reads a segment's entries in order, sequentially, one page at a time.
type iterator struct {
	s    *segment
	r    io.Reader
	page []byte
	p    uint64 // the page in page (its number + 1 once read)
	i, n int    // the next record in page, records in page
	id   ID
	loc  Loc
}

func newIterator(s *segment) *iterator {
	sr := io.NewSectionReader(s.f, 0, int64(len(s.fences))*pageSize)
	return &iterator{s: s, r: bufio.NewReaderSize(sr, 64*pageSize), page: make([]byte, pageSize)}
}

// next moves to the next entry; false at the end.
func (it *iterator) next() (bool, error) {
	if it.i == it.n {
		if it.p == uint64(len(it.s.fences)) {
			return false, nil
		}
		if _, err := io.ReadFull(it.r, it.page); err != nil {
			return false, fmt.Errorf("chunk index segment %s: read page %d: %w", it.s.path, it.p, err)
		}
		if pageCRC(it.p, it.page) != binary.LittleEndian.Uint32(it.page[pageCRCOff:]) {
			return false, fmt.Errorf("chunk index segment %s: page %d is damaged (checksum mismatch)", it.s.path, it.p)
		}
		it.i, it.n = 0, it.s.recordsIn(it.p)
		if !bytes.Equal(it.page[:32], it.s.fences[it.p][:]) {
			return false, fmt.Errorf("chunk index segment %s: page %d does not start with its fence (damaged)", it.s.path, it.p)
		}
		it.p++
	}
	prev := it.id
	b := it.page[it.i*recordSize:]
	copy(it.id[:], b)
	it.loc = decodeLoc(b[32:])
	if (it.p > 1 || it.i > 0) && bytes.Compare(prev[:], it.id[:]) >= 0 {
		return false, fmt.Errorf("chunk index segment %s: its entries are out of order in page %d (damaged)", it.s.path, it.p-1)
	}
	it.i++
	return true, nil
}
