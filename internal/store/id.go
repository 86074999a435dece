package store

import (
	"bytes"
	"encoding/hex"
	"fmt"
)

// ID identifies a chunk or a tree node: the keyed BLAKE3-256 hash of its plaintext.
// The zero ID stands for an all-zero block (or an all-zero subtree) and is never stored.
type ID [32]byte

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// String is the lowercase hex form.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID parses the hex form of an ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("id %q is not 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("id %q is not hex: %w", s, err)
	}
	return id, nil
}

// zeros is a read-only run of zero bytes that allZero compares against (bytes.Equal
// uses the CPU's vector instructions: far faster than a loop over bytes).
var zeros [64 << 10]byte

// allZero reports whether every byte of b is zero.
func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
