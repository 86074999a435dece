package plan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// schemaDoc is the embedded schema, decoded.
func schemaDoc(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(Schema()))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("the schema is not JSON: %v", err)
	}
	if doc["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema is %v", doc["$schema"])
	}
	return doc
}

// schemaResolve follows a $ref to the schema it names.
func schemaResolve(t *testing.T, root, s map[string]any) map[string]any {
	t.Helper()
	for {
		ref, ok := s["$ref"].(string)
		if !ok {
			return s
		}
		name, ok := strings.CutPrefix(ref, "#/$defs/")
		def, found := root["$defs"].(map[string]any)[name].(map[string]any)
		if !ok || !found {
			t.Fatalf("$ref %s names no definition", ref)
		}
		s = def
	}
}

func TestSchemaMatchesTypes(t *testing.T) {
	root := schemaDoc(t)
	schemaMatch(t, root, root, reflect.TypeFor[Plan](), "plan")
}

// schemaMatch checks that schema s describes Go type typ: the same fields, by their
// YAML names, of the same kinds, required when they have no omitempty.
func schemaMatch(t *testing.T, root, s map[string]any, typ reflect.Type, path string) {
	t.Helper()
	s = schemaResolve(t, root, s)
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := map[reflect.Kind]string{reflect.Struct: "object", reflect.Map: "object", reflect.Slice: "array", reflect.String: "string", reflect.Int: "integer", reflect.Bool: "boolean"}[typ.Kind()]
	if typ == reflect.TypeFor[Duration]() {
		want = "string"
	}
	if s["type"] != want {
		t.Errorf("%s: the schema's type is %v, the Go type %s", path, s["type"], typ)
		return
	}
	switch typ.Kind() {
	case reflect.Slice:
		schemaMatch(t, root, s["items"].(map[string]any), typ.Elem(), path+"[]")
	case reflect.Map:
		schemaMatch(t, root, s["additionalProperties"].(map[string]any), typ.Elem(), path+"{}")
	case reflect.Struct:
		if typ == reflect.TypeFor[Duration]() {
			return
		}
		if s["additionalProperties"] != false {
			t.Errorf("%s: additionalProperties is not false", path)
		}
		props, _ := s["properties"].(map[string]any)
		fields := yamlFields(typ)
		var required []string
		for name, f := range fields {
			if !strings.Contains(f.Tag.Get("yaml"), "omitempty") {
				required = append(required, name)
			}
			p, ok := props[name].(map[string]any)
			if !ok {
				t.Errorf("%s.%s: the Go field %s.%s is not in the schema", path, name, typ.Name(), f.Name)
				continue
			}
			schemaMatch(t, root, p, f.Type, path+"."+name)
		}
		for name := range props {
			if _, ok := fields[name]; !ok {
				t.Errorf("%s.%s: the schema's property is no field of %s", path, name, typ.Name())
			}
		}
		var got []string
		for _, r := range asList(s["required"]) {
			got = append(got, r.(string))
		}
		slices.Sort(required)
		slices.Sort(got)
		if !slices.Equal(got, required) {
			t.Errorf("%s: the schema requires %v, the Go fields without omitempty are %v", path, got, required)
		}
	}
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func TestSchemaObjectsAreClosed(t *testing.T) {
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if _, ok := v["properties"]; ok && v["additionalProperties"] != false {
				t.Errorf("%s: an object with properties and additionalProperties not false", path)
			}
			if _, ok := v["properties"]; ok {
				if _, ok := v["description"]; !ok && path != "#" && !strings.HasPrefix(path, "#/$defs/") {
					t.Errorf("%s: no description", path)
				}
			}
			for k, c := range v {
				walk(path+"/"+k, c)
			}
		case []any:
			for i, c := range v {
				walk(fmt.Sprintf("%s/%d", path, i), c)
			}
		}
	}
	walk("#", schemaDoc(t))
}

func TestSchemaLimits(t *testing.T) {
	root := schemaDoc(t)
	prop := func(def, name string) map[string]any {
		s := root
		if def != "" {
			s = root["$defs"].(map[string]any)[def].(map[string]any)
		}
		return s["properties"].(map[string]any)[name].(map[string]any)
	}
	for _, tc := range []struct {
		def, name string
		want      int
	}{
		{"", "waves", MaxWaves},
		{"wave", "failback", MaxSelectorsPerWave},
		{"wave", "servers", MaxSelectorsPerWave},
		{"wave", "healthChecks", MaxChecksPerWave},
		{"wave", "steps", MaxStepsPerWave},
		{"dnsStep", "records", MaxRecordsPerStep},
		{"dnsDrill", "records", MaxRecordsPerStep},
		{"haproxyStep", "servers", MaxHAProxyServers},
		{"dnsRecord", "values", maxValues},
	} {
		if got := prop(tc.def, tc.name)["maxItems"]; fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s.%s: maxItems %v, want %d", tc.def, tc.name, got, tc.want)
		}
	}
	// Every value the schema lists is one Validate accepts.
	for _, tc := range []struct {
		def, name string
		set       func(p *Plan, v string)
	}{
		{"", "onFailure", func(p *Plan, v string) { p.OnFailure = v }},
		{"tsigKey", "algorithm", func(p *Plan, v string) { webDNS(p).Key.Algorithm = v }},
		{"dnsRecord", "type", func(p *Plan, v string) {
			r := &webDNS(p).Records[2]
			r.Type = v
			r.Values = map[string][]string{"A": {"192.0.2.1"}, "AAAA": {"2001:db8::1"}, "CNAME": {"x.example.net"}, "TXT": {"t"}}[v]
			if v == "CNAME" {
				r.Name = "txt"
			}
		}},
	} {
		enum := asList(prop(tc.def, tc.name)["enum"])
		if len(enum) == 0 {
			t.Errorf("%s.%s: no enum", tc.def, tc.name)
		}
		for _, v := range enum {
			p := parseOK(t, fullPlanYAML)
			tc.set(p, v.(string))
			if err := p.Validate(); err != nil {
				t.Errorf("%s.%s %v: %v", tc.def, tc.name, v, err)
			}
		}
	}
}

func TestSchemaDocsCopy(t *testing.T) {
	docs, err := os.ReadFile("../../docs/plan.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(docs, Schema()) {
		t.Error("docs/plan.schema.json is not internal/plan/plan.schema.json: cp internal/plan/plan.schema.json docs/")
	}
	s := Schema()
	s[0] = 'x'
	if Schema()[0] != '{' {
		t.Error("Schema returns the embedded bytes, not a copy")
	}
}

// TestSchemaAcceptsPlans checks plans against the schema with a small validator of the
// keywords the schema uses: valid plans conform, and the schema refuses what it can.
func TestSchemaAcceptsPlans(t *testing.T) {
	root := schemaDoc(t)
	check := func(text string) error {
		var v any
		if err := yaml.Unmarshal([]byte(text), &v); err != nil {
			t.Fatal(err)
		}
		return schemaCheck(root, root, v, "")
	}
	p := parseOK(t, fullPlanYAML)
	canonical, _ := Canonical(p)
	defaults, _ := Canonical(p.WithDefaults())
	for name, text := range map[string]string{"plan": fullPlanYAML, "canonical": string(canonical), "with defaults": string(defaults)} {
		if err := check(text); err != nil {
			t.Errorf("the schema refuses the %s: %v", name, err)
		}
	}
	for _, tc := range []struct{ old, new, want string }{
		{"  - name: db\n", "  - name: db\n    nmae: db\n", "nmae is not allowed"},
		{"      - group: frontends", "      - group: frontends\n        id: s-0000000000000000d", "more than 1 properties"},
		{"        script:\n", "        webhook: {url: https://x/, secret: s}\n        script:\n", "more than 2 properties"},
		{"name: lab\n", "", "name is required"},
		{"type: CNAME", "type: MX", "not one of"},
		{"ttl: 30", "ttl: 604801", "above"},
		{"cpus: 2", "cpus: two", "not a integer"},
		{"timeout: 3s", "timeout: 3", "not a string"},
		{"id: s-0000000000000000a", "id: s-1", "does not match"},
		{"url: https://hooks", "url: http://hooks", "does not match"},
	} {
		text := strings.Replace(fullPlanYAML, tc.old, tc.new, 1)
		if err := check(text); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q → %q: %v, want …%s…", tc.old, tc.new, err, tc.want)
		}
	}
}

// schemaCheck checks v against s, for the keywords the plan schema uses.
func schemaCheck(root, s map[string]any, v any, path string) error {
	if ref, ok := s["$ref"].(string); ok {
		def := root["$defs"].(map[string]any)[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
		if err := schemaCheck(root, def, v, path); err != nil {
			return err
		}
	}
	if typ, ok := s["type"].(string); ok && !schemaIsType(v, typ) {
		return fmt.Errorf("%s: %v is not a %s", path, v, typ)
	}
	if enum := asList(s["enum"]); enum != nil && !slices.Contains(enum, v) {
		return fmt.Errorf("%s: %v is not one of %v", path, v, enum)
	}
	if err := schemaBounds(s, v, path); err != nil {
		return err
	}
	if one := asList(s["oneOf"]); one != nil {
		n := 0
		for _, o := range one {
			if schemaCheck(root, o.(map[string]any), v, path) == nil {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%s: matches %d of oneOf", path, n)
		}
	}
	switch v := v.(type) {
	case []any:
		for i, item := range v {
			if items, ok := s["items"].(map[string]any); ok {
				if err := schemaCheck(root, items, item, fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	case map[string]any:
		return schemaCheckObject(root, s, v, path)
	}
	return nil
}

func schemaCheckObject(root, s, v map[string]any, path string) error {
	for _, r := range asList(s["required"]) {
		if _, ok := v[r.(string)]; !ok {
			return fmt.Errorf("%s: %s is required", path, r)
		}
	}
	props, _ := s["properties"].(map[string]any)
	for k, item := range v {
		if names, ok := s["propertyNames"].(map[string]any); ok {
			if err := schemaCheck(root, names, k, path+"."+k); err != nil {
				return err
			}
		}
		switch p, ok := props[k].(map[string]any); {
		case ok:
			if err := schemaCheck(root, p, item, path+"."+k); err != nil {
				return err
			}
		case s["additionalProperties"] == false:
			return fmt.Errorf("%s: %s is not allowed", path, k)
		default:
			if extra, ok := s["additionalProperties"].(map[string]any); ok {
				if err := schemaCheck(root, extra, item, path+"."+k); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func schemaIsType(v any, typ string) bool {
	switch v.(type) {
	case string:
		return typ == "string"
	case int:
		return typ == "integer"
	case bool:
		return typ == "boolean"
	case []any:
		return typ == "array"
	case map[string]any:
		return typ == "object"
	}
	return false
}

// schemaBounds checks the minimum/maximum keywords and patterns.
func schemaBounds(s map[string]any, v any, path string) error {
	num := func(k string) (int, bool) {
		n, ok := s[k].(json.Number)
		i, err := n.Int64()
		return int(i), ok && err == nil
	}
	size := -1
	switch v := v.(type) {
	case string:
		size = utf8.RuneCountInString(v)
		if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(v) {
			return fmt.Errorf("%s: %q does not match %s", path, v, p)
		}
	case []any:
		size = len(v)
	case map[string]any:
		size = len(v)
	case int:
		if m, ok := num("minimum"); ok && v < m {
			return fmt.Errorf("%s: %d is below %d", path, v, m)
		}
		if m, ok := num("maximum"); ok && v > m {
			return fmt.Errorf("%s: %d is above %d", path, v, m)
		}
	}
	for _, k := range []string{"minLength", "minItems", "minProperties"} {
		if m, ok := num(k); ok && size >= 0 && size < m {
			return fmt.Errorf("%s: fewer than %d %s", path, m, strings.TrimPrefix(k, "min"))
		}
	}
	for _, k := range []string{"maxLength", "maxItems", "maxProperties"} {
		if m, ok := num(k); ok && size > m {
			return fmt.Errorf("%s: more than %d %s", path, m, strings.ToLower(strings.TrimPrefix(k, "max")))
		}
	}
	return nil
}
