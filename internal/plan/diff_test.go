package plan

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name, a, b, want string
	}{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"both empty", "", "", ""},
		{"one line changed", "a\nb\nc\n", "a\nB\nc\n", "--- old\n+++ new\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"},
		{"added to empty", "", "a\nb\n", "--- old\n+++ new\n@@ -0,0 +1,2 @@\n+a\n+b\n"},
		{"all removed", "a\n", "", "--- old\n+++ new\n@@ -1 +0,0 @@\n-a\n"},
		{"no newline at end", "a\nb", "a\nb\n", "--- old\n+++ new\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n"},
		{"insert in the middle", "1\n2\n3\n4\n5\n6\n7\n8\n", "1\n2\n3\n4\nx\n5\n6\n7\n8\n",
			"--- old\n+++ new\n@@ -2,6 +2,7 @@\n 2\n 3\n 4\n+x\n 5\n 6\n 7\n"},
		{"two hunks", "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n", "x\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\ny\n",
			"--- old\n+++ new\n@@ -1,4 +1,4 @@\n-1\n+x\n 2\n 3\n 4\n@@ -9,4 +9,4 @@\n 9\n 10\n 11\n-12\n+y\n"},
		{"changes six lines apart join", "1\n2\n3\n4\n5\n6\n7\n8\n", "x\n2\n3\n4\n5\n6\n7\ny\n",
			"--- old\n+++ new\n@@ -1,8 +1,8 @@\n-1\n+x\n 2\n 3\n 4\n 5\n 6\n 7\n-8\n+y\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Diff("old", "new", []byte(tc.a), []byte(tc.b))
			if got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
			if got != "" {
				if back := applyDiff(t, tc.a, got); back != tc.b {
					t.Errorf("the diff applied gives %q, not %q", back, tc.b)
				}
			}
		})
	}
}

func TestDiffOfPlans(t *testing.T) {
	p := parseOK(t, fullPlanYAML)
	a, _ := Canonical(p)
	webDNS(p).Records[0].TTL = 300
	b, _ := Canonical(p)
	want := `--- lab version 1
+++ lab version 2
@@ -55,7 +55,7 @@
             secret: tsig-lab
           records:
             - name: www
-              ttl: 30
+              ttl: 300
               instance: s-0000000000000000b
               failback:
                 - 192.0.2.80
`
	if got := Diff("lab version 1", "lab version 2", a, b); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestDiffRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 500 {
		a := randomLines(r, r.IntN(40))
		b := mutateLines(r, a)
		d := Diff("a", "b", []byte(a), []byte(b))
		if (d == "") != (a == b) {
			t.Fatalf("case %d: diff %q of %q and %q", n, d, a, b)
		}
		if d != "" && applyDiff(t, a, d) != b {
			t.Fatalf("case %d: the diff of %q and %q does not apply:\n%s", n, a, b, d)
		}
	}
}

func TestDiffLarge(t *testing.T) {
	// Many changes: past diffMaxEdit edits the diff is coarser, and still right.
	var a, b strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&a, "line %d\n", i)
		if i%2 == 0 {
			fmt.Fprintf(&b, "line %d\n", i)
		} else {
			fmt.Fprintf(&b, "changed %d\n", i)
		}
	}
	d := Diff("a", "b", []byte(a.String()), []byte(b.String()))
	if applyDiff(t, a.String(), d) != b.String() {
		t.Fatal("the diff of large files does not apply")
	}
	// A small change in a large file is a small diff.
	c := strings.Replace(a.String(), "line 2500\n", "line 2500 changed\n", 1)
	d = Diff("a", "c", []byte(a.String()), []byte(c))
	if strings.Count(d, "\n") != 11 || applyDiff(t, a.String(), d) != c {
		t.Errorf("diff of one changed line:\n%s", d)
	}
	big := strings.Repeat("x\n", MaxFileBytes/2+1)
	if d := Diff("a", "b", []byte(big), []byte("x\n")); !strings.Contains(d, "over 1 MiB") {
		t.Errorf("diff of a file over 1 MiB: %q", d)
	}
}

func randomLines(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(string(rune('a' + r.IntN(4))))
		b.WriteByte('\n')
	}
	if n > 0 && r.IntN(5) == 0 {
		return strings.TrimSuffix(b.String(), "\n") // no newline at the end
	}
	return b.String()
}

func mutateLines(r *rand.Rand, s string) string {
	lines := splitLines([]byte(s))
	for range r.IntN(6) {
		switch i := r.IntN(len(lines) + 1); r.IntN(3) {
		case 0:
			lines = append(lines[:i], append([]string{string(rune('a'+r.IntN(5))) + "\n"}, lines[i:]...)...)
		case 1:
			if i < len(lines) {
				lines = append(lines[:i], lines[i+1:]...)
			}
		default:
			if i < len(lines) {
				lines[i] = "z\n"
			}
		}
	}
	out := strings.Join(lines, "")
	if r.IntN(6) == 0 {
		out = strings.TrimSuffix(out, "\n")
	}
	return out
}

// applyDiff applies a unified diff to a, checking every context and removed line.
func applyDiff(t testing.TB, a, diff string) string {
	t.Helper()
	old := splitLines([]byte(a))
	lines := strings.Split(strings.TrimSuffix(diff, "\n"), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "--- ") || !strings.HasPrefix(lines[1], "+++ ") {
		t.Fatalf("no diff header:\n%s", diff)
	}
	var out []string
	pos := 0 // next line of old to copy
	for i := 2; i < len(lines); i++ {
		l := lines[i]
		text := func() string {
			if i+1 < len(lines) && lines[i+1] == `\ No newline at end of file` {
				i++
				return l[1:]
			}
			return l[1:] + "\n"
		}
		switch {
		case strings.HasPrefix(l, "@@ -"):
			start := hunkStart(t, l)
			out = append(out, old[pos:start]...)
			pos = start
		case l[0] == ' ' || l[0] == '-':
			if s := text(); pos >= len(old) || old[pos] != s {
				t.Fatalf("line %d of the diff does not match line %d of the file:\n%s", i+1, pos+1, diff)
			}
			if l[0] == ' ' {
				out = append(out, old[pos])
			}
			pos++
		case l[0] == '+':
			out = append(out, text())
		default:
			t.Fatalf("line %d of the diff is %q", i+1, l)
		}
	}
	return strings.Join(append(out, old[pos:]...), "")
}

// hunkStart is the index of the first old line a hunk header covers.
func hunkStart(t testing.TB, header string) int {
	r, _, _ := strings.Cut(strings.TrimPrefix(header, "@@ -"), " ")
	s, count, hasCount := strings.Cut(r, ",")
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("hunk header %q", header)
	}
	if hasCount && count == "0" {
		return n
	}
	return n - 1
}
