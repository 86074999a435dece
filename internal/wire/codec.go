package wire

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"github.com/lifeboat-dr/lifeboat/internal/volspec"
)

// dec reads big-endian fields from a payload. The first problem sticks: later reads
// return zero values, and err says what was wrong and where.
type dec struct {
	msg MsgType
	b   []byte
	off int
	err error
}

func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = protoErr("%s: %s", d.msg, fmt.Sprintf(format, args...))
	}
}

func (d *dec) take(n int, field string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b)-d.off < n {
		d.fail("%s: truncated (needs %d bytes at offset %d, payload has %d)", field, n, d.off, len(d.b))
		return nil
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *dec) u8(field string) uint8 {
	if p := d.take(1, field); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u16(field string) uint16 {
	if p := d.take(2, field); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *dec) u32(field string) uint32 {
	if p := d.take(4, field); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64(field string) uint64 {
	if p := d.take(8, field); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// str reads a string with a uint16 length prefix and checks it with kind.
func (d *dec) str(field string, kind strKind) string {
	n := int(d.u16(field + " length"))
	p := d.take(n, field)
	if d.err != nil {
		return ""
	}
	s := string(p)
	if err := kind.check(s); err != nil {
		d.fail("%s: %v", field, err)
		return ""
	}
	return s
}

// remaining is how many payload bytes are left to read.
func (d *dec) remaining() int { return len(d.b) - d.off }

// done reports the first problem, or trailing bytes after the last field.
func (d *dec) done() error {
	if d.err == nil && d.off != len(d.b) {
		d.fail("%d unexpected bytes after the last field", len(d.b)-d.off)
	}
	return d.err
}

// strKind is a string field's rule: a maximum length in bytes and a character class.
type strKind struct {
	name  string // what the field must be, for errors
	max   int
	class func(s string) bool
	empty bool // the empty string is allowed
}

func (k strKind) check(s string) error {
	if len(s) == 0 {
		if k.empty {
			return nil
		}
		return fmt.Errorf("is empty, want %s", k.name)
	}
	if len(s) > k.max {
		return fmt.Errorf("is %d bytes, longer than the %d allowed", len(s), k.max)
	}
	if !k.class(s) {
		return fmt.Errorf("%q is not %s", s, k.name)
	}
	return nil
}

// String field limits, in bytes.
const (
	MaxIDLen      = 64                 // source server ids, PIT ids
	MaxVersionLen = 64                 // agent version
	MaxTrackerLen = 32                 // tracker name
	MaxNameLen    = volspec.MaxNameLen // volume name
	MaxCodeLen    = 64                 // error codes
	MaxMessageLen = 4096               // error messages
)

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func lowerToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// isCode is UPPER_CASE: a letter, then letters, digits and underscores.
func isCode(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// text is valid UTF-8 without NUL.
func text(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return false
		}
	}
	return true
}

func kindID() strKind {
	return strKind{name: "an id of printable ASCII", max: MaxIDLen, class: printableASCII}
}
func kindOptionalID() strKind {
	k := kindID()
	k.empty = true
	return k
}
func kindVersion() strKind {
	return strKind{name: "a version of printable ASCII", max: MaxVersionLen, class: printableASCII}
}
func kindTracker() strKind {
	return strKind{name: "a tracker name of lowercase letters, digits and '-'", max: MaxTrackerLen, class: lowerToken}
}
func kindName() strKind {
	return strKind{name: "a volume name (letters, digits, '.', '_' and '-', not starting with '.' or '-')", max: MaxNameLen,
		class: func(s string) bool { return volspec.CheckName(s) == nil }}
}
func kindCode() strKind {
	return strKind{name: "an UPPER_CASE code", max: MaxCodeLen, class: isCode}
}
func kindOptionalCode() strKind {
	k := kindCode()
	k.empty = true
	return k
}
func kindMessage() strKind {
	return strKind{name: "UTF-8 text without NUL", max: MaxMessageLen, class: text, empty: true}
}

// appendStr appends a checked string with its uint16 length prefix.
func appendStr(b []byte, s string, field string, kind strKind) ([]byte, error) {
	if err := kind.check(s); err != nil {
		return b, fmt.Errorf("%s %w", field, err)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...), nil
}
