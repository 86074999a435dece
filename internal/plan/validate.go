package plan

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Limits of a plan: Validate refuses a plan beyond them.
const (
	MaxWaves            = 50
	MaxSelectorsPerWave = 500
	MaxChecksPerWave    = 20
	MaxStepsPerWave     = 50
	MaxRecordsPerStep   = 100
	MaxHAProxyServers   = 100

	maxValues = 20   // values (or failback values) of one DNS record
	maxTags   = 50   // as the API allows on launch settings and instances
	maxText   = 4096 // descriptions, commands, scripts, HTTP bodies
	maxURL    = 2048
	maxSocket = 107 // sun_path holds 108 bytes with the final NUL
	maxTTL    = 604800
)

// Defaults of the fields a plan may leave out. WithDefaults fills them in; Validate
// accepts a plan with or without them.
const (
	DefaultCheckTimeout   = 5 * time.Second
	DefaultCheckInterval  = 5 * time.Second
	DefaultCheckRetries   = 60
	DefaultHTTPStatus     = 200
	DefaultDNSPort        = "53"
	DefaultTSIGAlgorithm  = "hmac-sha256"
	DefaultRecordType     = "A"
	DefaultTTL            = 60
	DefaultHAProxyPort    = 80
	DefaultWebhookTimeout = 10 * time.Second
	DefaultScriptTimeout  = 60 * time.Second
)

// The patterns are the API's where it has one (internal/api/settings.go): a plan's
// launch overrides end up in launch settings, which the API checks again.
var (
	hostnamePattern    = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$`)
	tagKeyPattern      = regexp.MustCompile(`^[A-Za-z0-9_.:/=+@-]{1,128}$`)
	haproxyNamePattern = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)
	dnsLabelPattern    = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)
)

// ValidationError is a problem in a plan: where it is (Path, such as
// waves[1].steps[0].dns.zone, empty for the file as a whole, and Line in the file when
// the plan was parsed from one and the line is known) and what to fix (Msg).
type ValidationError struct {
	Path string
	Line int
	Msg  string
}

// Error is "line 12: waves[1].steps[0].dns.zone: what to fix".
func (e *ValidationError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func planErr(path, format string, args ...any) *ValidationError {
	return &ValidationError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

func pathField(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func pathIndex(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// Validate checks the whole plan and returns a *ValidationError naming the first
// problem: where it is and what to fix. It changes nothing: defaults are left out (see
// WithDefaults), and a plan with its defaults filled in is just as valid. Servers
// selected by tags or group are resolved by the control plane when the plan runs, so
// only ids are checked here against each other.
func (p *Plan) Validate() error {
	if p == nil {
		return planErr("", "the plan is empty: give it a name and at least one wave")
	}
	if err := p.validateHeader(); err != nil {
		return err
	}
	v, err := newValidator(p)
	if err != nil {
		return err
	}
	for i := range p.Waves {
		if err := v.selectors(i); err != nil {
			return err
		}
	}
	for i := range p.Waves {
		if err := v.launch(i); err != nil {
			return err
		}
		if err := v.failback(i); err != nil {
			return err
		}
		if err := v.checks(i); err != nil {
			return err
		}
		if err := v.steps(i); err != nil {
			return err
		}
	}
	if err := v.crossRecords(); err != nil {
		return err
	}
	return v.crossBackends()
}

// validateHeader checks the plan's own fields and the number of its waves.
func (p *Plan) validateHeader() error {
	if !api.ValidName(p.Name) {
		return badName("name", "the plan", p.Name)
	}
	if !validText(p.Description, maxText, true) {
		return planErr("description", "the description must be at most %d bytes of text (UTF-8, no control characters but newlines and tabs)", maxText)
	}
	switch p.OnFailure {
	case "", OnFailureLeave, OnFailureTerminate:
	default:
		return planErr("onFailure", "onFailure must be leave (the default: what a failed run launched keeps running, for you to look at) or terminate, not %q", p.OnFailure)
	}
	if p.Schedule != nil {
		if err := p.Schedule.validate(); err != nil {
			return planErr("schedule.drill", "%s", err)
		}
	}
	switch {
	case len(p.Waves) == 0:
		return planErr("waves", "the plan has no wave: list at least one under waves, each with a name and its servers")
	case len(p.Waves) > MaxWaves:
		return planErr("waves", "the plan has %d waves; at most %d are allowed", len(p.Waves), MaxWaves)
	}
	return nil
}

// badName says what is wrong with a name that is not api.ValidName.
func badName(path, what, name string) *ValidationError {
	if name == "" {
		return planErr(path, "%s needs a name: 1-63 lowercase letters, digits or '-'", what)
	}
	return planErr(path, "%s name %q is not valid: use 1-63 lowercase letters, digits or '-', starting with a letter or digit", what, name)
}

// validator holds what checking one wave needs to know of the others.
type validator struct {
	p      *Plan
	before [][]bool          // before[i][j]: wave j is done before wave i starts
	ids    map[string]int    // a server selected by id → its wave
	groups map[string]int    // a group selected → its wave
	into   map[string]string // an instance servers fail back into → where
	dns    []dnsRef          // every DNS record of the plan, in file order
	zones  []dnsRef          // every zone, production and drill, in file order
	lbs    []lbRef           // every HAProxy step
}

// dnsRef is a DNS record (or, in zones, a zone: name is the zone) and where it is.
type dnsRef struct {
	name, typ, zone, path string
	drill                 bool
}

// lbRef is an HAProxy step and where it is.
type lbRef struct {
	endpoint, backend, drillBackend, path string
	servers                               []string
}

// newValidator checks the waves' names and order and works out which waves are done
// before which.
func newValidator(p *Plan) (*validator, error) {
	for i, w := range p.Waves {
		if !api.ValidName(w.Name) {
			return nil, badName(pathField(pathIndex("waves", i), "name"), "a wave", w.Name)
		}
	}
	deps, implicit, err := p.deps()
	if err != nil {
		return nil, err
	}
	order, err := p.topoOrder(deps, implicit)
	if err != nil {
		return nil, err
	}
	n := len(p.Waves)
	v := &validator{p: p, before: make([][]bool, n), ids: map[string]int{}, groups: map[string]int{}, into: map[string]string{}}
	for _, i := range order {
		v.before[i] = make([]bool, n)
		for _, d := range deps[i] {
			v.before[i][d] = true
			for j, b := range v.before[d] {
				v.before[i][j] = v.before[i][j] || b
			}
		}
	}
	return v, nil
}

// Order is the indexes of the plan's waves in an order they can run one after the
// other: a wave comes after the waves its After names or, without After, after the
// wave before it in the file; otherwise file order is kept. It refuses unknown or
// repeated names in After, and cycles.
func (p *Plan) Order() ([]int, error) {
	if len(p.Waves) > MaxWaves {
		return nil, planErr("waves", "the plan has %d waves; at most %d are allowed", len(p.Waves), MaxWaves)
	}
	deps, implicit, err := p.deps()
	if err != nil {
		return nil, err
	}
	return p.topoOrder(deps, implicit)
}

// deps is, for each wave, the waves it comes after; implicit[i] says wave i has no
// After and comes after the wave before it in the file.
func (p *Plan) deps() (deps [][]int, implicit []bool, err error) {
	n := len(p.Waves)
	index := make(map[string]int, n)
	for i, w := range p.Waves {
		if j, ok := index[w.Name]; ok {
			return nil, nil, planErr(pathField(pathIndex("waves", i), "name"), "two waves are named %q (waves[%d] and waves[%d]): give each wave a name of its own", w.Name, j, i)
		}
		index[w.Name] = i
	}
	deps, implicit = make([][]int, n), make([]bool, n)
	for i, w := range p.Waves {
		if len(w.After) == 0 {
			if i > 0 {
				deps[i], implicit[i] = []int{i - 1}, true
			}
			continue
		}
		for j, a := range w.After {
			path := pathIndex(pathField(pathIndex("waves", i), "after"), j)
			k, ok := index[a]
			switch {
			case !ok:
				return nil, nil, planErr(path, "wave %s comes after %q, but the plan has no wave of that name (its waves: %s)", w.Name, a, waveNames(p.Waves))
			case k == i:
				return nil, nil, planErr(path, "wave %s cannot come after itself: remove %q from its after", w.Name, a)
			case slices.Contains(deps[i], k):
				return nil, nil, planErr(path, "wave %s names %s twice in after: keep one", w.Name, a)
			}
			deps[i] = append(deps[i], k)
		}
	}
	return deps, implicit, nil
}

// waveNames lists the first waves' names for a message.
func waveNames(ws []Wave) string {
	var names []string
	for i, w := range ws {
		if i == 10 {
			names = append(names, "…")
			break
		}
		names = append(names, w.Name)
	}
	return strings.Join(names, ", ")
}

// topoOrder orders the waves after their dependencies, the lowest index first among
// those ready; waves left over form a cycle, which the error names.
func (p *Plan) topoOrder(deps [][]int, implicit []bool) ([]int, error) {
	n := len(deps)
	pending := make([]int, n) // dependencies not yet ordered
	users := make([][]int, n) // the waves that come after each
	for i, ds := range deps {
		pending[i] = len(ds)
		for _, d := range ds {
			users[d] = append(users[d], i)
		}
	}
	done := make([]bool, n)
	order := make([]int, 0, n)
	for len(order) < n {
		next := -1
		for i := range n {
			if !done[i] && pending[i] == 0 {
				next = i
				break
			}
		}
		if next < 0 {
			return nil, p.cycleError(deps, implicit, done)
		}
		done[next] = true
		order = append(order, next)
		for _, u := range users[next] {
			pending[u]--
		}
	}
	return order, nil
}

// cycleError finds a cycle among the waves not done (each of them waits on another one
// not done) and names it.
func (p *Plan) cycleError(deps [][]int, implicit, done []bool) error {
	cur := slices.Index(done, false)
	pos := map[int]int{}
	var path []int
	for {
		if k, ok := pos[cur]; ok {
			path = path[k:]
			break
		}
		pos[cur] = len(path)
		path = append(path, cur)
		for _, d := range deps[cur] {
			if !done[d] {
				cur = d
				break
			}
		}
	}
	names := make([]string, 0, len(path)+1)
	var why string
	for _, i := range path {
		names = append(names, p.Waves[i].Name)
		if implicit[i] && why == "" {
			why = fmt.Sprintf(" (wave %s has no after, so it comes after %s, the wave before it in the file)", p.Waves[i].Name, p.Waves[i-1].Name)
		}
	}
	names = append(names, names[0])
	return planErr(pathField(pathIndex("waves", path[0]), "after"), "waves %s form a cycle: each comes after the next%s; remove one of these dependencies", strings.Join(names, " → "), why)
}

// selectors checks wave i's server selectors and records its servers selected by id.
func (v *validator) selectors(i int) error {
	w := &v.p.Waves[i]
	path := pathField(pathIndex("waves", i), "servers")
	switch {
	case len(w.Servers) == 0:
		return planErr(path, "wave %s selects no server: list at least one under servers (by id, tags or group)", w.Name)
	case len(w.Servers) > MaxSelectorsPerWave:
		return planErr(path, "wave %s has %d server selectors; at most %d are allowed: select many servers at once by tags or group", w.Name, len(w.Servers), MaxSelectorsPerWave)
	}
	for j, s := range w.Servers {
		if err := v.selector(i, pathIndex(path, j), s); err != nil {
			return err
		}
	}
	return nil
}

func (v *validator) selector(i int, path string, s Selector) error {
	wave := v.p.Waves[i].Name
	if err := exactlyOne(path, "a server selector", "give one of them per selector, and more selectors for more servers",
		[]string{"id", "tags", "group"}, s.ID != "", len(s.Tags) > 0, s.Group != ""); err != nil {
		return err
	}
	switch {
	case s.ID != "":
		if !api.ValidID(api.PrefixSourceServer, s.ID) {
			return planErr(pathField(path, "id"), "%q is not a source server id (s- and 17 hexadecimal digits; see lifeboat source-servers list)", s.ID)
		}
		if k, ok := v.ids[s.ID]; ok {
			if k == i {
				return planErr(pathField(path, "id"), "server %s is listed twice in wave %s: keep one", s.ID, wave)
			}
			return planErr(pathField(path, "id"), "server %s is in waves %s and %s: a server belongs to one wave", s.ID, v.p.Waves[k].Name, wave)
		}
		v.ids[s.ID] = i
	case s.Group != "":
		if !api.ValidName(s.Group) {
			return planErr(pathField(path, "group"), "%q is not a consistency group's name or id (cg-…; see lifeboat groups list)", s.Group)
		}
		if k, ok := v.groups[s.Group]; ok {
			return planErr(pathField(path, "group"), "group %s is selected twice (waves %s and %s): a server belongs to one wave", s.Group, v.p.Waves[k].Name, wave)
		}
		v.groups[s.Group] = i
	default:
		return checkTags(pathField(path, "tags"), s.Tags)
	}
	return nil
}

// checkTags checks tags as the API checks launch settings' and instances' tags.
func checkTags(path string, tags map[string]string) error {
	if len(tags) > maxTags {
		return planErr(path, "at most %d tags are allowed, not %d", maxTags, len(tags))
	}
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		if v := tags[k]; !tagKeyPattern.MatchString(k) || len(v) > 256 || !printableASCII(v) {
			return planErr(path, "tag %q is not valid: keys are 1-128 letters, digits or _.:/=+@- and values at most 256 printable ASCII characters", k)
		}
	}
	return nil
}

// exactlyOne refuses none or more than one of names being set.
func exactlyOne(path, what, fix string, names []string, set ...bool) error {
	var have []string
	for k, s := range set {
		if s {
			have = append(have, names[k])
		}
	}
	switch len(have) {
	case 1:
		return nil
	case 0:
		return planErr(path, "%s needs one of %s", what, joinList(names, "or"))
	}
	return planErr(path, "%s has %s: %s", what, joinList(have, "and"), fix)
}

// joinList is "a, b or c".
func joinList(items []string, conj string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " " + conj + " " + items[len(items)-1]
}

// launch checks wave i's launch overrides.
func (v *validator) launch(i int) error {
	w := &v.p.Waves[i]
	base := pathField(pathIndex("waves", i), "launch")
	if len(w.Launch) > MaxSelectorsPerWave {
		return planErr(base, "wave %s has %d launch overrides; at most %d are allowed", w.Name, len(w.Launch), MaxSelectorsPerWave)
	}
	seen := map[string]int{}
	for j, o := range w.Launch {
		path := pathIndex(base, j)
		if k, ok := seen[o.Server]; ok {
			if o.Server == "" {
				return planErr(path, "wave %s has two launch overrides for all its servers (launch[%d] and launch[%d]): merge them", w.Name, k, j)
			}
			return planErr(path, "wave %s has two launch overrides for server %s (launch[%d] and launch[%d]): merge them", w.Name, o.Server, k, j)
		}
		seen[o.Server] = j
		if err := v.override(i, path, o); err != nil {
			return err
		}
	}
	return nil
}

func (v *validator) override(i int, path string, o LaunchOverride) error {
	wave := v.p.Waves[i].Name
	if o.Server != "" {
		if !api.ValidID(api.PrefixSourceServer, o.Server) {
			return planErr(pathField(path, "server"), "%q is not a source server id (s- and 17 hexadecimal digits)", o.Server)
		}
		if k, ok := v.ids[o.Server]; (!ok && !v.selectsByTagOrGroup(i)) || (ok && k != i) {
			return planErr(pathField(path, "server"), "server %s is not selected by id in wave %s: a launch override names a server of its own wave (or leave server out for all of them)", o.Server, wave)
		}
	}
	switch {
	case o.CPUs == 0 && o.MemoryMiB == 0 && o.Hostname == "" && o.IP == "" && len(o.Tags) == 0:
		return planErr(path, "a launch override changes nothing: give cpus, memoryMiB, hostname, ip or tags")
	case o.CPUs != 0 && (o.CPUs < 1 || o.CPUs > 256):
		return planErr(pathField(path, "cpus"), "cpus must be 1 to 256, not %d", o.CPUs)
	case o.MemoryMiB != 0 && (o.MemoryMiB < 128 || o.MemoryMiB > 1<<20):
		return planErr(pathField(path, "memoryMiB"), "memoryMiB must be 128 to 1048576 (1 TiB, the most launch settings allow), not %d", o.MemoryMiB)
	case o.Hostname != "" && (len(o.Hostname) > 253 || !hostnamePattern.MatchString(o.Hostname)):
		return planErr(pathField(path, "hostname"), "hostname %q is not a valid host name (letters, digits, '-' and '.')", o.Hostname)
	}
	if o.IP != "" {
		if _, _, err := net.ParseCIDR(o.IP); err != nil {
			return planErr(pathField(path, "ip"), "ip %q must be an address with its prefix length, like 10.0.0.5/24", o.IP)
		}
	}
	if (o.Hostname != "" || o.IP != "") && o.Server == "" {
		return planErr(path, "hostname and ip are set for one server at a time: name it in server (every server of wave %s would get the same one)", wave)
	}
	return checkTags(pathField(path, "tags"), o.Tags)
}

// failback checks where wave i's servers go home on failback.
func (v *validator) failback(i int) error {
	w := &v.p.Waves[i]
	base := pathField(pathIndex("waves", i), "failback")
	if len(w.Failback) > MaxSelectorsPerWave {
		return planErr(base, "wave %s has %d failback targets; at most %d are allowed", w.Name, len(w.Failback), MaxSelectorsPerWave)
	}
	seen := map[string]int{}
	for j, f := range w.Failback {
		path := pathIndex(base, j)
		k, ok := v.ids[f.Server]
		switch {
		case f.Server == "":
			return planErr(pathField(path, "server"), "a failback target needs server: a source server selected by id in wave %s", w.Name)
		case !api.ValidID(api.PrefixSourceServer, f.Server):
			return planErr(pathField(path, "server"), "%q is not a source server id (s- and 17 hexadecimal digits)", f.Server)
		case (!ok && !v.selectsByTagOrGroup(i)) || (ok && k != i):
			return planErr(pathField(path, "server"), "server %s is not selected by id in wave %s: a wave's failback names servers of that wave", f.Server, w.Name)
		}
		if k, ok := seen[f.Server]; ok {
			return planErr(pathField(path, "server"), "server %s is named twice in failback (failback[%d] and failback[%d]): keep one", f.Server, k, j)
		}
		seen[f.Server] = j
		switch {
		case f.Into == "":
			return planErr(pathField(path, "into"), "a failback target needs into: an instance at the origin site (lifeboat instances list: its name or id), or new for a new machine")
		case !api.ValidName(f.Into):
			return planErr(pathField(path, "into"), "into %q must name an instance (lifeboat instances list: its name or id), or be new for a new machine", f.Into)
		}
		if prev, ok := v.into[f.Into]; ok && f.Into != api.FailbackIntoNew {
			return planErr(pathField(path, "into"), "instance %s is also the failback target at %s: each server goes home to a machine of its own", f.Into, prev)
		}
		v.into[f.Into] = pathField(path, "into")
	}
	return nil
}

// checks checks wave i's health checks.
func (v *validator) checks(i int) error {
	w := &v.p.Waves[i]
	base := pathField(pathIndex("waves", i), "healthChecks")
	if len(w.HealthChecks) > MaxChecksPerWave {
		return planErr(base, "wave %s has %d health checks; at most %d are allowed", w.Name, len(w.HealthChecks), MaxChecksPerWave)
	}
	names := map[string]int{}
	for j, hc := range w.HealthChecks {
		path := pathIndex(base, j)
		if !api.ValidName(hc.Name) {
			return badName(pathField(path, "name"), "a health check", hc.Name)
		}
		if k, ok := names[hc.Name]; ok {
			return planErr(pathField(path, "name"), "wave %s has two health checks named %s (healthChecks[%d] and healthChecks[%d]): give each a name of its own", w.Name, hc.Name, k, j)
		}
		names[hc.Name] = j
		if err := checkHealth(path, hc); err != nil {
			return err
		}
	}
	return nil
}

func checkHealth(path string, hc HealthCheck) error {
	if err := exactlyOne(path, "a health check", "a check does one thing; write one check of each",
		[]string{"http", "tcp", "command"}, hc.HTTP != nil, hc.TCP != nil, hc.Command != nil); err != nil {
		return err
	}
	var err error
	switch {
	case hc.HTTP != nil:
		err = checkHTTP(pathField(path, "http"), hc.HTTP)
	case hc.TCP != nil:
		err = checkTCP(pathField(path, "tcp"), hc.TCP)
	default:
		err = checkRun(pathField(path, "command.run"), "a command check", hc.Command.Run)
	}
	if err != nil {
		return err
	}
	if err := checkDuration(pathField(path, "timeout"), "timeout", hc.Timeout, 100*time.Millisecond, 10*time.Minute, DefaultCheckTimeout); err != nil {
		return err
	}
	if err := checkDuration(pathField(path, "interval"), "interval", hc.Interval, 100*time.Millisecond, 10*time.Minute, DefaultCheckInterval); err != nil {
		return err
	}
	if hc.Retries < 0 || hc.Retries > 10000 {
		return planErr(pathField(path, "retries"), "retries must be 1 to 10000 (absent: %d), not %d", DefaultCheckRetries, hc.Retries)
	}
	return nil
}

func checkHTTP(path string, c *HTTPCheck) error {
	if c.URL == "" {
		return planErr(pathField(path, "url"), "an http check needs url: what to GET, such as http://${LIFEBOAT_INSTANCE_ADDRESS}/health")
	}
	expanded, err := expandCheckVars(pathField(path, "url"), c.URL)
	if err != nil {
		return err
	}
	if err := checkURL(pathField(path, "url"), c.URL, expanded, "http", "https"); err != nil {
		return err
	}
	if c.Status != 0 && (c.Status < 100 || c.Status > 599) {
		return planErr(pathField(path, "status"), "status must be an HTTP status from 100 to 599 (absent: %d), not %d", DefaultHTTPStatus, c.Status)
	}
	if !validText(c.Body, maxText, true) {
		return planErr(pathField(path, "body"), "body must be at most %d bytes of text (UTF-8, no control characters but newlines and tabs)", maxText)
	}
	return nil
}

func checkTCP(path string, c *TCPCheck) error {
	path = pathField(path, "address")
	if c.Address == "" {
		return planErr(path, "a tcp check needs address: the host:port to connect to, such as ${LIFEBOAT_INSTANCE_ADDRESS}:5432")
	}
	expanded, err := expandCheckVars(path, c.Address)
	if err != nil {
		return err
	}
	if !validHostPort(expanded) {
		return planErr(path, "address %q must be host:port, such as ${LIFEBOAT_INSTANCE_ADDRESS}:5432 or ${LIFEBOAT_PORT_TCP_5432}", c.Address)
	}
	return nil
}

// expandCheckVars replaces the variables a health check may name with example values,
// and refuses any other: the run would replace it with nothing.
func expandCheckVars(path, s string) (string, error) {
	var bad string
	out := os.Expand(s, func(name string) string {
		if name == "LIFEBOAT_INSTANCE_ADDRESS" {
			return "192.0.2.1"
		}
		if p, ok := strings.CutPrefix(name, "LIFEBOAT_PORT_TCP_"); ok {
			if n, err := strconv.Atoi(p); err == nil && n >= 1 && n <= 65535 && strconv.Itoa(n) == p {
				return "192.0.2.1:1024"
			}
		}
		if bad == "" {
			bad = name
		}
		return ""
	})
	if bad != "" {
		return "", planErr(path, "%q names $%s, which a health check does not have: use ${LIFEBOAT_INSTANCE_ADDRESS} or ${LIFEBOAT_PORT_TCP_<guest port>}", s, bad)
	}
	return out, nil
}

// checkURL checks a URL (expanded: with its variables replaced) of one of schemes.
func checkURL(path, raw, expanded string, schemes ...string) error {
	if len(raw) > maxURL || !utf8.ValidString(raw) {
		return planErr(path, "the URL must be at most %d bytes of UTF-8", maxURL)
	}
	u, err := url.Parse(expanded)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return planErr(path, "%q is not a URL such as %s://host/path", raw, schemes[0])
	}
	if !slices.Contains(schemes, u.Scheme) {
		if len(schemes) == 1 {
			return planErr(path, "%q must be an %s:// URL: a webhook carries the run's progress and must travel encrypted", raw, schemes[0])
		}
		return planErr(path, "%q must be an http:// or https:// URL", raw)
	}
	if u.User != nil {
		return planErr(path, "%q carries credentials: the plan file is stored and shown to whoever may read plans; use an address that needs none", raw)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return planErr(path, "%q has port %s: a port is 1 to 65535", raw, p)
		}
	}
	return nil
}

// checkRun checks a shell command.
func checkRun(path, what, run string) error {
	switch {
	case strings.TrimSpace(run) == "":
		return planErr(path, "%s needs run: the shell command to run", what)
	case len(run) > maxText:
		return planErr(path, "run is %d bytes; at most %d are allowed: put a longer script in a file on the control plane's host and run that", len(run), maxText)
	case !validText(run, maxText, true):
		return planErr(path, "run must be text (UTF-8, no control characters but newlines and tabs)")
	}
	return nil
}

// checkDuration checks a duration that is absent (0: def) or from lo to hi.
func checkDuration(path, name string, d Duration, lo, hi, def time.Duration) error {
	if d != 0 && (time.Duration(d) < lo || time.Duration(d) > hi) {
		return planErr(path, "%s must be from %s to %s (absent: %s), not %s", name, lo, hi, def, time.Duration(d))
	}
	return nil
}

// steps checks wave i's steps.
func (v *validator) steps(i int) error {
	w := &v.p.Waves[i]
	base := pathField(pathIndex("waves", i), "steps")
	if len(w.Steps) > MaxStepsPerWave {
		return planErr(base, "wave %s has %d steps; at most %d are allowed", w.Name, len(w.Steps), MaxStepsPerWave)
	}
	names := map[string]int{}
	for j := range w.Steps {
		s := &w.Steps[j]
		path := pathIndex(base, j)
		if !api.ValidName(s.Name) {
			return badName(pathField(path, "name"), "a step", s.Name)
		}
		if k, ok := names[s.Name]; ok {
			return planErr(pathField(path, "name"), "wave %s has two steps named %s (steps[%d] and steps[%d]): give each a name of its own", w.Name, s.Name, k, j)
		}
		names[s.Name] = j
		if err := v.step(i, path, s); err != nil {
			return err
		}
	}
	return nil
}

func (v *validator) step(i int, path string, s *Step) error {
	if err := exactlyOne(path, "a step", "a step does one thing; write one step for each",
		[]string{"dns", "haproxy", "webhook", "script"}, s.DNS != nil, s.HAProxy != nil, s.Webhook != nil, s.Script != nil); err != nil {
		return err
	}
	switch {
	case s.DNS != nil:
		return v.dnsStep(i, pathField(path, "dns"), s.DNS)
	case s.HAProxy != nil:
		return v.haproxyStep(i, pathField(path, "haproxy"), s.HAProxy)
	case s.Webhook != nil:
		return checkWebhook(pathField(path, "webhook"), s.Webhook)
	}
	return checkScript(pathField(path, "script"), s.Script)
}

// instance checks a reference to a server's recovered instance from a step of wave i:
// the server is selected by id in wave i or in a wave done before it, so its instance
// exists when the step runs. A server no wave selects by id passes when wave i or one
// done before it selects by tags or group: only the run knows those servers.
func (v *validator) instance(i int, path, id string) error {
	if id == "" {
		return planErr(path, "instance is required: the id of the source server whose recovered instance this points at")
	}
	if !api.ValidID(api.PrefixSourceServer, id) {
		return planErr(path, "%q is not a source server id (s- and 17 hexadecimal digits; see lifeboat source-servers list)", id)
	}
	k, ok := v.ids[id]
	switch {
	case !ok && v.selectsByTagOrGroup(append(v.doneBefore(i), i)...):
		return nil // a server selected by tag or group: the run checks it was launched
	case !ok:
		return planErr(path, "server %s is not in any wave of the plan: select it by id in a wave (servers: - id: %s) so it is launched before this step runs", id, id)
	case k != i && !v.before[i][k]:
		return planErr(path, "server %s is launched in wave %s, which is not done before wave %s: name a server of this wave or of a wave it comes after", id, v.p.Waves[k].Name, v.p.Waves[i].Name)
	}
	return nil
}

// selectsByTagOrGroup reports whether any of the waves selects servers by tag or group
// (whose ids are known only when a run resolves them).
func (v *validator) selectsByTagOrGroup(waves ...int) bool {
	for _, w := range waves {
		for _, s := range v.p.Waves[w].Servers {
			if s.ID == "" {
				return true
			}
		}
	}
	return false
}

// doneBefore lists the waves done before wave i.
func (v *validator) doneBefore(i int) []int {
	var out []int
	for k, ok := range v.before[i] {
		if ok {
			out = append(out, k)
		}
	}
	return out
}

// dnsStep checks a DNS step of wave i.
func (v *validator) dnsStep(i int, path string, d *DNSStep) error {
	if _, _, ok := splitServer(d.Server); !ok {
		if d.Server == "" {
			return planErr(pathField(path, "server"), "a dns step needs server: the zone's primary DNS server, as host or host:port (port 53 when absent)")
		}
		return planErr(pathField(path, "server"), "server %q must be a host name or IP address, with :port when not 53, such as ns1.example.com or 192.0.2.53:5353", d.Server)
	}
	if err := checkZone(pathField(path, "zone"), "a dns step", d.Zone); err != nil {
		return err
	}
	if err := checkKey(pathField(path, "key"), d.Key); err != nil {
		return err
	}
	v.zones = append(v.zones, dnsRef{name: fqdn(d.Zone), path: pathField(path, "zone")})
	if err := v.records(i, pathField(path, "records"), d.Zone, d.Records, false); err != nil {
		return err
	}
	if d.Drill == nil {
		return nil
	}
	dp := pathField(path, "drill")
	if err := checkZone(pathField(dp, "zone"), "a dns step's drill", d.Drill.Zone); err != nil {
		return err
	}
	if fqdn(d.Drill.Zone) == fqdn(d.Zone) {
		return planErr(pathField(dp, "zone"), "the drill's zone is the production zone %s: a drill must never change production records; give drills a zone of their own, such as drill.%s", fqdn(d.Zone), fqdn(d.Zone))
	}
	v.zones = append(v.zones, dnsRef{name: fqdn(d.Drill.Zone), path: pathField(dp, "zone"), drill: true})
	return v.records(i, pathField(dp, "records"), d.Drill.Zone, d.Drill.Records, true)
}

func checkZone(path, what, zone string) error {
	switch {
	case zone == "":
		return planErr(path, "%s needs zone: the zone its records are in, such as example.com", what)
	case !validDomain(zone):
		return planErr(path, "zone %q is not a domain name such as example.com", zone)
	}
	return nil
}

func checkKey(path string, k TSIGKey) error {
	switch {
	case k.Name == "":
		return planErr(pathField(path, "name"), "the TSIG key needs name: the key's name as the DNS server knows it")
	case !validDomain(k.Name):
		return planErr(pathField(path, "name"), "key name %q is not a domain name: a TSIG key's name is one, such as lifeboat-key or lifeboat.example.com", k.Name)
	}
	switch k.Algorithm {
	case "", "hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1":
	default:
		return planErr(pathField(path, "algorithm"), "algorithm must be hmac-sha256 (the default), hmac-sha512, hmac-sha384, hmac-sha224 or hmac-sha1, not %q", k.Algorithm)
	}
	switch {
	case k.Secret == "":
		return planErr(pathField(path, "secret"), "the TSIG key needs secret: the name of the plan secret that holds its base64 key (lifeboat plan secrets set NAME)")
	case !api.ValidName(k.Secret):
		return planErr(pathField(path, "secret"), "secret %q is not a plan secret's name: 1-63 lowercase letters, digits or '-'", k.Secret)
	}
	return nil
}

// records checks the records of a DNS step (or of its drill) in zone.
func (v *validator) records(i int, path, zone string, recs []DNSRecord, drill bool) error {
	switch {
	case len(recs) == 0 && drill:
		return planErr(path, "the drill needs at least one record under records (leave drill out and drills change no record)")
	case len(recs) == 0:
		return planErr(path, "a dns step needs at least one record under records")
	case len(recs) > MaxRecordsPerStep:
		return planErr(path, "a dns step has at most %d records, not %d: split them into several steps", MaxRecordsPerStep, len(recs))
	}
	for j, r := range recs {
		rp := pathIndex(path, j)
		name, err := v.record(i, rp, zone, r)
		if err != nil {
			return err
		}
		v.dns = append(v.dns, dnsRef{name: name, typ: r.typeOrDefault(), zone: fqdn(zone), path: rp, drill: drill})
	}
	return nil
}

// typeOrDefault is the record's type, A when absent.
func (r DNSRecord) typeOrDefault() string {
	if r.Type == "" {
		return DefaultRecordType
	}
	return r.Type
}

// record checks one record and returns its fully qualified name.
func (v *validator) record(i int, path, zone string, r DNSRecord) (string, error) {
	name, err := recordName(pathField(path, "name"), r.Name, zone)
	if err != nil {
		return "", err
	}
	typ := r.typeOrDefault()
	switch typ {
	case "A", "AAAA", "CNAME", "TXT":
	default:
		return "", planErr(pathField(path, "type"), "type must be A (the default), AAAA, CNAME or TXT, not %q", r.Type)
	}
	if r.TTL < 0 || r.TTL > maxTTL {
		return "", planErr(pathField(path, "ttl"), "ttl must be 1 to %d seconds (a week; absent: %d), not %d", maxTTL, DefaultTTL, r.TTL)
	}
	if typ == "CNAME" && name == fqdn(zone) {
		return "", planErr(pathField(path, "type"), "a CNAME cannot be at the zone's apex (%s): it would hide the zone's SOA and NS records", name)
	}
	switch {
	case r.Instance != "" && len(r.Values) > 0:
		return "", planErr(path, "record %s has both values and instance: give one", name)
	case r.Instance != "" && typ != "A" && typ != "AAAA":
		return "", planErr(pathField(path, "instance"), "instance gives the recovered instance's address: use it with type A or AAAA, not %s", typ)
	case r.Instance != "":
		err = v.instance(i, pathField(path, "instance"), r.Instance)
	case len(r.Values) == 0:
		return "", planErr(path, "record %s needs values, or instance: the source server whose recovered instance's address it gets", name)
	default:
		err = checkValues(pathField(path, "values"), typ, r.Values)
	}
	if err != nil {
		return "", err
	}
	if len(r.Failback) > 0 {
		if err := checkValues(pathField(path, "failback"), typ, r.Failback); err != nil {
			return "", err
		}
	}
	return name, nil
}

// recordName resolves a record's name in zone: "@" is the zone itself, a name without
// a dot is relative to it, any other name is fully qualified (its final dot optional)
// and must be in the zone.
func recordName(path, name, zone string) (string, error) {
	z := fqdn(zone)
	if name == "" {
		return "", planErr(path, "a record needs name: a name in zone %s, relative to it (www, or @ for the zone itself) or fully qualified (www.%s)", z, z)
	}
	full := DNSRecord{Name: name}.FQDN(zone)
	if !validRecordName(full) {
		return "", planErr(path, "name %q is not a DNS name: labels of letters, digits, '-' and '_' (a first label * for a wildcard), at most 253 bytes", name)
	}
	if full != z && !strings.HasSuffix(full, "."+z) {
		return "", planErr(path, "name %q is not in zone %s: a step's records are in its zone (a name without a dot, such as www, is taken relative to it)", name, z)
	}
	return full, nil
}

// FQDN is the record's name fully qualified, in lowercase, with its final dot: "@" is
// zone itself, a name without a dot (such as www) is relative to zone, and any other
// name (www.example.com, or www.example.com.) is already fully qualified. Validate
// refuses a record whose name is not in its zone; WithDefaults sets every record's name
// to its FQDN.
func (r DNSRecord) FQDN(zone string) string {
	switch {
	case r.Name == "@":
		return fqdn(zone)
	case !strings.Contains(r.Name, "."):
		return strings.ToLower(r.Name) + "." + fqdn(zone)
	}
	return fqdn(r.Name)
}

// fqdn is name in lowercase with one final dot.
func fqdn(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) + "." }

// validDomain reports whether s is a domain name (its final dot optional).
func validDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !dnsLabelPattern.MatchString(l) {
			return false
		}
	}
	return true
}

// validRecordName is validDomain, with a first label * allowed (a wildcard).
func validRecordName(s string) bool {
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		return validDomain(rest) && len(s) <= 254
	}
	return validDomain(s)
}

// checkValues checks a record's values (or failback values) for its type.
func checkValues(path, typ string, vals []string) error {
	switch {
	case len(vals) > maxValues:
		return planErr(path, "a record has at most %d values, not %d", maxValues, len(vals))
	case typ == "CNAME" && len(vals) != 1:
		return planErr(path, "a CNAME record has exactly one value, the name it points to, not %d", len(vals))
	}
	seen := map[string]bool{}
	for k, val := range vals {
		vp := pathIndex(path, k)
		if seen[val] {
			return planErr(vp, "value %q is listed twice: keep one", val)
		}
		seen[val] = true
		a, err := netip.ParseAddr(val)
		switch {
		case typ == "A" && (err != nil || !a.Is4()):
			return planErr(vp, "%q is not an IPv4 address, as a type A record needs", val)
		case typ == "AAAA" && (err != nil || !a.Is6() || a.Zone() != ""):
			return planErr(vp, "%q is not an IPv6 address, as a type AAAA record needs", val)
		case typ == "CNAME" && !validDomain(val):
			return planErr(vp, "%q is not a domain name: a CNAME points to one, such as www.example.net", val)
		case typ == "TXT" && (len(val) > 255 || !validText(val, 255, false)):
			return planErr(vp, "a TXT value is at most 255 bytes of text (UTF-8, no control characters), not %q", truncate(val))
		}
	}
	return nil
}

// haproxyStep checks an HAProxy step of wave i.
func (v *validator) haproxyStep(i int, path string, h *HAProxyStep) error {
	ref := lbRef{backend: h.Backend, drillBackend: h.DrillBackend, path: path}
	switch {
	case h.Socket != "" && h.Address != "":
		return planErr(path, "an haproxy step has socket or address, not both: give the runtime API's Unix socket or its host:port")
	case h.Socket != "":
		if !filepath.IsAbs(h.Socket) || filepath.Clean(h.Socket) != h.Socket || len(h.Socket) > maxSocket || !printableASCII(h.Socket) {
			return planErr(pathField(path, "socket"), "socket %q must be a clean absolute path of at most %d bytes, such as /run/haproxy/admin.sock", h.Socket, maxSocket)
		}
		ref.endpoint = "unix:" + h.Socket
	case h.Address != "":
		if !validHostPort(h.Address) {
			return planErr(pathField(path, "address"), "address %q must be host:port, such as 127.0.0.1:9999 (where HAProxy's runtime API listens)", h.Address)
		}
		ref.endpoint = "tcp:" + strings.ToLower(h.Address)
	default:
		return planErr(path, "an haproxy step needs socket (the runtime API's Unix socket, such as /run/haproxy/admin.sock) or address (its host:port)")
	}
	switch {
	case h.Backend == "":
		return planErr(pathField(path, "backend"), "an haproxy step needs backend: the backend whose servers it sets")
	case !haproxyNamePattern.MatchString(h.Backend):
		return planErr(pathField(path, "backend"), "backend %q must be 1-64 letters, digits or _.:-", h.Backend)
	case h.DrillBackend != "" && !haproxyNamePattern.MatchString(h.DrillBackend):
		return planErr(pathField(path, "drillBackend"), "drillBackend %q must be 1-64 letters, digits or _.:-", h.DrillBackend)
	case h.DrillBackend == h.Backend:
		return planErr(pathField(path, "drillBackend"), "drillBackend is the production backend %s: a drill must never change production; name a backend of its own, or leave drillBackend out and drills leave HAProxy alone", h.Backend)
	}
	names, err := v.haproxyServers(i, pathField(path, "servers"), h.Servers)
	if err != nil {
		return err
	}
	ref.servers = names
	v.lbs = append(v.lbs, ref)
	return nil
}

func (v *validator) haproxyServers(i int, path string, servers []HAProxyServer) ([]string, error) {
	switch {
	case len(servers) == 0:
		return nil, planErr(path, "an haproxy step needs at least one server under servers")
	case len(servers) > MaxHAProxyServers:
		return nil, planErr(path, "an haproxy step sets at most %d servers, not %d: split them into several steps", MaxHAProxyServers, len(servers))
	}
	seen := map[string]int{}
	names := make([]string, 0, len(servers))
	for j, s := range servers {
		sp := pathIndex(path, j)
		if !haproxyNamePattern.MatchString(s.Name) {
			return nil, planErr(pathField(sp, "name"), "server name %q must be 1-64 letters, digits or _.:- (the server's name in the backend)", s.Name)
		}
		if k, ok := seen[s.Name]; ok {
			return nil, planErr(pathField(sp, "name"), "server %s is listed twice (servers[%d] and servers[%d]): keep one", s.Name, k, j)
		}
		seen[s.Name] = j
		names = append(names, s.Name)
		if err := v.instance(i, pathField(sp, "instance"), s.Instance); err != nil {
			return nil, err
		}
		if s.Port < 0 || s.Port > 65535 {
			return nil, planErr(pathField(sp, "port"), "port must be 1 to 65535 (the instance's guest port; absent: %d), not %d", DefaultHAProxyPort, s.Port)
		}
		if s.Failback != "" && !validHostPort(s.Failback) {
			return nil, planErr(pathField(sp, "failback"), "failback %q must be host:port: where the server points again on failback", s.Failback)
		}
	}
	return names, nil
}

func checkWebhook(path string, w *WebhookStep) error {
	if w.URL == "" {
		return planErr(pathField(path, "url"), "a webhook needs url: the https:// address it posts to")
	}
	if err := checkURL(pathField(path, "url"), w.URL, w.URL, "https"); err != nil {
		return err
	}
	switch {
	case w.Secret == "":
		return planErr(pathField(path, "secret"), "a webhook needs secret: the name of the plan secret its signature key is in (lifeboat plan secrets set NAME)")
	case !api.ValidName(w.Secret):
		return planErr(pathField(path, "secret"), "secret %q is not a plan secret's name: 1-63 lowercase letters, digits or '-'", w.Secret)
	case w.CA != "" && !api.ValidName(w.CA):
		return planErr(pathField(path, "ca"), "ca %q is not a plan secret's name: 1-63 lowercase letters, digits or '-'", w.CA)
	}
	return checkDuration(pathField(path, "timeout"), "timeout", w.Timeout, time.Second, 5*time.Minute, DefaultWebhookTimeout)
}

func checkScript(path string, s *ScriptStep) error {
	if err := checkRun(pathField(path, "run"), "a script step", s.Run); err != nil {
		return err
	}
	return checkDuration(pathField(path, "timeout"), "timeout", s.Timeout, time.Second, time.Hour, DefaultScriptTimeout)
}

// crossRecords checks the DNS records against each other: each record is set in one
// place, a CNAME's name has no other record, and a drill touches no production record
// or zone.
func (v *validator) crossRecords() error {
	if err := v.crossZones(); err != nil {
		return err
	}
	seen := map[string]dnsRef{}
	types := map[string]dnsRef{} // name (and drill flag) → the first record of another type
	for _, r := range v.dns {
		key := r.name + " " + r.typ
		if prev, ok := seen[key]; ok && prev.drill == r.drill {
			return planErr(r.path, "record %s %s is also set at %s: set each record in one place", r.name, r.typ, prev.path)
		} else if ok {
			prod, drill := prev, r
			if !r.drill {
				prod, drill = r, prev
			}
			return planErr(drill.path, "drill record %s %s is a production record (set at %s): a drill must never change production records; use a name in the drill's zone", r.name, r.typ, prod.path)
		}
		seen[key] = r
		nk := fmt.Sprintf("%s %t", r.name, r.drill)
		if prev, ok := types[nk]; ok && prev.typ != r.typ && (prev.typ == "CNAME" || r.typ == "CNAME") {
			return planErr(r.path, "%s has a %s record (at %s) and a %s record: a name with a CNAME can have no other record", r.name, prev.typ, prev.path, r.typ)
		} else if !ok {
			types[nk] = r
		}
	}
	for _, r := range v.dns {
		if !r.drill {
			continue
		}
		for _, z := range v.zones {
			if !z.drill && (z.name == r.zone || strings.HasSuffix(z.name, "."+r.zone)) && (r.name == z.name || strings.HasSuffix(r.name, "."+z.name)) {
				return planErr(r.path, "drill record %s is in zone %s, which this plan changes in production (%s): a drill must never touch production records", r.name, z.name, z.path)
			}
		}
	}
	return nil
}

// crossZones refuses a drill zone that is a production zone of another step.
func (v *validator) crossZones() error {
	for _, d := range v.zones {
		if !d.drill {
			continue
		}
		for _, z := range v.zones {
			if !z.drill && z.name == d.name {
				return planErr(d.path, "the drill's zone %s is a zone this plan changes in production (%s): give drills a zone of their own", d.name, z.path)
			}
		}
	}
	return nil
}

// crossBackends checks the HAProxy steps against each other: each backend server is
// set in one step, and no drill backend is a production one.
func (v *validator) crossBackends() error {
	seen := map[string]string{}
	for _, l := range v.lbs {
		for j, s := range l.servers {
			key := l.endpoint + "\x00" + l.backend + "\x00" + s
			if prev, ok := seen[key]; ok {
				return planErr(pathIndex(pathField(l.path, "servers"), j), "server %s of backend %s is also set at %s: set each backend server in one step", s, l.backend, prev)
			}
			seen[key] = pathIndex(pathField(l.path, "servers"), j)
		}
	}
	for _, d := range v.lbs {
		for _, l := range v.lbs {
			if d.drillBackend != "" && l.endpoint == d.endpoint && l.backend == d.drillBackend {
				return planErr(pathField(d.path, "drillBackend"), "drillBackend %s is a production backend of this plan (%s): a drill must never change production; give drills a backend of their own", d.drillBackend, l.path)
			}
		}
	}
	return nil
}

// splitServer splits a DNS server's address into host and port ("" when absent).
func splitServer(s string) (host, port string, ok bool) {
	if s == "" || len(s) > 255 {
		return "", "", false
	}
	if h, p, err := net.SplitHostPort(s); err == nil {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
			return "", "", false
		}
		return h, p, validHost(h)
	}
	if inner, ok := strings.CutPrefix(s, "["); ok && strings.HasSuffix(inner, "]") {
		a, err := netip.ParseAddr(strings.TrimSuffix(inner, "]"))
		return a.String(), "", err == nil && a.Is6() && a.Zone() == ""
	}
	return s, "", validHost(s)
}

// ServerAddr is the DNS server's host:port, port 53 when Server gives none (Server
// itself when it is not valid).
func (d DNSStep) ServerAddr() string {
	host, port, ok := splitServer(d.Server)
	if !ok {
		return d.Server
	}
	if port == "" {
		port = DefaultDNSPort
	}
	return net.JoinHostPort(host, port)
}

// validHost reports whether h is an IP address (without zone) or a host name.
func validHost(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Zone() == ""
	}
	h = strings.TrimSuffix(h, ".")
	return len(h) <= 253 && hostnamePattern.MatchString(h)
}

// validHostPort reports whether s is host:port with a valid host and a port 1-65535.
func validHostPort(s string) bool {
	h, p, err := net.SplitHostPort(s)
	if err != nil || len(s) > 255 {
		return false
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535 && strconv.Itoa(n) == p && validHost(h)
}

// validText reports whether s is at most max bytes of UTF-8 without control characters
// (but tabs, and newlines when multiline).
func validText(s string, max int, multiline bool) bool {
	if len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		switch {
		case r == '\t', r == '\n' && multiline:
		case r < 0x20, r >= 0x7f && r < 0xa0, r == 0x2028, r == 0x2029, r == 0xfeff:
			return false
		}
	}
	return true
}

// printableASCII reports whether s is printable ASCII.
func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// truncate shortens s for a message.
func truncate(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:40] + "…"
}

// RunsCommands reports whether the plan runs commands on the control plane's host (a
// command health check or a script step): only the system account may store it.
func (p *Plan) RunsCommands() bool {
	for _, w := range p.Waves {
		for _, hc := range w.HealthChecks {
			if hc.Command != nil {
				return true
			}
		}
		for _, s := range w.Steps {
			if s.Script != nil {
				return true
			}
		}
	}
	return false
}

// Secrets is the plan secrets the plan names (TSIG keys, webhook keys and CAs), sorted,
// each once.
func (p *Plan) Secrets() []string {
	var out []string
	for _, w := range p.Waves {
		for _, s := range w.Steps {
			switch {
			case s.DNS != nil:
				out = append(out, s.DNS.Key.Secret)
			case s.Webhook != nil:
				out = append(out, s.Webhook.Secret, s.Webhook.CA)
			}
		}
	}
	out = slices.DeleteFunc(out, func(s string) bool { return s == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// WithDefaults is a copy of the plan with every default filled in: what a run executes.
// It sets onFailure (leave); health checks' timeout, interval, retries and HTTP status;
// DNS steps' server port (53), TSIG algorithm (hmac-sha256), and zones, key names,
// record names and CNAME values fully qualified in lowercase (see DNSRecord.FQDN),
// record types (A) and TTLs (60); HAProxy servers' ports (80); webhooks' and scripts'
// timeouts. Parse and Validate leave the plan as written (so it is stored, and diffed,
// as its author wrote it); call WithDefaults on a valid plan.
func (p *Plan) WithDefaults() *Plan {
	if p == nil {
		return nil
	}
	c := clonePlan(p)
	if c.OnFailure == "" {
		c.OnFailure = OnFailureLeave
	}
	for i := range c.Waves {
		w := &c.Waves[i]
		for j := range w.HealthChecks {
			hc := &w.HealthChecks[j]
			hc.Timeout = Duration(hc.Timeout.D(DefaultCheckTimeout))
			hc.Interval = Duration(hc.Interval.D(DefaultCheckInterval))
			if hc.Retries == 0 {
				hc.Retries = DefaultCheckRetries
			}
			if hc.HTTP != nil && hc.HTTP.Status == 0 {
				hc.HTTP.Status = DefaultHTTPStatus
			}
		}
		for j := range w.Steps {
			defaultStep(&w.Steps[j])
		}
	}
	return c
}

func defaultStep(s *Step) {
	switch {
	case s.DNS != nil:
		d := s.DNS
		d.Server = d.ServerAddr()
		if d.Key.Algorithm == "" {
			d.Key.Algorithm = DefaultTSIGAlgorithm
		}
		d.Key.Name = fqdn(d.Key.Name)
		defaultRecords(d.Records, d.Zone)
		d.Zone = fqdn(d.Zone)
		if d.Drill != nil {
			defaultRecords(d.Drill.Records, d.Drill.Zone)
			d.Drill.Zone = fqdn(d.Drill.Zone)
		}
	case s.HAProxy != nil:
		for k := range s.HAProxy.Servers {
			if s.HAProxy.Servers[k].Port == 0 {
				s.HAProxy.Servers[k].Port = DefaultHAProxyPort
			}
		}
	case s.Webhook != nil:
		s.Webhook.Timeout = Duration(s.Webhook.Timeout.D(DefaultWebhookTimeout))
	case s.Script != nil:
		s.Script.Timeout = Duration(s.Script.Timeout.D(DefaultScriptTimeout))
	}
}

func defaultRecords(recs []DNSRecord, zone string) {
	for k := range recs {
		r := &recs[k]
		r.Name = r.FQDN(zone)
		r.Type = r.typeOrDefault()
		if r.TTL == 0 {
			r.TTL = DefaultTTL
		}
		if r.Type == "CNAME" {
			for _, vals := range [][]string{r.Values, r.Failback} {
				for n := range vals {
					vals[n] = fqdn(vals[n])
				}
			}
		}
	}
}

// clonePlan is a deep copy of p.
func clonePlan(p *Plan) *Plan {
	c := *p
	c.Schedule = clonePtr(p.Schedule)
	c.Waves = slices.Clone(p.Waves)
	for i := range c.Waves {
		w := &c.Waves[i]
		w.After = slices.Clone(w.After)
		w.Servers = slices.Clone(w.Servers)
		for k := range w.Servers {
			w.Servers[k].Tags = maps.Clone(w.Servers[k].Tags)
		}
		w.Launch = slices.Clone(w.Launch)
		for k := range w.Launch {
			w.Launch[k].Tags = maps.Clone(w.Launch[k].Tags)
		}
		w.Failback = slices.Clone(w.Failback)
		w.HealthChecks = slices.Clone(w.HealthChecks)
		for k := range w.HealthChecks {
			hc := &w.HealthChecks[k]
			hc.HTTP, hc.TCP, hc.Command = clonePtr(hc.HTTP), clonePtr(hc.TCP), clonePtr(hc.Command)
		}
		w.Steps = slices.Clone(w.Steps)
		for k := range w.Steps {
			cloneStep(&w.Steps[k])
		}
	}
	return &c
}

func cloneStep(s *Step) {
	s.DNS, s.HAProxy, s.Webhook, s.Script = clonePtr(s.DNS), clonePtr(s.HAProxy), clonePtr(s.Webhook), clonePtr(s.Script)
	if s.DNS != nil {
		s.DNS.Records = cloneRecords(s.DNS.Records)
		if s.DNS.Drill = clonePtr(s.DNS.Drill); s.DNS.Drill != nil {
			s.DNS.Drill.Records = cloneRecords(s.DNS.Drill.Records)
		}
	}
	if s.HAProxy != nil {
		s.HAProxy.Servers = slices.Clone(s.HAProxy.Servers)
	}
}

func cloneRecords(recs []DNSRecord) []DNSRecord {
	recs = slices.Clone(recs)
	for k := range recs {
		recs[k].Values = slices.Clone(recs[k].Values)
		recs[k].Failback = slices.Clone(recs[k].Failback)
	}
	return recs
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}
