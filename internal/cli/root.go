// Package cli implements the lifeboat command line: the long-running roles (server,
// replicator, agent, up) and the client commands over the HTTP API. Command handlers
// stay thin: they parse flags, call an internal package or the API client, and print.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

// Exit codes scripts rely on: 0 success, 1 a failed operation, 2 bad usage.
const (
	ExitOK     = 0 // success
	ExitFailed = 1 // the operation failed
	ExitUsage  = 2 // the command line was wrong
)

// UsageError marks an error caused by how the command was invoked (exit status 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// usagef returns a UsageError with a formatted message.
func usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// globals holds the options every command shares and the process's streams.
// It is created once per invocation and passed to each command constructor.
type globals struct {
	server    string // --server / LIFEBOAT_SERVER
	token     string // resolved from --token-file, --token (deprecated) or LIFEBOAT_TOKEN: see resolveToken
	tokenFile string // --token-file: a file holding the token, or - for one line of stdin
	caCert    string // --ca-cert / LIFEBOAT_CA_CERT: CA bundle that signed the server's certificate
	output    string // -o table|json
	logLevel  string // --log-level

	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	logger *slog.Logger
}

// Main runs the lifeboat command line with args (without the program name) and returns
// the process exit status. It never calls os.Exit, so tests can drive it in-process.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "lifeboat: %s\n", err)
	var ue *UsageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitFailed
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "lifeboat",
		Short:         "Self-hosted elastic disaster recovery for Linux servers",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "table" && g.output != "json" {
				return usagef("-o must be table or json, not %q", g.output)
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
				return usagef("--log-level must be debug, info, warn or error, not %q", g.logLevel)
			}
			g.logger = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level}))
			return g.resolveToken(cmd.Flags().Changed("token"))
		},
	}
	// Flag errors (unknown flag, missing value) are usage errors: exit status 2.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Err: err} })

	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", os.Getenv("LIFEBOAT_SERVER"), "control plane URL (env LIFEBOAT_SERVER)")
	// The token's environment variable is read in resolveToken, not made the flag's
	// default: --help would print it.
	pf.StringVar(&g.tokenFile, "token-file", "", "file holding the API or install token; - reads one line from stdin")
	pf.StringVar(&g.token, "token", "", "the token itself (deprecated: every user of the machine can read it; use --token-file or env "+envToken+")")
	pf.StringVar(&g.caCert, "ca-cert", os.Getenv("LIFEBOAT_CA_CERT"), "PEM file of the CA that signed the server's certificate (env LIFEBOAT_CA_CERT)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	for _, add := range commandList() {
		root.AddCommand(add(g))
	}
	return root
}
