package store

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// This file holds the binary encodings of the repository's objects (see
// docs/store-format.md). Every decoder checks lengths and limits before it allocates,
// and reports what was wrong; none panics on any input (fuzzed in format_fuzz_test.go).

// formatVersion is the repository format (docs/store-format.md): the config's version.
// Version 2 bound pack trailers to their pack and added versions to heads and a chain
// to PIT manifests; a reader of version 2 reads no version 1 repository.
const formatVersion = 2

// blobType says what a chunk holds.
type blobType uint8

const (
	blobData blobType = 0 // a volume block's content
	blobTree blobType = 1 // a tree node (block table)
)

// entry locates one chunk inside a pack.
type entry struct {
	ID     ID
	Type   blobType
	Offset uint32 // of the sealed chunk in the pack
	Length uint32 // of the sealed chunk: nonce, ciphertext, tag
	RawLen uint32 // of the plaintext, uncompressed
}

const entrySize = 32 + 1 + 4 + 4 + 4

// Limits that bound decoders.
const (
	maxPackSize       = 1 << 30 // a pack larger than this is not ours
	maxEntriesPerPack = maxPackSize / (sealOverhead + 2)
	maxIndexPacks     = 1 << 24
	maxJournalEntries = 1 << 24
	maxFanout         = 1 << 16
)

// errFormat wraps every decoding failure.
var errFormat = errors.New("malformed")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errFormat, fmt.Sprintf(format, args...))
}

func appendEntry(b []byte, e entry) []byte {
	b = append(b, e.ID[:]...)
	b = append(b, byte(e.Type))
	b = binary.BigEndian.AppendUint32(b, e.Offset)
	b = binary.BigEndian.AppendUint32(b, e.Length)
	return binary.BigEndian.AppendUint32(b, e.RawLen)
}

func decodeEntry(b []byte) entry {
	var e entry
	copy(e.ID[:], b[:32])
	e.Type = blobType(b[32])
	e.Offset = binary.BigEndian.Uint32(b[33:])
	e.Length = binary.BigEndian.Uint32(b[37:])
	e.RawLen = binary.BigEndian.Uint32(b[41:])
	return e
}

func (e entry) check(packSize int64) error {
	if e.Type != blobData && e.Type != blobTree {
		return formatErr("chunk %s has unknown type %d", e.ID, e.Type)
	}
	if e.Length < sealOverhead+1 {
		return formatErr("chunk %s is %d bytes, too short to be sealed", e.ID, e.Length)
	}
	if int(e.Offset) < packHeaderSize || (packSize > 0 && int64(e.Offset)+int64(e.Length) > packSize) {
		return formatErr("chunk %s at %d+%d lies outside its pack of %d bytes", e.ID, e.Offset, e.Length, packSize)
	}
	return nil
}

// Pack layout: header, sealed chunks back to back, sealed trailer (the pack's own
// index), footer (trailer length and magic).
const (
	packMagic      = "LBPACK02"
	packHeaderSize = 24 // magic and a random salt
	packFooterMag  = "LBPE"
	packFooterSize = 8 // length + magic
	trailerMagic   = "LBPT"
)

// appendPackHeader starts a pack: its magic and 16 random bytes, so that no two packs
// have the same id even when they hold the same stored chunks (a repacked pack can).
func appendPackHeader(b []byte) []byte {
	var salt [packHeaderSize - len(packMagic)]byte
	_, _ = rand.Read(salt[:]) // crypto/rand never fails: it ends the program instead
	return append(append(b, packMagic...), salt[:]...)
}

// trailerAAD is the additional data of a pack's sealed trailer: it names the pack, so a
// trailer moved to another pack, or a pack stored under another pack's name, does not
// authenticate.
func trailerAAD(pack ID) []byte {
	return append([]byte("lifeboat pack trailer v2 "), pack[:]...)
}

func encodeTrailer(entries []entry) []byte {
	b := make([]byte, 0, 4+1+4+len(entries)*entrySize)
	b = append(b, trailerMagic...)
	b = append(b, 1)
	b = binary.BigEndian.AppendUint32(b, uint32(len(entries)))
	for _, e := range entries {
		b = appendEntry(b, e)
	}
	return b
}

// decodeTrailer decodes a pack's trailer plaintext; trailerStart is where the sealed
// trailer begins in the pack, so chunks must end before it.
func decodeTrailer(b []byte, trailerStart int64) ([]entry, error) {
	if len(b) < 9 || string(b[:4]) != trailerMagic || b[4] != 1 {
		return nil, formatErr("pack trailer has no valid header")
	}
	n := binary.BigEndian.Uint32(b[5:])
	if n > maxEntriesPerPack || int64(len(b)-9) != int64(n)*entrySize {
		return nil, formatErr("pack trailer announces %d chunks in %d bytes", n, len(b)-9)
	}
	out := make([]entry, n)
	for i := range out {
		out[i] = decodeEntry(b[9+i*entrySize:])
		if err := out[i].check(trailerStart); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decodeFooter returns the sealed trailer's length from a pack's last bytes.
func decodeFooter(b []byte, packSize int64) (int64, error) {
	if len(b) != packFooterSize || string(b[4:]) != packFooterMag {
		return 0, formatErr("pack has no footer (truncated?)")
	}
	n := int64(binary.BigEndian.Uint32(b))
	if n < sealOverhead+9 || n > packSize-int64(packHeaderSize+packFooterSize) {
		return 0, formatErr("pack footer gives a trailer of %d bytes in a pack of %d", n, packSize)
	}
	return n, nil
}

// An index object lists, for some packs, every chunk they hold.
const indexMagic = "LBIX"

type packEntries struct {
	Pack    ID
	Entries []entry
}

func encodeIndex(packs []packEntries) []byte {
	size := 9
	for _, p := range packs {
		size += 36 + len(p.Entries)*entrySize
	}
	b := make([]byte, 0, size)
	b = append(b, indexMagic...)
	b = append(b, 1)
	b = binary.BigEndian.AppendUint32(b, uint32(len(packs)))
	for _, p := range packs {
		b = append(b, p.Pack[:]...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(p.Entries)))
		for _, e := range p.Entries {
			b = appendEntry(b, e)
		}
	}
	return b
}

func decodeIndex(b []byte) ([]packEntries, error) {
	if len(b) < 9 || string(b[:4]) != indexMagic || b[4] != 1 {
		return nil, formatErr("index has no valid header")
	}
	n := binary.BigEndian.Uint32(b[5:])
	if n > maxIndexPacks || int64(n)*36 > int64(len(b)-9) {
		return nil, formatErr("index announces %d packs in %d bytes", n, len(b))
	}
	out := make([]packEntries, 0, n)
	rest := b[9:]
	for i := uint32(0); i < n; i++ {
		if len(rest) < 36 {
			return nil, formatErr("index ends inside pack %d of %d", i+1, n)
		}
		var p packEntries
		copy(p.Pack[:], rest[:32])
		m := binary.BigEndian.Uint32(rest[32:])
		rest = rest[36:]
		if m > maxEntriesPerPack || int64(m)*entrySize > int64(len(rest)) {
			return nil, formatErr("index announces %d chunks for pack %s with %d bytes left", m, p.Pack, len(rest))
		}
		p.Entries = make([]entry, m)
		for j := range p.Entries {
			p.Entries[j] = decodeEntry(rest[j*entrySize:])
			if err := p.Entries[j].check(0); err != nil {
				return nil, err
			}
		}
		rest = rest[int(m)*entrySize:]
		out = append(out, p)
	}
	if len(rest) != 0 {
		return nil, formatErr("index has %d bytes after its last pack", len(rest))
	}
	return out, nil
}

// A tree node is a chunk whose plaintext is its level and its children's ids: block
// (data chunk) ids at level 0, node ids above. The zero id is an all-zero block or an
// all-zero subtree.
func encodeNode(level uint8, ids []ID) []byte {
	b := make([]byte, 1, 1+32*len(ids))
	b[0] = level
	for i := range ids {
		b = append(b, ids[i][:]...)
	}
	return b
}

func decodeNode(b []byte, wantLevel uint8, fanout int) ([]ID, error) {
	if len(b) < 1 || (len(b)-1)%32 != 0 {
		return nil, formatErr("tree node of %d bytes", len(b))
	}
	if b[0] != wantLevel {
		return nil, formatErr("tree node at level %d where level %d was expected", b[0], wantLevel)
	}
	n := (len(b) - 1) / 32
	if n == 0 || n > fanout {
		return nil, formatErr("tree node with %d children (fanout %d)", n, fanout)
	}
	ids := make([]ID, n)
	for i := range ids {
		copy(ids[i][:], b[1+32*i:])
	}
	return ids, nil
}

// A journal records the blocks a head wrote since its last checkpoint, so a replicator
// that restarts recovers every write it acknowledged.
const journalMagic = "LBJ1"

type journalEntry struct {
	Block uint64
	ID    ID
}

type journal struct {
	Seq     uint64
	Size    uint64 // the volume's size when the journal was written
	Entries []journalEntry
}

func encodeJournal(j journal) []byte {
	b := make([]byte, 0, 24+len(j.Entries)*40)
	b = append(b, journalMagic...)
	b = binary.BigEndian.AppendUint64(b, j.Seq)
	b = binary.BigEndian.AppendUint64(b, j.Size)
	b = binary.BigEndian.AppendUint32(b, uint32(len(j.Entries)))
	for _, e := range j.Entries {
		b = binary.BigEndian.AppendUint64(b, e.Block)
		b = append(b, e.ID[:]...)
	}
	return b
}

func decodeJournal(b []byte) (journal, error) {
	var j journal
	if len(b) < 24 || string(b[:4]) != journalMagic {
		return j, formatErr("journal has no valid header")
	}
	j.Seq = binary.BigEndian.Uint64(b[4:])
	j.Size = binary.BigEndian.Uint64(b[12:])
	n := binary.BigEndian.Uint32(b[20:])
	if n > maxJournalEntries || int64(len(b)-24) != int64(n)*40 {
		return j, formatErr("journal announces %d entries in %d bytes", n, len(b)-24)
	}
	j.Entries = make([]journalEntry, n)
	for i := range j.Entries {
		p := b[24+40*i:]
		j.Entries[i].Block = binary.BigEndian.Uint64(p)
		copy(j.Entries[i].ID[:], p[8:40])
	}
	return j, nil
}

// A GC pending object lists chunks a garbage collection condemned: writers must not
// deduplicate against them (they store the block again instead).
const pendingMagic = "LBGC"

func encodeIDs(magic string, ids []ID) []byte {
	b := make([]byte, 0, 8+32*len(ids))
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for i := range ids {
		b = append(b, ids[i][:]...)
	}
	return b
}

func decodeIDs(magic string, b []byte) ([]ID, error) {
	if len(b) < 8 || string(b[:4]) != magic {
		return nil, formatErr("id list has no valid header")
	}
	n := binary.BigEndian.Uint32(b[4:])
	if int64(len(b)-8) != int64(n)*32 {
		return nil, formatErr("id list announces %d ids in %d bytes", n, len(b)-8)
	}
	ids := make([]ID, n)
	for i := range ids {
		copy(ids[i][:], b[8+32*i:])
	}
	return ids, nil
}
