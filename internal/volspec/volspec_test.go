package volspec

import (
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	good := []string{"vda", "nvme0n1", "mmcblk0", "xvda", "sda", "disk0.img", "db_data-2.raw", "A", strings.Repeat("a", MaxNameLen), "a..b"}
	for _, n := range good {
		if err := CheckName(n); err != nil {
			t.Errorf("CheckName(%q) = %v, want nil", n, err)
		}
	}
	bad := []string{"", ".", "..", "../x", "../../etc/passwd", "a/b", "/dev/vda", ".hidden", "-rf", "a b", "a\x00", "é",
		"a\\b", "C:x", strings.Repeat("a", MaxNameLen+1), "cciss!c0d0"}
	for _, n := range bad {
		if err := CheckName(n); err == nil {
			t.Errorf("CheckName(%q) = nil, want an error", n)
		}
	}
}

func TestCheck(t *testing.T) {
	type vol struct {
		name string
		size uint64
	}
	check := func(vs []vol) error {
		return Check(len(vs), func(i int) (string, uint64) { return vs[i].name, vs[i].size })
	}
	many := func(n int, size uint64) []vol {
		vs := make([]vol, n)
		for i := range vs {
			vs[i] = vol{name: "v" + strings.Repeat("x", i%100) + string(rune('a'+i%26)) + strings.Repeat("y", i/100), size: size}
		}
		return vs
	}
	for name, tc := range map[string]struct {
		vs   []vol
		want string // "" when valid
	}{
		"empty":              {nil, ""},
		"one":                {[]vol{{"vda", 10 << 30}}, ""},
		"largest volume":     {[]vol{{"vda", MaxBytes}}, ""},
		"too large":          {[]vol{{"vda", MaxBytes + 1}}, "64 TiB"},
		"largest u64":        {[]vol{{"vda", ^uint64(0)}}, "64 TiB"},
		"sum at the limit":   {many(4, MaxBytes), ""},
		"sum over the limit": {many(5, MaxBytes), "256 TiB"},
		"most volumes":       {many(MaxCount, 1<<30), ""},
		"too many":           {many(MaxCount+1, 0), "at most 256"},
		"duplicate":          {[]vol{{"vda", 1}, {"vda", 2}}, "two volumes"},
		"bad name":           {[]vol{{"vda", 1}, {"../x", 2}}, "must not start"},
	} {
		err := check(tc.vs)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want nil", name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}
