// Package backend is where the staging store keeps its objects: a flat namespace of
// named, immutable byte strings on a local directory (file://) or an S3-compatible
// bucket (s3://). The store (internal/store) decides names and contents; a backend only
// stores, lists, reads and deletes them, and says precisely why when it cannot.
//
// Every backend passes the same conformance suite (backendtest.Run).
package backend

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Backend stores named objects. Names are relative slash-separated paths of lowercase
// letters, digits and "-_.", such as "data/3f/3f2a…" or "snapshots/s-…/pit-…"; no name is
// a prefix directory of another object's name.
//
// Implementations are safe for concurrent use.
type Backend interface {
	// Put stores data under name, replacing any object of that name. It is atomic (a
	// reader sees the whole old object, the whole new one, or none) and durable when it
	// returns: fsynced on a file system, acknowledged by an object store.
	Put(ctx context.Context, name string, data []byte, opts PutOptions) error

	// Get returns the whole object. A missing object is an error matching ErrNotFound.
	Get(ctx context.Context, name string) ([]byte, error)

	// ReadAt reads length bytes at offset off. A missing object is an error matching
	// ErrNotFound; a range that does not lie wholly inside the object (negative, or
	// ending past its end) is an error matching ErrOutOfRange. Reading zero bytes at
	// the end of the object is allowed and returns an empty slice.
	ReadAt(ctx context.Context, name string, off, length int64) ([]byte, error)

	// Stat returns an object's size and modification time.
	Stat(ctx context.Context, name string) (ObjectInfo, error)

	// List calls fn for each object whose name starts with prefix (a plain string
	// prefix: "dat" matches "data/x" and "database"), in lexical (byte) order of names.
	// Objects being written are not listed until whole. An error from fn stops the
	// listing and is returned. A prefix that no valid name can start with (see
	// ValidPrefix) is refused.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes an object. Deleting a missing object is not an error. Deleting an
	// object under retention (see PutOptions.RetainUntil) fails with ErrLocked.
	Delete(ctx context.Context, name string) error

	// Retain extends the object's retention to until: it cannot be deleted or replaced
	// before then, by anyone. Backends without native retention return
	// ErrRetentionUnsupported; the store then enforces locks itself.
	Retain(ctx context.Context, name string, until time.Time) error

	// Capabilities says what the backend can do.
	Capabilities() Capabilities

	// Location is the backend's URL without secrets, for messages.
	Location() string

	// Close releases resources.
	Close() error
}

// PutOptions modify a Put.
type PutOptions struct {
	// RetainUntil, when not zero, puts the object under retention until then (S3 Object
	// Lock in compliance mode). Backends without native retention ignore it and report
	// Capabilities.Retention false.
	RetainUntil time.Time
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// Capabilities of a backend.
type Capabilities struct {
	// Retention: objects can be locked against deletion until a time by the backend
	// itself (S3 Object Lock), so not even a holder of the credentials can remove them.
	Retention bool
}

// Errors a backend returns, matched with errors.Is. Backends wrap them with the object
// name and the underlying cause, so a message names what failed.
//
// Every error a Backend method returns is a *Error naming the object (or the prefix,
// for List), except an error returned by List's fn, which is returned as it is. An
// invalid name, or a cancelled context, gives a *Error whose Kind is nil and whose
// cause is the ValidName error or the context's error.
var (
	ErrNotFound             = errors.New("object not found")
	ErrOutOfRange           = errors.New("read past the end of the object")
	ErrLocked               = errors.New("object is under retention")
	ErrRetentionUnsupported = errors.New("the backend has no object retention")
	// ErrFull: the backend is out of space or over its quota (ENOSPC, EDQUOT, S3
	// QuotaExceeded/EntityTooLarge); replication reports STAGING_STORAGE_FULL.
	ErrFull = errors.New("staging storage is full")
	// ErrUnavailable: the backend could not be reached or answered with a server
	// error or timeout; the operation may succeed when retried.
	ErrUnavailable = errors.New("staging storage is unavailable")
	// ErrAccess: the credentials were refused.
	ErrAccess = errors.New("access to staging storage was refused")
)

// Error is a backend failure on one object: Op and Name say what failed; Kind is one
// of the Err values above (or nil when none fits); Err is the underlying cause.
type Error struct {
	Op   string // put, get, read, stat, list, delete, retain
	Name string
	Kind error
	Err  error
}

func (e *Error) Error() string {
	msg := e.Op + " " + e.Name
	if e.Kind != nil {
		msg += ": " + e.Kind.Error()
	}
	if e.Err != nil && e.Err != e.Kind {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap lets errors.Is match both the kind and the cause.
func (e *Error) Unwrap() []error {
	var out []error
	if e.Kind != nil {
		out = append(out, e.Kind)
	}
	if e.Err != nil {
		out = append(out, e.Err)
	}
	return out
}

// ValidName reports whether name is usable as an object name: at most 512 bytes of
// a-z, 0-9, '-', '_', '.' and '/', in non-empty '/'-separated elements of at most 255
// bytes that do not start with '.'.
func ValidName(name string) error {
	if name == "" || len(name) > 512 || name[0] == '/' || name[len(name)-1] == '/' {
		return fmt.Errorf("object name %q is not valid", name)
	}
	prevSlash := false
	elemStart := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			prevSlash = false
		case c == '.':
			if i == 0 || prevSlash {
				return fmt.Errorf("object name %q has a path element starting with '.'", name)
			}
			prevSlash = false
		case c == '/':
			if prevSlash {
				return fmt.Errorf("object name %q has an empty path element", name)
			}
			if i-elemStart > maxElement {
				return fmt.Errorf("object name %q has a path element longer than %d bytes", name, maxElement)
			}
			elemStart = i + 1
			prevSlash = true
		default:
			return fmt.Errorf("object name %q has a character other than a-z, 0-9, '-', '_', '.' and '/'", name)
		}
	}
	if len(name)-elemStart > maxElement {
		return fmt.Errorf("object name %q has a path element longer than %d bytes", name, maxElement)
	}
	return nil
}

// maxElement is the longest path element of a name: a file name on Linux file systems
// (NAME_MAX), which the file backend and S3 servers on POSIX storage map names to.
const maxElement = 255

// ValidPrefix reports whether prefix is usable as a List prefix: empty, or the start
// of a valid name ("data/", "data/3f", "dat"). It keeps a listing inside the backend's
// namespace: "../" and "/etc" are refused.
func ValidPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	trimmed := prefix
	if trimmed[len(trimmed)-1] == '/' {
		trimmed = trimmed[:len(trimmed)-1]
	}
	if err := ValidName(trimmed); err != nil {
		return fmt.Errorf("list prefix %q cannot start a valid object name: %w", prefix, err)
	}
	return nil
}
