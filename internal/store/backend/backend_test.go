package backend_test

import (
	"errors"
	"path"
	"strings"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
)

func TestValidName(t *testing.T) {
	for _, name := range []string{
		"a", "data/3f/3f2a", "snapshots/s-1/pit-2.json", "a.b", "a..b", "x_y-z",
		strings.Repeat("a", 255), strings.Repeat("a", 255) + "/" + strings.Repeat("b", 255),
		strings.Repeat("c/", 255) + "dd",
	} {
		if err := backend.ValidName(name); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{
		"", "/a", "a/", "a//b", ".a", "a/.b", "..", "a/../b", "A", "a b", "a\\b", "a\x00",
		strings.Repeat("a", 256), strings.Repeat("a/", 256) + "a",
	} {
		if err := backend.ValidName(name); err == nil {
			t.Errorf("ValidName(%q) = nil, want an error", name)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	for _, p := range []string{"", "d", "dat", "data/", "data/3f", "data/3f/"} {
		if err := backend.ValidPrefix(p); err != nil {
			t.Errorf("ValidPrefix(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"/", "//", "../", "/etc", "data//", ".tmp", "Data"} {
		if err := backend.ValidPrefix(p); err == nil {
			t.Errorf("ValidPrefix(%q) = nil, want an error", p)
		}
	}
}

func TestErrorMatchesKindAndCause(t *testing.T) {
	cause := errors.New("disk said no")
	err := error(&backend.Error{Op: "put", Name: "data/x", Kind: backend.ErrFull, Err: cause})
	if !errors.Is(err, backend.ErrFull) || !errors.Is(err, cause) || errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("errors.Is on %v: kind or cause not matched", err)
	}
	if got, want := err.Error(), "put data/x: staging storage is full: disk said no"; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
}

// FuzzValidName: names come back from listings of storage others can write to; a name
// ValidName accepts must stay inside the namespace whatever bytes it is made of.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "data/3f", "../x", "a/./b", "a//b", "/a", ".tmp-1", strings.Repeat("a/", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if backend.ValidName(name) != nil {
			return
		}
		if len(name) > 512 || path.Clean(name) != name || path.IsAbs(name) || strings.HasPrefix(name, "..") {
			t.Fatalf("ValidName accepted %q, which leaves or aliases the namespace", name)
		}
		for _, elem := range strings.Split(name, "/") {
			if elem == "" || elem[0] == '.' || len(elem) > 255 {
				t.Fatalf("ValidName accepted %q with element %q", name, elem)
			}
		}
		if backend.ValidPrefix(name) != nil || backend.ValidPrefix(name+"/") != nil {
			t.Fatalf("a valid name %q is not a valid prefix", name)
		}
	})
}
