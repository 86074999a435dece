package plan

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	idA = "s-0000000000000000a" // wave db
	idB = "s-0000000000000000b" // wave web
	idC = "s-0000000000000000c" // wave web
	idD = "s-0000000000000000d" // in no wave
)

// webDNS is the DNS step of the full plan's web wave.
func webDNS(p *Plan) *DNSStep { return p.Waves[1].Steps[0].DNS }

// webLB is the HAProxy step of the full plan's web wave.
func webLB(p *Plan) *HAProxyStep { return p.Waves[1].Steps[1].HAProxy }

// copyStep adds a copy of the web wave's step i under another name.
func copyStep(p *Plan, i int, name string) *Step {
	s := clonePlan(p).Waves[1].Steps[i]
	s.Name = name
	p.Waves[1].Steps = append(p.Waves[1].Steps, s)
	return &p.Waves[1].Steps[len(p.Waves[1].Steps)-1]
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(p *Plan)
		path   string // where the error is
		want   string // in the message
	}{
		// The plan.
		{"no name", func(p *Plan) { p.Name = "" }, "name", "the plan needs a name"},
		{"upper-case name", func(p *Plan) { p.Name = "Lab" }, "name", `name "Lab" is not valid`},
		{"long name", func(p *Plan) { p.Name = strings.Repeat("a", 64) }, "name", "is not valid"},
		{"name starting with -", func(p *Plan) { p.Name = "-lab" }, "name", "is not valid"},
		{"control character in description", func(p *Plan) { p.Description = "a\x1bb" }, "description", "no control characters"},
		{"long description", func(p *Plan) { p.Description = strings.Repeat("a", 4097) }, "description", "at most 4096 bytes"},
		{"onFailure", func(p *Plan) { p.OnFailure = "explode" }, "onFailure", `leave (the default`},
		{"empty schedule", func(p *Plan) { p.Schedule.Drill = " " }, "schedule.drill", "the schedule needs drill"},
		{"bad schedule", func(p *Plan) { p.Schedule.Drill = "every day" }, "schedule.drill", "is not a cron expression"},
		{"schedule too often", func(p *Plan) { p.Schedule.Drill = "@every 5s" }, "schedule.drill", "@every takes 10s to"},
		{"schedule never", func(p *Plan) { p.Schedule.Drill = "0 0 30 2 *" }, "schedule.drill", "never comes"},
		{"no waves", func(p *Plan) { p.Waves = nil }, "waves", "the plan has no wave"},
		{"too many waves", func(p *Plan) {
			for i := len(p.Waves); i <= MaxWaves; i++ {
				p.Waves = append(p.Waves, Wave{Name: "w" + strings.Repeat("x", i), Servers: []Selector{{Group: "g" + strings.Repeat("x", i)}}})
			}
		}, "waves", "at most 50 are allowed"},

		// Waves and their order.
		{"wave name", func(p *Plan) { p.Waves[1].Name = "web_1" }, "waves[1].name", `a wave name "web_1" is not valid`},
		{"wave without name", func(p *Plan) { p.Waves[1].Name = "" }, "waves[1].name", "a wave needs a name"},
		{"two waves of one name", func(p *Plan) { p.Waves[1].Name = "db"; p.Waves[1].After = nil }, "waves[1].name", `two waves are named "db" (waves[0] and waves[1])`},
		{"unknown after", func(p *Plan) { p.Waves[1].After = []string{"database"} }, "waves[1].after[0]", `wave web comes after "database", but the plan has no wave of that name (its waves: db, web)`},
		{"after itself", func(p *Plan) { p.Waves[1].After = []string{"web"} }, "waves[1].after[0]", "wave web cannot come after itself"},
		{"after twice", func(p *Plan) { p.Waves[1].After = []string{"db", "db"} }, "waves[1].after[1]", "names db twice in after"},
		{"cycle", func(p *Plan) { p.Waves[0].After = []string{"web"} }, "waves[0].after", "waves db → web → db form a cycle"},
		{"cycle through file order", func(p *Plan) {
			p.Waves[0].After = []string{"app"}
			p.Waves[1].After = nil
			p.Waves = append(p.Waves, Wave{Name: "app", After: []string{"web"}, Servers: []Selector{{ID: idD}}})
		}, "waves[0].after", "waves db → app → web → db form a cycle: each comes after the next (wave web has no after, so it comes after db, the wave before it in the file)"},

		// Servers.
		{"no servers", func(p *Plan) { p.Waves[0].Servers = nil; p.Waves[0].Launch = nil }, "waves[0].servers", "wave db selects no server"},
		{"selector with two fields", func(p *Plan) { p.Waves[1].Servers[2].Group = "web" }, "waves[1].servers[2]", "a server selector has tags and group: give one of them per selector"},
		{"empty selector", func(p *Plan) { p.Waves[1].Servers[2].Tags = nil }, "waves[1].servers[2]", "a server selector needs one of id, tags or group"},
		{"bad id", func(p *Plan) { p.Waves[1].Servers[0].ID = "web1" }, "waves[1].servers[0].id", `"web1" is not a source server id`},
		{"upper-case id", func(p *Plan) { p.Waves[1].Servers[0].ID = "s-0000000000000000B" }, "waves[1].servers[0].id", "is not a source server id"},
		{"id twice in a wave", func(p *Plan) { p.Waves[1].Servers[1].ID = idB }, "waves[1].servers[1].id", "server " + idB + " is listed twice in wave web"},
		{"id in two waves", func(p *Plan) { p.Waves[1].Servers[1].ID = idA }, "waves[1].servers[1].id", "server " + idA + " is in waves db and web: a server belongs to one wave"},
		{"bad group", func(p *Plan) { p.Waves[1].Servers[3].Group = "Front Ends" }, "waves[1].servers[3].group", "is not a consistency group's name or id"},
		{"group twice", func(p *Plan) { p.Waves[0].Servers = append(p.Waves[0].Servers, Selector{Group: "frontends"}) }, "waves[1].servers[3].group", "group frontends is selected twice (waves db and web)"},
		{"bad tag", func(p *Plan) { p.Waves[1].Servers[2].Tags = map[string]string{"role web": "x"} }, "waves[1].servers[2].tags", `tag "role web" is not valid`},
		{"bad tag value", func(p *Plan) { p.Waves[1].Servers[2].Tags = map[string]string{"role": "é"} }, "waves[1].servers[2].tags", `tag "role" is not valid`},
		{"too many selectors", func(p *Plan) {
			for range MaxSelectorsPerWave {
				p.Waves[1].Servers = append(p.Waves[1].Servers, Selector{Tags: map[string]string{"a": "b"}})
			}
		}, "waves[1].servers", "at most 500 are allowed"},

		// Launch overrides.
		{"override of another wave's server", func(p *Plan) { p.Waves[1].Launch[0].Server = idA }, "waves[1].launch[0].server", "server " + idA + " is not selected by id in wave web"},
		{"override of a bad id", func(p *Plan) { p.Waves[1].Launch[0].Server = "db" }, "waves[1].launch[0].server", `"db" is not a source server id`},
		{"two overrides of a server", func(p *Plan) {
			p.Waves[0].Launch = append(p.Waves[0].Launch, LaunchOverride{Server: idA, CPUs: 4})
		}, "waves[0].launch[1]", "two launch overrides for server " + idA + " (launch[0] and launch[1])"},
		{"two overrides of the wave", func(p *Plan) {
			p.Waves[1].Launch = append(p.Waves[1].Launch, LaunchOverride{CPUs: 4})
		}, "waves[1].launch[1]", "two launch overrides for all its servers"},
		{"empty override", func(p *Plan) { p.Waves[1].Launch[0].Tags = nil }, "waves[1].launch[0]", "a launch override changes nothing"},
		{"cpus", func(p *Plan) { p.Waves[0].Launch[0].CPUs = 257 }, "waves[0].launch[0].cpus", "cpus must be 1 to 256, not 257"},
		{"negative cpus", func(p *Plan) { p.Waves[0].Launch[0].CPUs = -1 }, "waves[0].launch[0].cpus", "cpus must be 1 to 256"},
		{"little memory", func(p *Plan) { p.Waves[0].Launch[0].MemoryMiB = 64 }, "waves[0].launch[0].memoryMiB", "memoryMiB must be 128 to 1048576"},
		{"much memory", func(p *Plan) { p.Waves[0].Launch[0].MemoryMiB = 1<<20 + 1 }, "waves[0].launch[0].memoryMiB", "memoryMiB must be 128 to 1048576"},
		{"hostname", func(p *Plan) { p.Waves[0].Launch[0].Hostname = "db_1" }, "waves[0].launch[0].hostname", `hostname "db_1" is not a valid host name`},
		{"ip without prefix", func(p *Plan) { p.Waves[0].Launch[0].IP = "10.0.0.5" }, "waves[0].launch[0].ip", "must be an address with its prefix length"},
		{"ip for every server", func(p *Plan) { p.Waves[1].Launch[0].IP = "10.0.0.6/24" }, "waves[1].launch[0]", "hostname and ip are set for one server at a time"},
		{"override tags", func(p *Plan) { p.Waves[1].Launch[0].Tags = map[string]string{"": "x"} }, "waves[1].launch[0].tags", `tag "" is not valid`},

		// Health checks.
		{"check name", func(p *Plan) { p.Waves[0].HealthChecks[0].Name = "Postgres" }, "waves[0].healthChecks[0].name", `a health check name "Postgres" is not valid`},
		{"check names twice", func(p *Plan) { p.Waves[1].HealthChecks[1].Name = "http" }, "waves[1].healthChecks[1].name", "two health checks named http"},
		{"check of nothing", func(p *Plan) { p.Waves[0].HealthChecks[0].TCP = nil }, "waves[0].healthChecks[0]", "a health check needs one of http, tcp or command"},
		{"check of two kinds", func(p *Plan) { p.Waves[0].HealthChecks[0].Command = &CommandCheck{Run: "true"} }, "waves[0].healthChecks[0]", "a health check has tcp and command"},
		{"http without url", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.URL = "" }, "waves[1].healthChecks[0].http.url", "an http check needs url"},
		{"http url scheme", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.URL = "ftp://x/" }, "waves[1].healthChecks[0].http.url", "must be an http:// or https:// URL"},
		{"http url without host", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.URL = "http:///health" }, "waves[1].healthChecks[0].http.url", "is not a URL"},
		{"http url variable", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.URL = "http://${INSTANCE}/" }, "waves[1].healthChecks[0].http.url", "names $INSTANCE, which a health check does not have"},
		{"http url port variable", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.URL = "http://${LIFEBOAT_PORT_TCP_0}/" }, "waves[1].healthChecks[0].http.url", "names $LIFEBOAT_PORT_TCP_0"},
		{"http url credentials", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.URL = "http://u:p@${LIFEBOAT_INSTANCE_ADDRESS}/" }, "waves[1].healthChecks[0].http.url", "carries credentials"},
		{"http url port", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.URL = "http://${LIFEBOAT_INSTANCE_ADDRESS}:70000/" }, "waves[1].healthChecks[0].http.url", "a port is 1 to 65535"},
		{"http status low", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.Status = 99 }, "waves[1].healthChecks[0].http.status", "from 100 to 599 (absent: 200), not 99"},
		{"http status high", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.Status = 600 }, "waves[1].healthChecks[0].http.status", "not 600"},
		{"http body", func(p *Plan) { p.Waves[1].HealthChecks[0].HTTP.Body = "\x00" }, "waves[1].healthChecks[0].http.body", "body must be at most 4096 bytes of text"},
		{"tcp address", func(p *Plan) { p.Waves[0].HealthChecks[0].TCP.Address = "${LIFEBOAT_INSTANCE_ADDRESS}" }, "waves[0].healthChecks[0].tcp.address", "must be host:port"},
		{"tcp without address", func(p *Plan) { p.Waves[0].HealthChecks[0].TCP.Address = "" }, "waves[0].healthChecks[0].tcp.address", "a tcp check needs address"},
		{"tcp variable", func(p *Plan) { p.Waves[0].HealthChecks[0].TCP.Address = "$HOST:5432" }, "waves[0].healthChecks[0].tcp.address", "names $HOST"},
		{"command without run", func(p *Plan) { p.Waves[1].HealthChecks[1].Command.Run = "  \n" }, "waves[1].healthChecks[1].command.run", "a command check needs run"},
		{"long command", func(p *Plan) { p.Waves[1].HealthChecks[1].Command.Run = strings.Repeat("x", 4097) }, "waves[1].healthChecks[1].command.run", "run is 4097 bytes; at most 4096"},
		{"long timeout", func(p *Plan) { p.Waves[0].HealthChecks[0].Timeout = Duration(11 * time.Minute) }, "waves[0].healthChecks[0].timeout", "timeout must be from 100ms to 10m0s (absent: 5s), not 11m0s"},
		{"short timeout", func(p *Plan) { p.Waves[0].HealthChecks[0].Timeout = Duration(time.Millisecond) }, "waves[0].healthChecks[0].timeout", "not 1ms"},
		{"negative timeout", func(p *Plan) { p.Waves[0].HealthChecks[0].Timeout = Duration(-time.Second) }, "waves[0].healthChecks[0].timeout", "not -1s"},
		{"long interval", func(p *Plan) { p.Waves[1].HealthChecks[0].Interval = Duration(time.Hour) }, "waves[1].healthChecks[0].interval", "interval must be from 100ms to 10m0s"},
		{"negative retries", func(p *Plan) { p.Waves[0].HealthChecks[0].Retries = -1 }, "waves[0].healthChecks[0].retries", "retries must be 1 to 10000 (absent: 60), not -1"},
		{"many retries", func(p *Plan) { p.Waves[0].HealthChecks[0].Retries = 10001 }, "waves[0].healthChecks[0].retries", "not 10001"},
		{"too many checks", func(p *Plan) {
			for i := range MaxChecksPerWave {
				p.Waves[0].HealthChecks = append(p.Waves[0].HealthChecks, HealthCheck{Name: "c" + strings.Repeat("x", i), TCP: &TCPCheck{Address: "a:1"}})
			}
		}, "waves[0].healthChecks", "at most 20 are allowed"},

		// Steps.
		{"step name", func(p *Plan) { p.Waves[1].Steps[0].Name = "DNS" }, "waves[1].steps[0].name", `a step name "DNS" is not valid`},
		{"step names twice", func(p *Plan) { p.Waves[1].Steps[1].Name = "dns" }, "waves[1].steps[1].name", "two steps named dns (steps[0] and steps[1])"},
		{"step of nothing", func(p *Plan) { p.Waves[1].Steps[3].Script = nil }, "waves[1].steps[3]", "a step needs one of dns, haproxy, webhook or script"},
		{"step of two actions", func(p *Plan) { p.Waves[1].Steps[3].Webhook = p.Waves[1].Steps[2].Webhook }, "waves[1].steps[3]", "a step has webhook and script: a step does one thing"},
		{"too many steps", func(p *Plan) {
			for i := range MaxStepsPerWave + 1 {
				p.Waves[0].Steps = append(p.Waves[0].Steps, Step{Name: "s" + strings.Repeat("x", i), Script: &ScriptStep{Run: "true"}})
			}
		}, "waves[0].steps", "at most 50 are allowed"},

		// DNS steps.
		{"dns without server", func(p *Plan) { webDNS(p).Server = "" }, "waves[1].steps[0].dns.server", "a dns step needs server"},
		{"dns server port", func(p *Plan) { webDNS(p).Server = "ns1.example.com:99999" }, "waves[1].steps[0].dns.server", `server "ns1.example.com:99999" must be a host name or IP address`},
		{"dns server host", func(p *Plan) { webDNS(p).Server = "ns 1" }, "waves[1].steps[0].dns.server", "must be a host name or IP address"},
		{"dns server in brackets", func(p *Plan) { webDNS(p).Server = "[ns1]" }, "waves[1].steps[0].dns.server", "must be a host name or IP address"},
		{"dns without zone", func(p *Plan) { webDNS(p).Zone = "" }, "waves[1].steps[0].dns.zone", "a dns step needs zone"},
		{"dns zone", func(p *Plan) { webDNS(p).Zone = "example..com" }, "waves[1].steps[0].dns.zone", `zone "example..com" is not a domain name`},
		{"dns root zone", func(p *Plan) { webDNS(p).Zone = "." }, "waves[1].steps[0].dns.zone", "is not a domain name"},
		{"key without name", func(p *Plan) { webDNS(p).Key.Name = "" }, "waves[1].steps[0].dns.key.name", "the TSIG key needs name"},
		{"key name", func(p *Plan) { webDNS(p).Key.Name = "lifeboat key" }, "waves[1].steps[0].dns.key.name", "is not a domain name"},
		{"key algorithm", func(p *Plan) { webDNS(p).Key.Algorithm = "hmac-md5" }, "waves[1].steps[0].dns.key.algorithm", `algorithm must be hmac-sha256 (the default), hmac-sha512, hmac-sha384, hmac-sha224 or hmac-sha1, not "hmac-md5"`},
		{"key without secret", func(p *Plan) { webDNS(p).Key.Secret = "" }, "waves[1].steps[0].dns.key.secret", "the TSIG key needs secret"},
		{"key secret", func(p *Plan) { webDNS(p).Key.Secret = "TSIG" }, "waves[1].steps[0].dns.key.secret", `secret "TSIG" is not a plan secret's name`},
		{"no records", func(p *Plan) { webDNS(p).Records = nil }, "waves[1].steps[0].dns.records", "a dns step needs at least one record"},
		{"too many records", func(p *Plan) {
			for range MaxRecordsPerStep {
				webDNS(p).Records = append(webDNS(p).Records, DNSRecord{Name: "x", Values: []string{"192.0.2.1"}})
			}
		}, "waves[1].steps[0].dns.records", "at most 100 records, not 103"},
		{"record without name", func(p *Plan) { webDNS(p).Records[0].Name = "" }, "waves[1].steps[0].dns.records[0].name", "a record needs name: a name in zone example.com."},
		{"record outside zone", func(p *Plan) { webDNS(p).Records[1].Name = "api.example.org" }, "waves[1].steps[0].dns.records[1].name", `name "api.example.org" is not in zone example.com.`},
		{"absolute record outside zone", func(p *Plan) { webDNS(p).Records[0].Name = "www." }, "waves[1].steps[0].dns.records[0].name", `name "www." is not in zone example.com.`},
		{"record in a zone's parent", func(p *Plan) { webDNS(p).Records[1].Name = "com." }, "waves[1].steps[0].dns.records[1].name", "is not in zone"},
		{"record name suffix but not in zone", func(p *Plan) { webDNS(p).Records[1].Name = "api.badexample.com" }, "waves[1].steps[0].dns.records[1].name", "is not in zone"},
		{"record name", func(p *Plan) { webDNS(p).Records[0].Name = "w w w" }, "waves[1].steps[0].dns.records[0].name", `name "w w w" is not a DNS name`},
		{"wildcard inside", func(p *Plan) { webDNS(p).Records[1].Name = "a.*.example.com" }, "waves[1].steps[0].dns.records[1].name", "is not a DNS name"},
		{"record type", func(p *Plan) { webDNS(p).Records[1].Type = "MX" }, "waves[1].steps[0].dns.records[1].type", `type must be A (the default), AAAA, CNAME or TXT, not "MX"`},
		{"lower-case type", func(p *Plan) { webDNS(p).Records[1].Type = "cname" }, "waves[1].steps[0].dns.records[1].type", `not "cname"`},
		{"long ttl", func(p *Plan) { webDNS(p).Records[0].TTL = 604801 }, "waves[1].steps[0].dns.records[0].ttl", "ttl must be 1 to 604800 seconds (a week; absent: 60), not 604801"},
		{"negative ttl", func(p *Plan) { webDNS(p).Records[0].TTL = -1 }, "waves[1].steps[0].dns.records[0].ttl", "not -1"},
		{"values and instance", func(p *Plan) { webDNS(p).Records[0].Values = []string{"192.0.2.1"} }, "waves[1].steps[0].dns.records[0]", "record www.example.com. has both values and instance"},
		{"neither values nor instance", func(p *Plan) { webDNS(p).Records[0].Instance = "" }, "waves[1].steps[0].dns.records[0]", "record www.example.com. needs values, or instance"},
		{"instance of a CNAME", func(p *Plan) { r := &webDNS(p).Records[1]; r.Values, r.Instance = nil, idB }, "waves[1].steps[0].dns.records[1].instance", "use it with type A or AAAA, not CNAME"},
		{"instance of no wave", func(p *Plan) { webDNS(p).Records[0].Instance = idD; onlyIDs(p) }, "waves[1].steps[0].dns.records[0].instance", "server " + idD + " is not in any wave of the plan"},
		{"instance of a later wave", func(p *Plan) {
			p.Waves = append(p.Waves, Wave{Name: "late", Servers: []Selector{{ID: idD}}})
			webDNS(p).Records[0].Instance = idD
		}, "waves[1].steps[0].dns.records[0].instance", "server " + idD + " is launched in wave late, which is not done before wave web"},
		{"instance by bad id", func(p *Plan) { webDNS(p).Records[0].Instance = "web1" }, "waves[1].steps[0].dns.records[0].instance", `"web1" is not a source server id`},
		{"A of IPv6", func(p *Plan) { r := &webDNS(p).Records[0]; r.Instance, r.Values = "", []string{"2001:db8::1"} }, "waves[1].steps[0].dns.records[0].values[0]", `"2001:db8::1" is not an IPv4 address`},
		{"AAAA of IPv4", func(p *Plan) {
			r := &webDNS(p).Records[0]
			r.Type, r.Instance, r.Values, r.Failback = "AAAA", "", []string{"192.0.2.1"}, nil
		}, "waves[1].steps[0].dns.records[0].values[0]", "is not an IPv6 address"},
		{"A of a name", func(p *Plan) { r := &webDNS(p).Records[0]; r.Instance, r.Values = "", []string{"web1"} }, "waves[1].steps[0].dns.records[0].values[0]", "is not an IPv4 address"},
		{"CNAME of two", func(p *Plan) { webDNS(p).Records[1].Values = []string{"a.example.net", "b.example.net"} }, "waves[1].steps[0].dns.records[1].values", "a CNAME record has exactly one value"},
		{"CNAME of an address", func(p *Plan) { webDNS(p).Records[1].Values = []string{"http://x/"} }, "waves[1].steps[0].dns.records[1].values[0]", "is not a domain name: a CNAME points to one"},
		{"CNAME at the apex", func(p *Plan) { webDNS(p).Records[1].Name = "@" }, "waves[1].steps[0].dns.records[1].type", "a CNAME cannot be at the zone's apex"},
		{"long TXT", func(p *Plan) { webDNS(p).Records[2].Values = []string{strings.Repeat("x", 256)} }, "waves[1].steps[0].dns.records[2].values[0]", "a TXT value is at most 255 bytes"},
		{"value twice", func(p *Plan) { webDNS(p).Records[2].Values = []string{"a", "a"} }, "waves[1].steps[0].dns.records[2].values[1]", `value "a" is listed twice`},
		{"too many values", func(p *Plan) { webDNS(p).Records[2].Values = slices.Repeat([]string{"a"}, 21) }, "waves[1].steps[0].dns.records[2].values", "at most 20 values"},
		{"failback value", func(p *Plan) { webDNS(p).Records[0].Failback = []string{"web1"} }, "waves[1].steps[0].dns.records[0].failback[0]", `"web1" is not an IPv4 address`},
		{"record twice in a step", func(p *Plan) {
			webDNS(p).Records[2].Name, webDNS(p).Records[2].Type = "www.example.com.", ""
			webDNS(p).Records[2].Values = []string{"192.0.2.9"}
		}, "waves[1].steps[0].dns.records[2]", "record www.example.com. A is also set at waves[1].steps[0].dns.records[0]: set each record in one place"},
		{"record in two steps", func(p *Plan) {
			s := copyStep(p, 0, "dns2")
			s.DNS.Drill = nil
			s.DNS.Records = s.DNS.Records[:1]
		}, "waves[1].steps[4].dns.records[0]", "record www.example.com. A is also set at waves[1].steps[0].dns.records[0]"},
		{"CNAME and A", func(p *Plan) { webDNS(p).Records[2] = DNSRecord{Name: "api", Values: []string{"192.0.2.7"}} }, "waves[1].steps[0].dns.records[2]", "api.example.com. has a CNAME record (at waves[1].steps[0].dns.records[1]) and a A record: a name with a CNAME can have no other record"},

		// DNS drills.
		{"drill in the production zone", func(p *Plan) { webDNS(p).Drill.Zone = "Example.com." }, "waves[1].steps[0].dns.drill.zone", "the drill's zone is the production zone example.com.: a drill must never change production records"},
		{"drill without zone", func(p *Plan) { webDNS(p).Drill.Zone = "" }, "waves[1].steps[0].dns.drill.zone", "a dns step's drill needs zone"},
		{"drill without records", func(p *Plan) { webDNS(p).Drill.Records = nil }, "waves[1].steps[0].dns.drill.records", "the drill needs at least one record"},
		{"drill record outside its zone", func(p *Plan) { webDNS(p).Drill.Records[0].Name = "www.example.com" }, "waves[1].steps[0].dns.drill.records[0].name", `name "www.example.com" is not in zone drill.example.com.`},
		{"drill record equal to a production record", func(p *Plan) {
			webDNS(p).Records = append(webDNS(p).Records, DNSRecord{Name: "www.drill.example.com.", Values: []string{"192.0.2.80"}})
		}, "waves[1].steps[0].dns.drill.records[0]", "drill record www.drill.example.com. A is a production record (set at waves[1].steps[0].dns.records[3]): a drill must never change production records"},
		{"drill zone of another step", func(p *Plan) {
			s := copyStep(p, 0, "drill-dns")
			s.DNS.Zone, s.DNS.Drill = "drill.example.com", nil
			s.DNS.Records = []DNSRecord{{Name: "other", Values: []string{"192.0.2.1"}}}
		}, "waves[1].steps[0].dns.drill.zone", "the drill's zone drill.example.com. is a zone this plan changes in production (waves[1].steps[4].dns.zone)"},
		{"drill record in a production zone below the drill's", func(p *Plan) {
			webDNS(p).Drill.Zone = "example.net"
			webDNS(p).Drill.Records[0].Name = "www.app.example.net"
			s := copyStep(p, 0, "app-dns")
			s.DNS.Zone, s.DNS.Drill = "app.example.net", nil
			s.DNS.Records = []DNSRecord{{Name: "api", Values: []string{"192.0.2.1"}}}
		}, "waves[1].steps[0].dns.drill.records[0]", "drill record www.app.example.net. is in zone app.example.net., which this plan changes in production (waves[1].steps[4].dns.zone)"},

		// HAProxy steps.
		{"socket and address", func(p *Plan) { webLB(p).Address = "127.0.0.1:9999" }, "waves[1].steps[1].haproxy", "an haproxy step has socket or address, not both"},
		{"neither socket nor address", func(p *Plan) { webLB(p).Socket = "" }, "waves[1].steps[1].haproxy", "an haproxy step needs socket"},
		{"relative socket", func(p *Plan) { webLB(p).Socket = "run/haproxy.sock" }, "waves[1].steps[1].haproxy.socket", "must be a clean absolute path"},
		{"unclean socket", func(p *Plan) { webLB(p).Socket = "/run/../haproxy.sock" }, "waves[1].steps[1].haproxy.socket", "must be a clean absolute path"},
		{"long socket", func(p *Plan) { webLB(p).Socket = "/" + strings.Repeat("s", 107) }, "waves[1].steps[1].haproxy.socket", "of at most 107 bytes"},
		{"address", func(p *Plan) { webLB(p).Socket, webLB(p).Address = "", "127.0.0.1" }, "waves[1].steps[1].haproxy.address", `address "127.0.0.1" must be host:port`},
		{"no backend", func(p *Plan) { webLB(p).Backend = "" }, "waves[1].steps[1].haproxy.backend", "an haproxy step needs backend"},
		{"backend name", func(p *Plan) { webLB(p).Backend = "web servers" }, "waves[1].steps[1].haproxy.backend", "must be 1-64 letters, digits or _.:-"},
		{"drill backend name", func(p *Plan) { webLB(p).DrillBackend = strings.Repeat("b", 65) }, "waves[1].steps[1].haproxy.drillBackend", "must be 1-64 letters"},
		{"drill backend in production", func(p *Plan) { webLB(p).DrillBackend = "web" }, "waves[1].steps[1].haproxy.drillBackend", "drillBackend is the production backend web: a drill must never change production"},
		{"drill backend of another step", func(p *Plan) {
			s := copyStep(p, 1, "lb2")
			s.HAProxy.Backend, s.HAProxy.DrillBackend = "web-drill", ""
		}, "waves[1].steps[1].haproxy.drillBackend", "drillBackend web-drill is a production backend of this plan (waves[1].steps[4].haproxy)"},
		{"no backend servers", func(p *Plan) { webLB(p).Servers = nil }, "waves[1].steps[1].haproxy.servers", "needs at least one server"},
		{"too many backend servers", func(p *Plan) {
			for i := range MaxHAProxyServers {
				webLB(p).Servers = append(webLB(p).Servers, HAProxyServer{Name: "s" + strings.Repeat("x", i%60) + string(rune('a'+i/60)), Instance: idB})
			}
		}, "waves[1].steps[1].haproxy.servers", "at most 100 servers, not 102"},
		{"backend server name", func(p *Plan) { webLB(p).Servers[0].Name = "web 1" }, "waves[1].steps[1].haproxy.servers[0].name", `server name "web 1" must be 1-64`},
		{"backend server twice", func(p *Plan) { webLB(p).Servers[1].Name = "web1" }, "waves[1].steps[1].haproxy.servers[1].name", "server web1 is listed twice"},
		{"backend server without instance", func(p *Plan) { webLB(p).Servers[0].Instance = "" }, "waves[1].steps[1].haproxy.servers[0].instance", "instance is required"},
		{"backend server of no wave", func(p *Plan) { webLB(p).Servers[0].Instance = idD; onlyIDs(p) }, "waves[1].steps[1].haproxy.servers[0].instance", "is not in any wave of the plan"},
		{"backend server port", func(p *Plan) { webLB(p).Servers[1].Port = 65536 }, "waves[1].steps[1].haproxy.servers[1].port", "port must be 1 to 65535 (the instance's guest port; absent: 80), not 65536"},
		{"backend server failback", func(p *Plan) { webLB(p).Servers[1].Failback = "192.0.2.81" }, "waves[1].steps[1].haproxy.servers[1].failback", `failback "192.0.2.81" must be host:port`},
		{"backend server in two steps", func(p *Plan) { copyStep(p, 1, "lb2").HAProxy.DrillBackend = "" }, "waves[1].steps[4].haproxy.servers[0]", "server web1 of backend web is also set at waves[1].steps[1].haproxy.servers[0]"},

		// Webhooks and scripts.
		{"webhook without url", func(p *Plan) { p.Waves[1].Steps[2].Webhook.URL = "" }, "waves[1].steps[2].webhook.url", "a webhook needs url"},
		{"webhook over http", func(p *Plan) { p.Waves[1].Steps[2].Webhook.URL = "http://hooks.example.com/" }, "waves[1].steps[2].webhook.url", "must be an https:// URL"},
		{"webhook url", func(p *Plan) { p.Waves[1].Steps[2].Webhook.URL = "https//hooks" }, "waves[1].steps[2].webhook.url", "is not a URL"},
		{"webhook credentials", func(p *Plan) { p.Waves[1].Steps[2].Webhook.URL = "https://u:p@hooks.example.com/" }, "waves[1].steps[2].webhook.url", "carries credentials"},
		{"webhook without secret", func(p *Plan) { p.Waves[1].Steps[2].Webhook.Secret = "" }, "waves[1].steps[2].webhook.secret", "a webhook needs secret"},
		{"webhook secret", func(p *Plan) { p.Waves[1].Steps[2].Webhook.Secret = "hook key" }, "waves[1].steps[2].webhook.secret", "is not a plan secret's name"},
		{"webhook ca", func(p *Plan) { p.Waves[1].Steps[2].Webhook.CA = "/etc/ca.pem" }, "waves[1].steps[2].webhook.ca", `ca "/etc/ca.pem" is not a plan secret's name`},
		{"webhook timeout", func(p *Plan) { p.Waves[1].Steps[2].Webhook.Timeout = Duration(6 * time.Minute) }, "waves[1].steps[2].webhook.timeout", "timeout must be from 1s to 5m0s (absent: 10s), not 6m0s"},
		{"script without run", func(p *Plan) { p.Waves[1].Steps[3].Script.Run = "" }, "waves[1].steps[3].script.run", "a script step needs run"},
		{"long script", func(p *Plan) { p.Waves[1].Steps[3].Script.Run = strings.Repeat("x", 4097) }, "waves[1].steps[3].script.run", "at most 4096"},
		{"script with NUL", func(p *Plan) { p.Waves[1].Steps[3].Script.Run = "echo \x00" }, "waves[1].steps[3].script.run", "run must be text"},
		{"script timeout", func(p *Plan) { p.Waves[1].Steps[3].Script.Timeout = Duration(2 * time.Hour) }, "waves[1].steps[3].script.timeout", "timeout must be from 1s to 1h0m0s (absent: 1m0s), not 2h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := parseOK(t, fullPlanYAML)
			tc.change(p)
			err := p.Validate()
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate: %v, want a *ValidationError", err)
			}
			if ve.Path != tc.path || !strings.Contains(ve.Msg, tc.want) {
				t.Errorf("got  %s\nwant %s: …%s…", ve, tc.path, tc.want)
			}
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(p *Plan)
	}{
		{"no schedule", func(p *Plan) { p.Schedule = nil }},
		{"every", func(p *Plan) { p.Schedule.Drill = "@every 20s" }},
		{"daily", func(p *Plan) { p.Schedule.Drill = "@daily" }},
		{"terminate on failure", func(p *Plan) { p.OnFailure = OnFailureTerminate }},
		{"server with port", func(p *Plan) { webDNS(p).Server = "ns1.example.com:5353" }},
		{"IPv6 server", func(p *Plan) { webDNS(p).Server = "2001:db8::53" }},
		{"IPv6 server in brackets", func(p *Plan) { webDNS(p).Server = "[2001:db8::53]" }},
		{"IPv6 server with port", func(p *Plan) { webDNS(p).Server = "[2001:db8::53]:5353" }},
		{"absolute zone", func(p *Plan) { webDNS(p).Zone = "Example.COM." }},
		{"one-label zone", func(p *Plan) {
			webDNS(p).Zone = "lab"
			webDNS(p).Records[1].Name = "api.lab."
			webDNS(p).Drill.Zone = "drill.lab"
		}},
		{"every algorithm", func(p *Plan) { webDNS(p).Key.Algorithm = "hmac-sha1" }},
		{"absolute key name", func(p *Plan) { webDNS(p).Key.Name = "lifeboat.example.com." }},
		{"wildcard", func(p *Plan) { webDNS(p).Records[0].Name = "*" }},
		{"absolute wildcard", func(p *Plan) { webDNS(p).Records[0].Name = "*.example.com." }},
		{"AAAA instance", func(p *Plan) { r := &webDNS(p).Records[0]; r.Type, r.Failback = "AAAA", []string{"2001:db8::80"} }},
		{"A values", func(p *Plan) {
			r := &webDNS(p).Records[0]
			r.Instance, r.Values = "", []string{"192.0.2.1", "192.0.2.2"}
		}},
		{"TXT with spaces", func(p *Plan) { webDNS(p).Records[2].Values = []string{"a b", "c"} }},
		{"max ttl", func(p *Plan) { webDNS(p).Records[0].TTL = 604800 }},
		{"drill zone below production", func(p *Plan) { webDNS(p).Drill.Zone = "dr.example.com" }},
		{"drill zone elsewhere", func(p *Plan) { webDNS(p).Drill.Zone = "example-drill.net" }},
		{"no DNS drill", func(p *Plan) { webDNS(p).Drill = nil }},
		{"instance of an earlier wave", func(p *Plan) { webDNS(p).Records[0].Instance = idA }},
		{"instance of an earlier wave by implicit order", func(p *Plan) { p.Waves[1].After = nil; webDNS(p).Records[0].Instance = idA }},
		{"haproxy over tcp", func(p *Plan) { webLB(p).Socket, webLB(p).Address = "", "127.0.0.1:9999" }},
		{"no drill backend", func(p *Plan) { webLB(p).DrillBackend = "" }},
		{"same backend on another haproxy", func(p *Plan) { copyStep(p, 1, "lb2").HAProxy.Socket = "/run/haproxy/other.sock" }},
		{"http check over https", func(p *Plan) {
			p.Waves[1].HealthChecks[0].HTTP.URL = "https://${LIFEBOAT_INSTANCE_ADDRESS}:8443/health?x=1"
		}},
		{"override of every server", func(p *Plan) { p.Waves[1].Launch[0].CPUs = 4 }},
		{"many waves", func(p *Plan) {
			for i := len(p.Waves); i < MaxWaves; i++ {
				p.Waves = append(p.Waves, Wave{Name: "w" + strings.Repeat("x", i), Servers: []Selector{{Tags: map[string]string{"n": strings.Repeat("x", i)}}}})
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := parseOK(t, fullPlanYAML)
			tc.change(p)
			if err := p.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if err := p.WithDefaults().Validate(); err != nil {
				t.Errorf("Validate with defaults: %v", err)
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	var p *Plan
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "the plan is empty") {
		t.Errorf("Validate of nil: %v", err)
	}
	if p.WithDefaults() != nil {
		t.Error("WithDefaults of nil is not nil")
	}
}

func TestOrder(t *testing.T) {
	wave := func(name string, after ...string) Wave {
		return Wave{Name: name, After: after, Servers: []Selector{{Group: name}}}
	}
	for _, tc := range []struct {
		name  string
		waves []Wave
		want  []int
	}{
		{"file order", []Wave{wave("a"), wave("b"), wave("c")}, []int{0, 1, 2}},
		{"diamond", []Wave{wave("a"), wave("b", "a"), wave("c", "a"), wave("d", "b", "c")}, []int{0, 1, 2, 3}},
		{"diamond written backwards", []Wave{wave("a"), wave("d", "b", "c"), wave("c", "a"), wave("b", "a")}, []int{0, 2, 3, 1}},
		{"two branches", []Wave{wave("a"), wave("b", "a"), wave("c", "a"), wave("d", "c"), wave("e", "b")}, []int{0, 1, 2, 3, 4}},
		{"a later wave first", []Wave{wave("a"), wave("b", "c"), wave("c", "a")}, []int{0, 2, 1}},
		{"after an earlier wave", []Wave{wave("a"), wave("b"), wave("c", "a"), wave("d")}, []int{0, 1, 2, 3}},
		{"implicit after a later one", []Wave{wave("a", "c"), wave("b"), wave("c")}, nil},
		{"one wave", []Wave{wave("a")}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Plan{Name: "p", Waves: tc.waves}
			got, err := p.Order()
			if tc.want == nil {
				if err == nil {
					t.Fatalf("Order: %v, want a cycle", got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Order: %v, %v; want %v", got, err, tc.want)
			}
			pos := map[string]int{}
			for k, i := range got {
				pos[tc.waves[i].Name] = k
			}
			for i, w := range tc.waves {
				deps := w.After
				if len(deps) == 0 && i > 0 {
					deps = []string{tc.waves[i-1].Name}
				}
				for _, d := range deps {
					if pos[d] > pos[w.Name] {
						t.Errorf("wave %s is ordered before %s, which it comes after", w.Name, d)
					}
				}
			}
		})
	}
	p := &Plan{Name: "p", Waves: []Wave{wave("a", "b"), wave("b", "a")}}
	if _, err := p.Order(); err == nil || !strings.Contains(err.Error(), "waves a → b → a form a cycle") {
		t.Errorf("Order of a cycle: %v", err)
	}
	p = &Plan{Name: "p", Waves: []Wave{wave("a"), wave("b", "z")}}
	if _, err := p.Order(); err == nil || !strings.Contains(err.Error(), `comes after "z"`) {
		t.Errorf("Order with an unknown wave: %v", err)
	}
}

func TestRunsCommandsAndSecrets(t *testing.T) {
	p := parseOK(t, fullPlanYAML)
	if !p.RunsCommands() {
		t.Error("RunsCommands is false for a plan with a command check and a script")
	}
	if got, want := p.Secrets(), []string{"hook-ca", "hook-key", "tsig-lab"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Secrets: %v, want %v", got, want)
	}
	p.Waves[1].Steps = slices.DeleteFunc(p.Waves[1].Steps, func(s Step) bool { return s.Script != nil })
	if !p.RunsCommands() {
		t.Error("RunsCommands is false for a plan with a command check")
	}
	p.Waves[1].HealthChecks = p.Waves[1].HealthChecks[:1]
	if p.RunsCommands() {
		t.Error("RunsCommands is true for a plan without commands")
	}
	s := copyStep(p, 0, "dns2")
	s.DNS.Key.Secret = "hook-key"
	p.Waves[1].Steps[2].Webhook.CA = ""
	if got, want := p.Secrets(), []string{"hook-key", "tsig-lab"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Secrets: %v, want %v", got, want)
	}
}

func TestWithDefaults(t *testing.T) {
	p := parseOK(t, fullPlanYAML)
	before := clonePlan(p)
	d := p.WithDefaults()
	if !reflect.DeepEqual(p, before) {
		t.Fatal("WithDefaults changed the plan it copies")
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("the plan with its defaults is not valid: %v", err)
	}
	if d.OnFailure != OnFailureLeave {
		t.Errorf("onFailure %q", d.OnFailure)
	}
	hc := d.Waves[1].HealthChecks[0]
	if time.Duration(hc.Timeout) != DefaultCheckTimeout || time.Duration(hc.Interval) != 2*time.Second || hc.Retries != DefaultCheckRetries || hc.HTTP.Status != 200 {
		t.Errorf("health check defaults: %+v", hc)
	}
	if d.Waves[0].HealthChecks[0].Retries != 100 || time.Duration(d.Waves[0].HealthChecks[0].Timeout) != 3*time.Second {
		t.Errorf("a default replaced a value: %+v", d.Waves[0].HealthChecks[0])
	}
	dns := d.Waves[1].Steps[0].DNS
	wantRecords := []DNSRecord{
		{Name: "www.example.com.", Type: "A", TTL: 30, Instance: idB, Failback: []string{"192.0.2.80"}},
		{Name: "api.example.com.", Type: "CNAME", TTL: 60, Values: []string{"www.example.com."}},
		{Name: "example.com.", Type: "TXT", TTL: 60, Values: []string{"v=lifeboat1"}},
	}
	if dns.Server != "192.0.2.53:53" || dns.Zone != "example.com." || dns.Key.Name != "lifeboat-key." || dns.Key.Algorithm != "hmac-sha256" || !reflect.DeepEqual(dns.Records, wantRecords) {
		t.Errorf("dns defaults: %+v", dns)
	}
	if dns.Drill.Zone != "drill.example.com." || dns.Drill.Records[0].Name != "www.drill.example.com." || dns.Drill.Records[0].TTL != 60 {
		t.Errorf("dns drill defaults: %+v", dns.Drill)
	}
	lb := d.Waves[1].Steps[1].HAProxy
	if lb.Servers[0].Port != 80 || lb.Servers[1].Port != 8080 {
		t.Errorf("haproxy defaults: %+v", lb.Servers)
	}
	if time.Duration(d.Waves[1].Steps[2].Webhook.Timeout) != 30*time.Second || time.Duration(d.Waves[1].Steps[3].Script.Timeout) != 5*time.Minute {
		t.Error("a default replaced a step's timeout")
	}
	p.Waves[1].Steps[2].Webhook.Timeout, p.Waves[1].Steps[3].Script.Timeout = 0, 0
	d = p.WithDefaults()
	if time.Duration(d.Waves[1].Steps[2].Webhook.Timeout) != DefaultWebhookTimeout || time.Duration(d.Waves[1].Steps[3].Script.Timeout) != DefaultScriptTimeout {
		t.Error("step timeouts without defaults")
	}
	// Defaults twice change nothing more.
	if !reflect.DeepEqual(d.WithDefaults(), d) {
		t.Error("WithDefaults of a plan with its defaults changed it")
	}
}

func TestServerAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.53":          "192.0.2.53:53",
		"192.0.2.53:5353":     "192.0.2.53:5353",
		"ns1.example.com":     "ns1.example.com:53",
		"ns1.example.com.":    "ns1.example.com.:53",
		"2001:db8::53":        "[2001:db8::53]:53",
		"[2001:db8::53]":      "[2001:db8::53]:53",
		"[2001:db8::53]:5353": "[2001:db8::53]:5353",
		"not valid!":          "not valid!",
	} {
		if got := (DNSStep{Server: in}).ServerAddr(); got != want {
			t.Errorf("ServerAddr of %q: %q, want %q", in, got, want)
		}
	}
}

func TestRecordFQDN(t *testing.T) {
	for _, tc := range []struct{ name, zone, want string }{
		{"www", "example.com", "www.example.com."},
		{"WWW", "Example.com.", "www.example.com."},
		{"@", "example.com", "example.com."},
		{"www.example.com", "example.com", "www.example.com."},
		{"www.example.com.", "example.com.", "www.example.com."},
		{"*", "example.com", "*.example.com."},
		{"a.b.example.com", "example.com", "a.b.example.com."},
	} {
		if got := (DNSRecord{Name: tc.name}).FQDN(tc.zone); got != tc.want {
			t.Errorf("FQDN of %q in %q: %q, want %q", tc.name, tc.zone, got, tc.want)
		}
	}
}

func TestValidationErrorText(t *testing.T) {
	for _, tc := range []struct {
		e    ValidationError
		want string
	}{
		{ValidationError{Path: "waves[0].name", Line: 12, Msg: "fix it"}, "line 12: waves[0].name: fix it"},
		{ValidationError{Path: "waves[0].name", Msg: "fix it"}, "waves[0].name: fix it"},
		{ValidationError{Line: 3, Msg: "fix it"}, "line 3: fix it"},
		{ValidationError{Msg: "fix it"}, "fix it"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%q, want %q", got, tc.want)
		}
	}
}

// onlyIDs drops the selectors by tag and group: then every server a step names must
// be selected by id.
func onlyIDs(p *Plan) {
	for i := range p.Waves {
		var ids []Selector
		for _, s := range p.Waves[i].Servers {
			if s.ID != "" {
				ids = append(ids, s)
			}
		}
		p.Waves[i].Servers = ids
	}
}
