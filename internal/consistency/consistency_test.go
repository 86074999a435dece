package consistency

import (
	"encoding/json"
	"testing"
)

func TestLevelsRoundTripAndOrder(t *testing.T) {
	for _, l := range []Level{None, Crash, Filesystem} {
		b, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		var back Level
		if err := json.Unmarshal(b, &back); err != nil || back != l {
			t.Fatalf("%v: JSON %s gave %v, %v", l, b, back, err)
		}
		v, err := l.Value()
		if err != nil {
			t.Fatal(err)
		}
		var scanned Level
		if err := scanned.Scan(v); err != nil || scanned != l {
			t.Fatalf("%v: stored as %v, scanned %v, %v", l, v, scanned, err)
		}
	}
	if string(must(json.Marshal(Filesystem))) != `"filesystem"` {
		t.Fatal("the JSON name of the filesystem level changed: stored manifests and API clients read it")
	}
	if !(None < Crash && Crash < Filesystem) || None.Recoverable() || !Crash.Recoverable() || !Filesystem.Recoverable() {
		t.Fatal("levels are not ordered weakest first, or the wrong ones are recoverable")
	}
	var l Level
	for _, bad := range []string{`"Filesystem"`, `"fuzzy"`, `""`, `2`} {
		if err := json.Unmarshal([]byte(bad), &l); err == nil {
			t.Errorf("%s was read as %v", bad, l)
		}
	}
	if _, err := Level(3).MarshalText(); err == nil || Level(3).Valid() {
		t.Fatal("level 3 exists")
	}
	if err := l.Scan(int64(2)); err == nil {
		t.Fatal("a number was scanned as a level")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
