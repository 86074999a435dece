// Command lifeboat is the single binary of Lifeboat: control plane, replication
// server, replication agent and the command-line client. Everything it does lives in
// internal/; this file only wires the process to the CLI.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/lifeboat-dr/lifeboat/internal/cli"
	"github.com/lifeboat-dr/lifeboat/internal/freeze"
)

func main() {
	if freeze.IsWatchdog(os.Args) { // the agent's thaw watchdog, before anything else
		os.Exit(freeze.RunWatchdog(os.Args))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
