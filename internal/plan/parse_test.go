package plan

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fullPlanYAML is a valid plan that uses every part of the format.
const fullPlanYAML = `name: lab
description: |
  The lab: a database, then two web servers behind HAProxy, with a DNS name.
schedule:
  drill: "0 3 * * 1"
drill:
  terminate: true
onFailure: leave
waves:
  - name: db
    servers:
      - id: s-0000000000000000a
    launch:
      - server: s-0000000000000000a
        cpus: 2
        memoryMiB: 2048
        ip: 10.0.0.5/24
        hostname: db1
    healthChecks:
      - name: postgres
        tcp:
          address: ${LIFEBOAT_INSTANCE_ADDRESS}:5432
        timeout: 3s
        retries: 100
  - name: web
    after: [db]
    servers:
      - id: s-0000000000000000b
      - id: s-0000000000000000c
      - tags: {role: web, env: prod}
      - group: frontends
    launch:
      - tags: {recovered: "true"}
    healthChecks:
      - name: http
        http:
          url: http://${LIFEBOAT_PORT_TCP_80}/
          status: 200
          body: Welcome
        interval: 2s
      - name: smoke
        command:
          run: curl -fsS http://example.com/
    steps:
      - name: dns
        dns:
          server: 192.0.2.53
          zone: example.com
          key: {name: lifeboat-key, secret: tsig-lab}
          records:
            - name: www
              instance: s-0000000000000000b
              ttl: 30
              failback: [192.0.2.80]
            - name: api.example.com
              type: CNAME
              values: [www.example.com]
            - name: "@"
              type: TXT
              values: ["v=lifeboat1"]
          drill:
            zone: drill.example.com
            records:
              - name: www
                instance: s-0000000000000000b
      - name: lb
        haproxy:
          socket: /run/haproxy/admin.sock
          backend: web
          drillBackend: web-drill
          servers:
            - name: web1
              instance: s-0000000000000000b
            - name: web2
              instance: s-0000000000000000c
              port: 8080
              failback: 192.0.2.81:80
      - name: notify
        webhook:
          url: https://hooks.example.com/lifeboat
          secret: hook-key
          ca: hook-ca
          timeout: 30s
      - name: warm
        script:
          run: /usr/local/bin/warm-cache
          timeout: 5m
`

// lineOf is the line of the first occurrence of s in text.
func lineIn(t *testing.T, text, s string) int {
	t.Helper()
	i := strings.Index(text, s)
	if i < 0 {
		t.Fatalf("%q is not in the text", s)
	}
	return strings.Count(text[:i], "\n") + 1
}

func parseOK(t testing.TB, text string) *Plan {
	t.Helper()
	p, err := Parse([]byte(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestParseLab(t *testing.T) {
	p := parseOK(t, fullPlanYAML)
	if p.Name != "lab" || len(p.Waves) != 2 || p.Schedule == nil || p.Schedule.Drill != "0 3 * * 1" || !p.Drill.Terminate {
		t.Fatalf("plan read wrong: %+v", p)
	}
	hc := p.Waves[0].HealthChecks[0]
	if hc.TCP == nil || hc.TCP.Address != "${LIFEBOAT_INSTANCE_ADDRESS}:5432" || time.Duration(hc.Timeout) != 3*time.Second || hc.Retries != 100 || hc.Interval != 0 {
		t.Errorf("health check read wrong: %+v", hc)
	}
	web := p.Waves[1]
	if !reflect.DeepEqual(web.Servers[2].Tags, map[string]string{"role": "web", "env": "prod"}) || web.Servers[3].Group != "frontends" {
		t.Errorf("selectors read wrong: %+v", web.Servers)
	}
	dns := web.Steps[0].DNS
	if dns == nil || dns.Records[0].Instance != "s-0000000000000000b" || dns.Records[0].TTL != 30 || dns.Records[2].Name != "@" || dns.Drill.Zone != "drill.example.com" {
		t.Errorf("dns step read wrong: %+v", dns)
	}
	if time.Duration(web.Steps[3].Script.Timeout) != 5*time.Minute {
		t.Errorf("script timeout read wrong: %v", web.Steps[3].Script.Timeout)
	}
	if p.Description != "The lab: a database, then two web servers behind HAProxy, with a DNS name.\n" {
		t.Errorf("description read wrong: %q", p.Description)
	}
}

// parseErr parses text and returns its *ValidationError, failing when there is none.
func parseFail(t *testing.T, text string) *ValidationError {
	t.Helper()
	_, err := Parse([]byte(text))
	if err == nil {
		t.Fatalf("Parse accepted:\n%s", text)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Parse error %T is not a *ValidationError: %v", err, err)
	}
	return ve
}

func TestParseUnknownField(t *testing.T) {
	text := strings.Replace(fullPlanYAML, "    healthChecks:\n      - name: http", "    helthChecks:\n      - name: http", 1)
	ve := parseFail(t, text)
	want := `line ` + strconv.Itoa(lineIn(t, text, "helthChecks")) + `: waves[1]: unknown field "helthChecks" in a wave (did you mean "healthChecks"?)`
	if ve.Error() != want {
		t.Errorf("got  %s\nwant %s", ve.Error(), want)
	}

	text = strings.Replace(fullPlanYAML, "              ttl: 30", "              colour: blue", 1)
	ve = parseFail(t, text)
	if ve.Line != lineIn(t, text, "colour") || ve.Path != "waves[1].steps[0].dns.records[0]" ||
		!strings.Contains(ve.Msg, `unknown field "colour" in a DNS record (its fields: name, type, ttl, values, instance, failback)`) {
		t.Errorf("got %v", ve)
	}

	text = "nmae: lab\n" + strings.TrimPrefix(fullPlanYAML, "name: lab\n")
	ve = parseFail(t, text)
	if ve.Line != 1 || !strings.Contains(ve.Msg, `unknown field "nmae" in the plan (did you mean "name"?)`) {
		t.Errorf("got %v", ve)
	}
}

func TestParseDocuments(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
		line             int
	}{
		{"second document", fullPlanYAML + "---\nname: other\n", "second YAML document", strings.Count(fullPlanYAML, "\n") + 2},
		{"empty", "", "the plan file is empty", 0},
		{"comments only", "# nothing\n", "the plan file is empty", 0},
		{"scalar", "lab\n", "must be a mapping", 1},
		{"list", "- name: lab\n", "must be a mapping", 1},
		{"syntax", "name: lab\nwaves: [\n", "not valid YAML", 0},
		{"tab indent", "name: lab\nwaves:\n\t- name: a\n", "not valid YAML", 3},
		{"duplicate key", "name: lab\nname: lab2\nwaves: []\n", `name is given twice (first at line 1)`, 2},
		{"duplicate tag", strings.Replace(fullPlanYAML, "{role: web, env: prod}", "{role: web, role: db}", 1), `"role" is given twice`, lineIn(t, fullPlanYAML, "{role: web")},
		{"wrong kind", "name: [lab]\nwaves: []\n", "must be a single value, not a list", 1},
		{"waves not a list", "name: lab\nwaves: {name: a}\n", "must be a list", 2},
		{"wave not a mapping", "name: lab\nwaves: [a]\n", `a wave must be a mapping (key: value lines), not "a"`, 2},
		{"int as text", strings.Replace(fullPlanYAML, "cpus: 2", "cpus: two", 1), `must be a whole number, not "two"`, lineIn(t, fullPlanYAML, "cpus: 2")},
		{"float int", strings.Replace(fullPlanYAML, "cpus: 2", "cpus: 2.5", 1), `must be a whole number, not "2.5"`, lineIn(t, fullPlanYAML, "cpus: 2")},
		{"huge int", strings.Replace(fullPlanYAML, "cpus: 2", "cpus: 99999999999999999999999", 1), `must be a whole number`, lineIn(t, fullPlanYAML, "cpus: 2")},
		{"yes is not a boolean", strings.Replace(fullPlanYAML, "terminate: true", "terminate: yes", 1), `must be true or false, not "yes"`, lineIn(t, fullPlanYAML, "terminate: true")},
		{"duration without unit", strings.Replace(fullPlanYAML, "timeout: 3s", "timeout: 3", 1), `must be a duration such as 30s or 2m, not "3"`, lineIn(t, fullPlanYAML, "timeout: 3s")},
		{"bad duration", strings.Replace(fullPlanYAML, "timeout: 3s", "timeout: soon", 1), `"soon" is not a duration`, lineIn(t, fullPlanYAML, "timeout: 3s")},
		{"negative duration", strings.Replace(fullPlanYAML, "timeout: 3s", "timeout: -3s", 1), `"-3s" is not a duration`, lineIn(t, fullPlanYAML, "timeout: 3s")},
		{"explicit zero ttl", strings.Replace(fullPlanYAML, "ttl: 30", "ttl: 0", 1), "0 reads as absent, which means the default: leave ttl out", lineIn(t, fullPlanYAML, "ttl: 30")},
		{"explicit zero retries", strings.Replace(fullPlanYAML, "retries: 100", "retries: 0", 1), "leave retries out", lineIn(t, fullPlanYAML, "retries: 100")},
		{"explicit zero timeout", strings.Replace(fullPlanYAML, "timeout: 3s", "timeout: 0s", 1), "leave timeout out", lineIn(t, fullPlanYAML, "timeout: 3s")},
		{"binary tag", strings.Replace(fullPlanYAML, "name: lab\n", "name: !!binary bGFi\n", 1), "must be text, not a value tagged !!binary", 1},
		{"key not a scalar", "name: lab\n? [a]\n: b\nwaves: []\n", "a key must be a field name", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ve := parseFail(t, tc.text)
			if !strings.Contains(ve.Msg, tc.want) {
				t.Errorf("got %q, want it to contain %q", ve.Error(), tc.want)
			}
			if tc.line != 0 && ve.Line != tc.line {
				t.Errorf("got line %d, want %d (%v)", ve.Line, tc.line, ve)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	big := fullPlanYAML + "# " + strings.Repeat("x", MaxFileBytes) + "\n"
	ve := parseFail(t, big)
	if !strings.Contains(ve.Msg, "at most 1048576 bytes (1 MiB)") {
		t.Errorf("got %v", ve)
	}
	// Just under the limit is read.
	pad := MaxFileBytes - len(fullPlanYAML) - 3
	if _, err := Parse([]byte(fullPlanYAML + "# " + strings.Repeat("x", pad) + "\n")); err != nil {
		t.Errorf("a file of %d bytes: %v", len(fullPlanYAML)+pad+3, err)
	}
}

func TestParseValidationLines(t *testing.T) {
	for _, tc := range []struct {
		name, old, new, path, at string
	}{
		{"bad zone", "zone: example.com", "zone: exa_mple..com", "waves[1].steps[0].dns.zone", "zone: exa_mple"},
		{"missing zone", "          zone: example.com\n", "", "waves[1].steps[0].dns.zone", "        dns:"},
		{"bad cpus", "cpus: 2", "cpus: 1000", "waves[0].launch[0].cpus", "cpus: 1000"},
		{"unknown after", "after: [db]", "after: [dbs]", "waves[1].after[0]", "after: [dbs]"},
		{"bad id", "      - id: s-0000000000000000c", "      - id: s-nope", "waves[1].servers[1].id", "id: s-nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := strings.Replace(fullPlanYAML, tc.old, tc.new, 1)
			if text == fullPlanYAML {
				t.Fatalf("%q is not in the plan", tc.old)
			}
			ve := parseFail(t, text)
			if ve.Path != tc.path || ve.Line != lineIn(t, text, tc.at) {
				t.Errorf("got %v (path %s, line %d), want path %s at line %d", ve, ve.Path, ve.Line, tc.path, lineIn(t, text, tc.at))
			}
		})
	}
}

func TestParseAnchors(t *testing.T) {
	text := `name: anchors
waves:
  - name: a
    servers: [{id: s-0000000000000000a}]
    healthChecks:
      - &http
        name: http
        http: {url: "http://${LIFEBOAT_INSTANCE_ADDRESS}/"}
        timeout: 2s
  - name: b
    servers: [{id: s-0000000000000000b}]
    healthChecks:
      - *http
      - <<: *http
        name: http2
        retries: 3
`
	p := parseOK(t, text)
	hc := p.Waves[1].HealthChecks
	if len(hc) != 2 || hc[0].Name != "http" || hc[1].Name != "http2" || hc[1].Retries != 3 || time.Duration(hc[1].Timeout) != 2*time.Second || hc[1].HTTP == nil {
		t.Fatalf("anchors read wrong: %+v", hc)
	}
	bad := strings.Replace(text, "        name: http2", "        name: http2\n        nmae: x", 1)
	if ve := parseFail(t, bad); !strings.Contains(ve.Msg, `unknown field "nmae"`) {
		t.Errorf("got %v", ve)
	}
	bad = strings.Replace(text, "        timeout: 2s", "        timeout: 2s\n        colour: red", 1)
	if ve := parseFail(t, bad); !strings.Contains(ve.Msg, `unknown field "colour"`) {
		t.Errorf("an unknown field in a merged mapping: got %v", ve)
	}
}

func TestParseAliasBombs(t *testing.T) {
	start := time.Now()
	// Waves that each merge the one before twice: 2^40 fields once expanded.
	bomb := "name: bomb\nwaves:\n  - &m0\n    name: a\n    servers: [{id: s-0000000000000000a}]\n" + mergeChain(40)
	if ve := parseFail(t, bomb); !strings.Contains(ve.Msg, "too large once its anchors and aliases are expanded") {
		t.Errorf("got %v", ve)
	}
	// A mapping merged into itself.
	loop := "name: loop\nwaves:\n  - &w\n    name: a\n    servers: [{id: s-0000000000000000a}]\n    <<: *w\n"
	if ve := parseFail(t, loop); !strings.Contains(ve.Msg, "merged (<<) into itself") {
		t.Errorf("got %v", ve)
	}
	// The billion laughs: lists of lists of lists where text is expected.
	laughs := "name: laughs\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
	for c := 'b'; c <= 'j'; c++ {
		p := "*" + string(c-1)
		laughs += string(c) + ": &" + string(c) + " [" + strings.Repeat(p+", ", 8) + p + "]\n"
	}
	laughs += "waves: [{name: a, after: *j, servers: [{id: s-0000000000000000a}]}]\n"
	parseFail(t, laughs)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusing alias bombs took %s", d)
	}
}

// mergeChain is waves whose mappings merge the one before twice, doubling the fields
// to visit at each level.
func mergeChain(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		b.WriteString("  - &m" + strconv.Itoa(i) + "\n    <<: [*m" + strconv.Itoa(i-1) + ", *m" + strconv.Itoa(i-1) + "]\n    name: w" + strconv.Itoa(i) + "\n")
	}
	return b.String()
}

func TestParseNormalizesEmpty(t *testing.T) {
	text := strings.Replace(fullPlanYAML, "after: [db]", "after: []", 1)
	text = strings.Replace(text, "  - name: db\n", "  - name: db\n    steps: []\n", 1)
	p := parseOK(t, text)
	if p.Waves[1].After != nil || p.Waves[0].Steps != nil {
		t.Errorf("empty lists are not nil: after %#v, steps %#v", p.Waves[1].After, p.Waves[0].Steps)
	}
}

func TestParseRoundTrip(t *testing.T) {
	p := parseOK(t, fullPlanYAML)
	c, err := Canonical(p)
	if err != nil {
		t.Fatal(err)
	}
	q := parseOK(t, string(c))
	if !reflect.DeepEqual(p, q) {
		t.Errorf("the canonical form reads back differently:\n%s", c)
	}
	c2, err := Canonical(q)
	if err != nil || string(c2) != string(c) {
		t.Errorf("Canonical is not stable: %v\n%s", err, Diff("first", "second", c, c2))
	}
	// Comments, flow style and key order do not change the canonical form.
	reordered := strings.Replace(fullPlanYAML, "name: lab\ndescription", "# the lab\ndescription", 1) + "name: lab\n"
	r := parseOK(t, reordered)
	if c3, _ := Canonical(r); string(c3) != string(c) {
		t.Errorf("key order changed the canonical form:\n%s", Diff("first", "reordered", c, c3))
	}
}
