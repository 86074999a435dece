package ext4image

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// What a disk image is made of, read straight from its bytes: an ext2/3/4 superblock at
// the start (a whole-disk filesystem), or an MBR or GPT partition table whose entries
// may hold ext filesystems. Everything here reads outside input (a recovered disk) and is
// fuzzed: it must never panic, loop or allocate without bound on a hostile image.

const (
	superblockOffset = 1024
	extMagic         = 0xEF53
	// incompatRecover is EXT3_FEATURE_INCOMPAT_RECOVER: the journal holds transactions
	// that the next mount replays.
	incompatRecover = 0x0004
	// maxGPTEntries bounds how many GPT entries are read (the usual table has 128).
	maxGPTEntries = 1024
)

// candidate is a place in the image where a filesystem may start.
type candidate struct {
	partition int   // 1-based number in the table; 0 for the whole disk
	offset    int64 // bytes from the start of the image
}

// superblock is what Lifeboat needs from an ext superblock.
type superblock struct {
	uuid     [16]byte
	incompat uint32
}

// readSuperblock reads an ext2/3/4 superblock at off; ok is false when there is none.
func readSuperblock(r io.ReaderAt, off int64) (sb superblock, ok bool) {
	if off < 0 || off > (1<<62) {
		return sb, false
	}
	buf := make([]byte, 1024)
	if _, err := r.ReadAt(buf, off+superblockOffset); err != nil {
		return sb, false
	}
	if binary.LittleEndian.Uint16(buf[56:58]) != extMagic {
		return sb, false
	}
	sb.incompat = binary.LittleEndian.Uint32(buf[96:100])
	copy(sb.uuid[:], buf[104:120])
	return sb, true
}

// candidates lists where filesystems may start: the whole disk, then every partition of
// an MBR or GPT table (primary MBR partitions only: logical partitions inside an
// extended one are not followed).
func candidates(r io.ReaderAt, size int64) ([]candidate, error) {
	out := []candidate{{partition: 0, offset: 0}}
	mbr := make([]byte, 512)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		if size < 512 {
			return out, nil
		}
		return nil, fmt.Errorf("read the partition table: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return out, nil
	}
	protective := false
	var primary []candidate
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*(i+1)]
		typ := e[4]
		start := int64(binary.LittleEndian.Uint32(e[8:12]))
		count := int64(binary.LittleEndian.Uint32(e[12:16]))
		switch {
		case typ == 0 || count == 0:
			continue
		case typ == 0xEE:
			protective = true
			continue
		case typ == 0x05 || typ == 0x0F || typ == 0x85:
			continue // extended: logical partitions are not followed
		}
		primary = append(primary, candidate{partition: i + 1, offset: start * 512})
	}
	if !protective {
		return append(out, primary...), nil
	}
	for _, sector := range []int64{512, 4096} {
		parts, ok := gptPartitions(r, size, sector)
		if ok {
			return append(out, parts...), nil
		}
	}
	return out, nil
}

// gptPartitions reads a GPT whose header is at LBA 1 for the given sector size. Its
// checksums are not verified: a filesystem's own magic number decides what is used.
func gptPartitions(r io.ReaderAt, size, sector int64) ([]candidate, bool) {
	hdr := make([]byte, 92)
	if _, err := r.ReadAt(hdr, sector); err != nil {
		return nil, false
	}
	if !bytes.Equal(hdr[0:8], []byte("EFI PART")) {
		return nil, false
	}
	entriesLBA := binary.LittleEndian.Uint64(hdr[72:80])
	n := binary.LittleEndian.Uint32(hdr[80:84])
	esize := binary.LittleEndian.Uint32(hdr[84:88])
	if esize < 128 || esize > 4096 || n == 0 || entriesLBA == 0 || entriesLBA > uint64(size/sector) {
		return nil, false
	}
	if n > maxGPTEntries {
		n = maxGPTEntries
	}
	table := make([]byte, int64(n)*int64(esize))
	got, err := r.ReadAt(table, int64(entriesLBA)*sector)
	if err != nil && err != io.EOF {
		return nil, false
	}
	table = table[:got-got%int(esize)]
	var out []candidate
	zero := make([]byte, 16)
	for i := 0; i*int(esize) < len(table); i++ {
		e := table[i*int(esize):]
		if bytes.Equal(e[0:16], zero) {
			continue
		}
		first := binary.LittleEndian.Uint64(e[32:40])
		if first == 0 || first > uint64(size/sector) {
			continue
		}
		out = append(out, candidate{partition: i + 1, offset: int64(first) * sector})
	}
	return out, true
}
