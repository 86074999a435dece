// Package units holds Lifeboat's systemd units: the agent's, which `lifeboat agent
// install` writes, and the control plane's and the replicator's, which the Debian
// package (packaging/deb) ships beside the agent's. One template per unit, so that the
// unit a package installs and the one agent install writes cannot drift apart.
//
// The units' comments say how each service is confined and what that costs.
package units

import (
	"bytes"
	"embed"
	"fmt"
	"path/filepath"
	"strings"
	"text/template"
)

// The units' names.
const (
	Agent      = "lifeboat-agent.service"
	Server     = "lifeboat-server.service"
	Replicator = "lifeboat-replicator.service"
)

// Names returns the names of every unit, in the order of their services' roles.
func Names() []string { return []string{Server, Replicator, Agent} }

//go:embed *.service.tmpl
var templates embed.FS

// Params are what a unit's command line names.
type Params struct {
	// Binary is the absolute path of the lifeboat binary (/usr/bin/lifeboat when
	// packaged).
	Binary string
	// AgentConfig is the absolute path of the agent's configuration (Agent only).
	AgentConfig string
}

// Render returns the unit named name (Agent, Server or Replicator) for p.
func Render(name string, p Params) ([]byte, error) {
	if !filepath.IsAbs(p.Binary) {
		return nil, fmt.Errorf("a systemd unit needs the absolute path of the lifeboat binary, not %q", p.Binary)
	}
	if name == Agent && !filepath.IsAbs(p.AgentConfig) {
		return nil, fmt.Errorf("the agent's unit needs the absolute path of its configuration, not %q", p.AgentConfig)
	}
	src, err := templates.ReadFile(name + ".tmpl")
	if err != nil {
		return nil, fmt.Errorf("no systemd unit is named %q: the units are %s", name, strings.Join(Names(), ", "))
	}
	t, err := template.New(name).Option("missingkey=error").Funcs(template.FuncMap{"arg": execArg}).Parse(string(src))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, p); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return b.Bytes(), nil
}

// execArg writes s as one argument of an Exec line: systemd would expand % (specifiers)
// and $ (environment variables), take backslashes as escapes and split at white space,
// so those are escaped and such an argument is quoted. Control characters are refused.
func execArg(s string) (string, error) {
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return "", fmt.Errorf("a path in a systemd unit cannot hold control characters (a newline, say): %q", s)
	}
	e := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%", "$", "$$").Replace(s)
	if s == "" || strings.ContainsAny(s, " \"';") {
		return `"` + e + `"`, nil
	}
	return e, nil
}
