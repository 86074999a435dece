package plan

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// MaxFileBytes is the largest plan file Parse reads, and the largest a plan may be once
// written out again (Canonical).
const MaxFileBytes = 1 << 20

// maxNodes bounds the YAML nodes of a plan once its aliases are expanded: a 1 MiB file
// of plain YAML holds far fewer, an alias bomb far more.
const maxNodes = 1 << 20

var (
	yamlLinePattern     = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	yamlNotFoundPattern = regexp.MustCompile(`^field (.+) not found in type plan\.(\w+)$`)
)

// Parse reads a plan file: one YAML document of at most MaxFileBytes, every field known
// to the format, then Validate. Errors are *ValidationError: the line (when known), the
// path of what is wrong (such as waves[1].steps[0].dns.zone) and what to fix. The plan
// is returned as written, without defaults (see WithDefaults). Anchors, aliases and
// merge keys (<<) are allowed, within bounds that stop alias bombs.
func Parse(data []byte) (*Plan, error) {
	if len(data) > MaxFileBytes {
		return nil, planErr("", "the plan file is %d bytes; a plan file is at most %d bytes (1 MiB)", len(data), MaxFileBytes)
	}
	root, err := decodeDocument(data)
	if err != nil {
		return nil, err
	}
	if root.Kind != yaml.MappingNode {
		return nil, &ValidationError{Line: root.Line, Msg: fmt.Sprintf("the plan file must be a mapping, with name: and waves:, not %s", describeNode(root))}
	}
	w := &walker{lines: map[string]int{"": root.Line}, merging: map[*yaml.Node]bool{}}
	if err := w.walk(root, reflect.TypeFor[Plan](), ""); err != nil {
		return nil, err
	}
	var p Plan
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, yamlError(err)
	}
	normalizeEmpty(reflect.ValueOf(&p).Elem())
	if err := p.Validate(); err != nil {
		return nil, w.locate(err)
	}
	if _, err := Canonical(&p); err != nil {
		return nil, err
	}
	return &p, nil
}

// decodeDocument reads the file's one YAML document as a node tree.
func decodeDocument(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, planErr("", "the plan file is empty: it needs at least name: and waves:")
		}
		return nil, yamlError(err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, yamlError(err)
	default:
		line := extra.Line
		if len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		return nil, &ValidationError{Line: line, Msg: "the file holds a second YAML document (after ---): a plan file holds one plan"}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, planErr("", "the plan file holds no YAML document")
	}
	return doc.Content[0], nil
}

// yamlError rewords an error of the YAML decoder for an operator.
func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		return yamlLineError(te.Errors[0], "")
	}
	return yamlLineError(strings.TrimPrefix(err.Error(), "yaml: "), "the file is not valid YAML: ")
}

func yamlLineError(s, prefix string) error {
	m := yamlLinePattern.FindStringSubmatch(s)
	if m == nil {
		return &ValidationError{Msg: prefix + s}
	}
	line, _ := strconv.Atoi(m[1])
	msg := prefix + m[2]
	if f := yamlNotFoundPattern.FindStringSubmatch(m[2]); f != nil {
		msg = fmt.Sprintf("unknown field %q in %s", f[1], typeNoun(f[2]))
	}
	return &ValidationError{Line: line, Msg: msg}
}

// walker checks a plan's node tree against the Go types before it is decoded: unknown
// and repeated fields, and values of the wrong kind, each with its line and path. It
// records the line of every path for the errors of Validate.
type walker struct {
	lines   map[string]int
	nodes   int
	merging map[*yaml.Node]bool // mappings being merged (<<), against merge loops
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) error {
	if w.nodes++; w.nodes > maxNodes {
		return &ValidationError{Line: n.Line, Msg: "the plan is too large once its anchors and aliases are expanded: write it out without aliases"}
	}
	if n.Kind == yaml.AliasNode {
		return w.walk(n.Alias, t, path)
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	if t == reflect.TypeFor[Duration]() {
		return checkDurationNode(n, path)
	}
	switch t.Kind() {
	case reflect.Pointer:
		return w.walk(n, t.Elem(), path)
	case reflect.Struct:
		return w.mapping(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return nodeErr(n, path, "must be a list (lines starting with -), not %s", describeNode(n))
		}
		for i, item := range n.Content {
			p := pathIndex(path, i)
			w.lines[p] = item.Line
			if err := w.walk(item, t.Elem(), p); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		return w.stringMap(n, path)
	}
	return checkScalarNode(n, t, path)
}

// mapping checks a mapping against struct type t.
func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind != yaml.MappingNode {
		return nodeErr(n, path, "%s must be a mapping (key: value lines), not %s", typeNoun(t.Name()), describeNode(n))
	}
	fields := yamlFields(t)
	seen := map[string]int{}
	return w.pairs(n, path, func(k, v *yaml.Node, merged bool) error {
		f, ok := fields[k.Value]
		if !ok {
			return nodeErr(k, path, "unknown field %q in %s%s", k.Value, typeNoun(t.Name()), suggest(k.Value, fields))
		}
		p := pathField(path, k.Value)
		if !merged {
			if first, dup := seen[k.Value]; dup {
				return nodeErr(k, p, "%s is given twice (first at line %d): keep one", k.Value, first)
			}
			seen[k.Value] = k.Line
			w.lines[p] = k.Line
		} else if _, ok := w.lines[p]; !ok {
			w.lines[p] = k.Line
		}
		if err := w.walk(v, f.Type, p); err != nil {
			return err
		}
		return explicitZero(v, f, p)
	})
}

// stringMap checks a mapping of text to text (tags).
func (w *walker) stringMap(n *yaml.Node, path string) error {
	if n.Kind != yaml.MappingNode {
		return nodeErr(n, path, "must be a mapping (key: value lines), not %s", describeNode(n))
	}
	seen := map[string]int{}
	return w.pairs(n, path, func(k, v *yaml.Node, merged bool) error {
		if first, dup := seen[k.Value]; dup && !merged {
			return nodeErr(k, path, "%q is given twice (first at line %d): keep one", k.Value, first)
		}
		if !merged {
			seen[k.Value] = k.Line
		}
		return w.walk(v, reflect.TypeFor[string](), path)
	})
}

// pairs calls visit on each key and value of mapping n, those merged in with << too
// (merged true), after the mapping's own.
func (w *walker) pairs(n *yaml.Node, path string, visit func(k, v *yaml.Node, merged bool) error) error {
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if w.nodes++; w.nodes > maxNodes {
			return &ValidationError{Line: k.Line, Msg: "the plan is too large once its anchors and aliases are expanded: write it out without aliases"}
		}
		if k.Kind != yaml.ScalarNode {
			return nodeErr(k, path, "a key must be a field name, not %s", describeNode(k))
		}
		if err := visit(k, v, false); err != nil {
			return err
		}
	}
	for _, m := range merges {
		if err := w.merge(m, path, visit); err != nil {
			return err
		}
	}
	return nil
}

// merge visits the pairs of what a << key merges in: a mapping, or a list of them.
func (w *walker) merge(m *yaml.Node, path string, visit func(k, v *yaml.Node, merged bool) error) error {
	for m.Kind == yaml.AliasNode {
		m = m.Alias
	}
	switch m.Kind {
	case yaml.SequenceNode:
		for _, item := range m.Content {
			if err := w.merge(item, path, visit); err != nil {
				return err
			}
		}
		return nil
	case yaml.MappingNode:
	default:
		return nodeErr(m, path, "<< merges a mapping or a list of mappings, not %s", describeNode(m))
	}
	if w.merging[m] {
		return nodeErr(m, path, "a mapping is merged (<<) into itself")
	}
	w.merging[m] = true
	defer delete(w.merging, m)
	return w.pairs(m, path, func(k, v *yaml.Node, _ bool) error { return visit(k, v, true) })
}

// checkScalarNode checks a scalar for a field of kind string, int or bool.
func checkScalarNode(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind != yaml.ScalarNode {
		return nodeErr(n, path, "must be a single value, not %s", describeNode(n))
	}
	tag := n.ShortTag()
	switch t.Kind() {
	case reflect.String:
		switch tag {
		case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
			return nil
		}
		return nodeErr(n, path, "must be text, not a value tagged %s", tag)
	case reflect.Int:
		var i int64
		if tag != "!!int" || n.Decode(&i) != nil || int64(int(i)) != i {
			return nodeErr(n, path, "must be a whole number, not %s", describeNode(n))
		}
		return nil
	case reflect.Bool:
		if tag != "!!bool" {
			return nodeErr(n, path, "must be true or false, not %s", describeNode(n))
		}
		return nil
	}
	return nodeErr(n, path, "cannot be read (a field of kind %s)", t.Kind())
}

// checkDurationNode checks a duration such as "30s".
func checkDurationNode(n *yaml.Node, path string) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return nodeErr(n, path, "must be a duration such as 30s or 2m, not %s", describeNode(n))
	}
	if d, err := time.ParseDuration(n.Value); err != nil || d < 0 {
		return nodeErr(n, path, "%q is not a duration such as 30s or 2m", n.Value)
	}
	return nil
}

// explicitZero refuses 0 written out for a field whose 0 means "absent, the default":
// "ttl: 0" would otherwise silently be the default TTL.
func explicitZero(v *yaml.Node, f reflect.StructField, path string) error {
	for v.Kind == yaml.AliasNode {
		v = v.Alias
	}
	if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" || !strings.Contains(f.Tag.Get("yaml"), "omitempty") {
		return nil
	}
	zero := false
	switch {
	case f.Type == reflect.TypeFor[Duration]():
		d, err := time.ParseDuration(v.Value)
		zero = err == nil && d == 0
	case f.Type.Kind() == reflect.Int:
		var i int64
		zero = v.Decode(&i) == nil && i == 0
	}
	if zero {
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		return nodeErr(v, path, "0 reads as absent, which means the default: leave %s out for the default, or give a value in its range", name)
	}
	return nil
}

func nodeErr(n *yaml.Node, path, format string, args ...any) *ValidationError {
	return &ValidationError{Path: path, Line: n.Line, Msg: fmt.Sprintf(format, args...)}
}

// describeNode names what a node is, for a message.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		return strconv.Quote(truncate(n.Value))
	}
	return "nothing"
}

// yamlFields maps a struct's YAML field names to its fields.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.IsExported() && name != "" && name != "-" {
			out[name] = f
		}
	}
	return out
}

// typeNoun names a type of the format for an operator.
func typeNoun(name string) string {
	switch name {
	case "Plan":
		return "the plan"
	case "Schedule":
		return "the schedule"
	case "DrillOptions":
		return "the drill options"
	case "Wave":
		return "a wave"
	case "Selector":
		return "a server selector"
	case "FailbackTarget":
		return "a failback target"
	case "LaunchOverride":
		return "a launch override"
	case "HealthCheck":
		return "a health check"
	case "HTTPCheck":
		return "an http check"
	case "TCPCheck":
		return "a tcp check"
	case "CommandCheck":
		return "a command check"
	case "Step":
		return "a step"
	case "DNSStep":
		return "a dns step"
	case "DNSDrill":
		return "a dns step's drill"
	case "TSIGKey":
		return "a TSIG key"
	case "DNSRecord":
		return "a DNS record"
	case "HAProxyStep":
		return "an haproxy step"
	case "HAProxyServer":
		return "an haproxy server"
	case "WebhookStep":
		return "a webhook step"
	case "ScriptStep":
		return "a script step"
	}
	return name
}

// suggest is " (did you mean "x"?)" for the known field closest to an unknown one, or
// the list of known fields when none is close.
func suggest(name string, fields map[string]reflect.StructField) string {
	best, bestDist := "", 3
	var names []string
	for _, f := range sortedFieldNames(fields) {
		names = append(names, f)
		if d := editDistance(strings.ToLower(name), strings.ToLower(f)); d < bestDist {
			best, bestDist = f, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (its fields: " + strings.Join(names, ", ") + ")"
}

// sortedFieldNames is the field names in the order the struct declares them.
func sortedFieldNames(fields map[string]reflect.StructField) []string {
	names := slices.Collect(maps.Keys(fields))
	slices.SortFunc(names, func(a, b string) int { return fields[a].Index[0] - fields[b].Index[0] })
	return names
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// locate gives a validation error the line of its path, or of the nearest enclosing
// path the file has.
func (w *walker) locate(err error) error {
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Line != 0 {
		return err
	}
	for path := ve.Path; ; path = parentPath(path) {
		if l, ok := w.lines[path]; ok {
			ve.Line = l
			return ve
		}
		if path == "" {
			return ve
		}
	}
}

// parentPath is the path that encloses path: "waves[1]" for "waves[1].steps".
func parentPath(path string) string {
	if strings.HasSuffix(path, "]") {
		if i := strings.LastIndexByte(path, '['); i >= 0 {
			return path[:i]
		}
	}
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		return path[:i]
	}
	return ""
}

// normalizeEmpty sets empty lists and maps to nil: "after: []" is no after at all,
// and a plan reads the same after Canonical.
func normalizeEmpty(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			normalizeEmpty(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			normalizeEmpty(v.Field(i))
		}
	case reflect.Slice:
		if v.Len() == 0 {
			v.SetZero()
			return
		}
		for i := range v.Len() {
			normalizeEmpty(v.Index(i))
		}
	case reflect.Map:
		if v.Len() == 0 {
			v.SetZero()
		}
	}
}
