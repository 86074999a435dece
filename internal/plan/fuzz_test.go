package plan

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fuzzSeeds are plans, valid and not, for the fuzzers' corpus.
func fuzzSeeds() []string {
	seeds := []string{
		fullPlanYAML,
		"name: min\nwaves:\n  - name: a\n    servers: [{id: s-0000000000000000a}]\n",
		"name: tags\nwaves: [{name: a, servers: [{tags: {role: db}}]}, {name: b, after: [a], servers: [{group: g}]}]\n",
		"name: anchors\nwaves:\n  - &w {name: a, servers: [{id: s-0000000000000000a}]}\n  - <<: *w\n    name: b\n    servers: [{id: s-0000000000000000b}]\n",
		"name: cycle\nwaves: [{name: a, after: [b], servers: [{group: x}]}, {name: b, after: [a], servers: [{group: y}]}]\n",
		"name: x\nwaves: [{name: a, servers: [{id: s-0000000000000000a, group: g}]}]\n",
		"name: x\nwaves: [{name: a, helthChecks: [], servers: [{id: s-0000000000000000a}]}]\n",
		"name: x\nwaves: []\n---\nname: y\n",
		"name: x\ndescription: \"\\u2028\\x00\\xff\"\nwaves: [{name: a, servers: [{id: s-0000000000000000a}]}]\n",
		"name: x\nschedule: {drill: \"@every 20s\"}\nwaves: [{name: a, servers: [{id: s-0000000000000000a}]}]\n",
		"name: x\nschedule: {drill: \"*/0 * * * *\"}\nwaves: [{name: a, servers: [{id: s-0000000000000000a}]}]\n",
		"a: &a [x, x]\nb: &b [*a, *a]\nname: x\nwaves: *b\n",
		"{",
		"",
		"- 1\n",
		"name: !!binary eA==\n",
		"name: x\nwaves: [{name: a, servers: [{id: s-0000000000000000a}], healthChecks: [{name: c, http: {url: 'http://${LIFEBOAT_PORT_TCP_80}/'}, timeout: 0s}]}]\n",
	}
	for _, mutate := range []struct{ old, new string }{
		{"zone: example.com", "zone: drill.example.com"},
		{"name: www\n", "name: www.example.org\n"},
		{"ttl: 30", "ttl: 0"},
		{"after: [db]", "after: [web]"},
		{"type: CNAME", "type: A"},
		{"drillBackend: web-drill", "drillBackend: web"},
		{"socket: /run/haproxy/admin.sock", "address: 127.0.0.1:9999"},
		{"description: |", "description: >-"},
	} {
		seeds = append(seeds, strings.Replace(fullPlanYAML, mutate.old, mutate.new, 1))
	}
	return seeds
}

// FuzzParse checks that Parse never panics, and that a plan it accepts reads back the
// same from its canonical form, which is stable, valid with its defaults too.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if _, ok := err.(*ValidationError); !ok {
				t.Fatalf("Parse error %T is not a *ValidationError: %v", err, err)
			}
			return
		}
		c, err := Canonical(p)
		if err != nil {
			t.Fatalf("Canonical of an accepted plan: %v", err)
		}
		q, err := Parse(c)
		if err != nil {
			t.Fatalf("the canonical form does not parse: %v\n%s", err, c)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("the canonical form reads back differently:\n%#v\n%#v\n%s", p, q, c)
		}
		if c2, err := Canonical(q); err != nil || !bytes.Equal(c, c2) {
			t.Fatalf("Canonical is not stable: %v\n%s", err, Diff("first", "second", c, c2))
		}
		d := p.WithDefaults()
		if err := d.Validate(); err != nil {
			t.Fatalf("the plan with its defaults is not valid: %v", err)
		}
		if _, err := d.Order(); err != nil {
			t.Fatalf("Order of a valid plan: %v", err)
		}
		if p.Schedule != nil {
			if _, err := p.Schedule.Next(time.Now()); err != nil {
				t.Fatalf("Next of a valid schedule: %v", err)
			}
		}
	})
}

// FuzzDiff checks that a diff applies: a with the diff applied is b.
func FuzzDiff(f *testing.F) {
	f.Add("a\nb\nc\n", "a\nc\nd")
	f.Add("", "x\n")
	f.Add(fullPlanYAML, strings.Replace(fullPlanYAML, "ttl: 30", "ttl: 60", 1))
	f.Fuzz(func(t *testing.T, a, b string) {
		d := Diff("a", "b", []byte(a), []byte(b))
		if (d == "") != (a == b) {
			t.Fatalf("Diff of %q and %q: %q", a, b, d)
		}
		if d != "" && applyDiff(t, a, d) != b {
			t.Fatalf("the diff does not apply:\n%s", d)
		}
	})
}
