package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// defaultDataDir is where `lifeboat up` and `lifeboat server` keep their state:
// /var/lib/lifeboat as root, else $XDG_DATA_HOME/lifeboat or ~/.local/share/lifeboat.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/lifeboat"
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "lifeboat")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "lifeboat")
	}
	return filepath.Join(home, ".local", "share", "lifeboat")
}

// adminTokenFile is where `lifeboat up` writes the admin API token.
func adminTokenFile(dataDir string) string { return filepath.Join(dataDir, "admin-token") }

// caFile is the CA certificate of a data directory.
func caFile(dataDir string) string { return filepath.Join(dataDir, "pki", pki.CACertFile) }

// client returns an API client from the global flags. On the machine that runs
// `lifeboat up`, it needs none: the server defaults to the local control plane, and the
// token and CA to those `up` wrote in the default data directory.
func (g *globals) client() (*api.Client, error) {
	server := g.server
	local := server == ""
	if local {
		server = "https://" + controlplane.DefaultListen
	}
	if u, err := url.Parse(server); err == nil {
		h := u.Hostname()
		local = local || h == "127.0.0.1" || h == "localhost" || h == "::1"
	}
	token := g.token
	if token == "" && local {
		if b, err := os.ReadFile(adminTokenFile(defaultDataDir())); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}
	if token == "" {
		return nil, usagef("no API token: give it with --token-file FILE or env %s (create one with lifeboat tokens create --kind api)", envToken)
	}
	cfg := api.ClientConfig{Server: server, Token: token, UserAgent: "lifeboat-cli"}
	caPath := g.caCert
	if caPath == "" && local {
		if _, err := os.Stat(caFile(defaultDataDir())); err == nil {
			caPath = caFile(defaultDataDir())
		}
	}
	if caPath != "" {
		b, err := os.ReadFile(caPath)
		if err != nil {
			return nil, fmt.Errorf("read the CA certificate given by --ca-cert: %w", err)
		}
		cfg.CAPEM = b
	}
	return api.NewClient(cfg)
}

// exactArgs is cobra.ExactArgs with a usage error (exit status 2) naming what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %s (see %s --help)", cmd.CommandPath(), what, cmd.CommandPath())
		}
		return nil
	}
}

// noArgs refuses positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// show prints v as the API's JSON with -o json, or calls table otherwise.
func (g *globals) show(v any, table func(w *tabwriter.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// row writes one tab-separated row.
func row(w io.Writer, cols ...any) {
	for i, c := range cols {
		if i > 0 {
			fmt.Fprint(w, "\t")
		}
		fmt.Fprint(w, c)
	}
	fmt.Fprintln(w)
}

// orDash prints "-" for empty values in tables.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// confirm asks a yes/no question on stdin; anything but y/yes is no.
func (g *globals) confirm(question string) (bool, error) {
	fmt.Fprintf(g.stderr, "%s [y/N] ", question)
	var answer string
	if _, err := fmt.Fscanln(g.stdin, &answer); errors.Is(err, io.EOF) {
		fmt.Fprintln(g.stderr) // no answer: end the prompt's line
	} else if err != nil && err.Error() != "unexpected newline" {
		return false, err
	}
	a := strings.ToLower(strings.TrimSpace(answer))
	return a == "y" || a == "yes", nil
}
