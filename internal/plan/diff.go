package plan

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Canonical is the plan written out as YAML the same way every time: fields in the
// format's order, maps sorted, two-space indents, anchors expanded, comments gone. Two
// plans that mean the same thing have the same Canonical form, so a diff of Canonical
// forms shows what changed in meaning; Parse reads it back to an equal plan.
func Canonical(p *Plan) ([]byte, error) {
	if p == nil {
		return nil, errors.New("no plan to write out")
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(p); err != nil {
		return nil, fmt.Errorf("writing the plan as YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("writing the plan as YAML: %w", err)
	}
	if b.Len() > MaxFileBytes {
		return nil, planErr("", "the plan is %d bytes once written out with its anchors and aliases expanded; a plan is at most %d bytes (1 MiB)", b.Len(), MaxFileBytes)
	}
	return b.Bytes(), nil
}

const (
	diffContext = 3    // lines of context around each change
	diffMaxEdit = 1000 // edits searched for a shortest diff; beyond, a coarser one
)

// Diff is a unified diff (--- oldName, +++ newName, @@ hunks with 3 lines of context)
// from a to b, line by line, or "" when they are equal. When either is over
// MaxFileBytes it says they differ without a line diff. It finds a shortest diff when
// at most 1000 lines were removed or added (past the lines a and b start and end
// with), and otherwise replaces what lies between those lines as a whole: still a
// correct diff, only a longer one.
func Diff(oldName, newName string, a, b []byte) string {
	if bytes.Equal(a, b) {
		return ""
	}
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", oldName, newName)
	if len(a) > MaxFileBytes || len(b) > MaxFileBytes {
		out.WriteString("(a file is over 1 MiB: they differ, not compared line by line)\n")
		return out.String()
	}
	x, y := splitLines(a), splitLines(b)
	writeHunks(&out, x, y, lineEdits(x, y))
	return out.String()
}

// splitLines splits data after each newline; the last line may lack its newline.
func splitLines(data []byte) []string {
	lines := strings.SplitAfter(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// lineEdits is an edit script from x to y: '=' keeps a line of both, '-' removes a
// line of x, '+' adds a line of y.
func lineEdits(x, y []string) []byte {
	ids := map[string]int{}
	id := func(lines []string) []int {
		out := make([]int, len(lines))
		for i, l := range lines {
			n, ok := ids[l]
			if !ok {
				n = len(ids)
				ids[l] = n
			}
			out[i] = n
		}
		return out
	}
	a, b := id(x), id(y)
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	mid, ok := myers(ma, mb, min(len(ma)+len(mb), diffMaxEdit))
	if !ok {
		mid = append(bytes.Repeat([]byte{'-'}, len(ma)), bytes.Repeat([]byte{'+'}, len(mb))...)
	}
	ops := bytes.Repeat([]byte{'='}, pre)
	ops = append(ops, mid...)
	return append(ops, bytes.Repeat([]byte{'='}, suf)...)
}

// myers is a shortest edit script from a to b (Myers' greedy algorithm), or false when
// it takes more than limit removals and additions.
func myers(a, b []int, limit int) ([]byte, bool) {
	n, m := len(a), len(b)
	off := limit + 1
	v := make([]int, 2*limit+3) // v[off+k]: the furthest x on diagonal k
	var trace [][]int           // trace[d]: v over k in -d..d before step d
	for d := 0; d <= limit; d++ {
		trace = append(trace, slices.Clone(v[off-d:off+d+1]))
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = v[off+k+1]
			} else {
				x = v[off+k-1] + 1
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x, y = x+1, y+1
			}
			v[off+k] = x
			if x >= n && y >= m {
				return backtrack(trace, n, m), true
			}
		}
	}
	return nil, false
}

// backtrack walks the trace of myers back from (n, m) to (0, 0).
func backtrack(trace [][]int, n, m int) []byte {
	var ops []byte
	x, y := n, m
	for d := len(trace) - 1; d > 0; d-- {
		v := trace[d]
		k := x - y
		var pk int
		if k == -d || (k != d && v[k-1+d] < v[k+1+d]) {
			pk = k + 1
		} else {
			pk = k - 1
		}
		px := v[pk+d]
		py := px - pk
		for x > px && y > py {
			ops = append(ops, '=')
			x, y = x-1, y-1
		}
		if x == px {
			ops = append(ops, '+')
		} else {
			ops = append(ops, '-')
		}
		x, y = px, py
	}
	for ; x > 0; x-- {
		ops = append(ops, '=')
	}
	slices.Reverse(ops)
	return ops
}

// writeHunks writes the edits as unified diff hunks.
func writeHunks(out *strings.Builder, x, y []string, ops []byte) {
	ai := make([]int, len(ops)+1) // lines of x before ops[i]
	bi := make([]int, len(ops)+1)
	for i, op := range ops {
		ai[i+1], bi[i+1] = ai[i], bi[i]
		if op != '+' {
			ai[i+1]++
		}
		if op != '-' {
			bi[i+1]++
		}
	}
	for i := 0; i < len(ops); {
		if ops[i] == '=' {
			i++
			continue
		}
		start, end := max(0, i-diffContext), hunkEnd(ops, i)
		fmt.Fprintf(out, "@@ -%s +%s @@\n", hunkRange(ai[start], ai[end]-ai[start]), hunkRange(bi[start], bi[end]-bi[start]))
		for k := start; k < end; k++ {
			switch ops[k] {
			case '=':
				writeDiffLine(out, ' ', x[ai[k]])
			case '-':
				writeDiffLine(out, '-', x[ai[k]])
			default:
				writeDiffLine(out, '+', y[bi[k]])
			}
		}
		i = end
	}
}

// hunkEnd is where the hunk whose first change is ops[i] ends: changes closer than
// twice the context join it, and the context after its last change ends it.
func hunkEnd(ops []byte, i int) int {
	end := i
	for {
		for end < len(ops) && ops[end] != '=' {
			end++
		}
		eq := end
		for eq < len(ops) && ops[eq] == '=' {
			eq++
		}
		if eq == len(ops) || eq-end > 2*diffContext {
			return min(end+diffContext, len(ops))
		}
		end = eq
	}
}

// hunkRange is "start,count" of a hunk header, as diff -u writes it.
func hunkRange(start, count int) string {
	switch count {
	case 0:
		return strconv.Itoa(start) + ",0"
	case 1:
		return strconv.Itoa(start + 1)
	}
	return strconv.Itoa(start+1) + "," + strconv.Itoa(count)
}

func writeDiffLine(out *strings.Builder, op byte, line string) {
	out.WriteByte(op)
	out.WriteString(line)
	if !strings.HasSuffix(line, "\n") {
		out.WriteString("\n\\ No newline at end of file\n")
	}
}
