// Package consistency names the level of a consistency point — what a PIT taken at it
// guarantees — once for the wire protocol, the staging store, the API and the agent
// (docs/architecture.md, "Consistency points").
package consistency

import (
	"database/sql/driver"
	"fmt"
)

// Level is a consistency point's level, weakest first: a PIT of a higher level is a
// better recovery point than one of a lower level taken at the same time.
type Level uint8

// The levels. Their numbers are the wire protocol's encoding (docs/wire.md §5.4, Marker).
const (
	None       Level = 0 // fuzzy: the volumes could not be frozen; never offered silently
	Crash      Level = 1 // write-ordered: as if the machine lost power at that instant
	Filesystem Level = 2 // taken under freeze: every filesystem clean at that instant
)

var names = [...]string{None: "none", Crash: "crash", Filesystem: "filesystem"}

// String is the level's name: none, crash or filesystem.
func (l Level) String() string {
	if l.Valid() {
		return names[l]
	}
	return fmt.Sprintf("level(%d)", uint8(l))
}

// Valid reports whether l is one of the levels.
func (l Level) Valid() bool { return int(l) < len(names) }

// Recoverable reports whether a PIT of this level is one a recovery picks by default:
// crash- or filesystem-consistent.
func (l Level) Recoverable() bool { return l == Crash || l == Filesystem }

// Parse returns the level named s.
func Parse(s string) (Level, error) {
	for l, n := range names {
		if n == s {
			return Level(l), nil
		}
	}
	return 0, fmt.Errorf("consistency level %q is not filesystem, crash or none", s)
}

// MarshalText writes the level's name (JSON, YAML).
func (l Level) MarshalText() ([]byte, error) {
	if !l.Valid() {
		return nil, fmt.Errorf("consistency level %d does not exist", uint8(l))
	}
	return []byte(names[l]), nil
}

// UnmarshalText reads a level's name.
func (l *Level) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// Value stores the level as its name in a database.
func (l Level) Value() (driver.Value, error) {
	b, err := l.MarshalText()
	return string(b), err
}

// Scan reads a level stored as its name.
func (l *Level) Scan(src any) error {
	switch v := src.(type) {
	case string:
		return l.UnmarshalText([]byte(v))
	case []byte:
		return l.UnmarshalText(v)
	}
	return fmt.Errorf("a consistency level is stored as text, not %T", src)
}
