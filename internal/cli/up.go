package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/atomicfile"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/secfile"
)

// upEnv is what `lifeboat up` hands to each component it runs beside the control plane.
type upEnv struct {
	CP         *controlplane.ControlPlane
	DataDir    string
	StagingDir string // the local staging store's directory
	StoreURL   string // the account template's staging store URL
	Replicator string // the local replicator's address for agents
	AdminToken string
	Admin      *api.Client // API client with the admin token
	Logger     *slog.Logger
}

// upComponent runs one more part of `lifeboat up` until ctx ends. An error stops `up`.
type upComponent func(ctx context.Context, u *upEnv) error

// upComponents lists what `lifeboat up` runs beside the control plane once it serves.
func upComponents(g *globals, replicatorListen string) []upComponent {
	return []upComponent{
		func(ctx context.Context, u *upEnv) error { return runUpReplicator(ctx, g, u, replicatorListen) },
	}
}

// runUpReplicator runs the local replicator of lifeboat up, registering it on first start
// with a one-use install token the control plane makes for itself (allowed to replace
// the local replicator's registration, for a data directory that lost its credentials).
func runUpReplicator(ctx context.Context, g *globals, u *upEnv, listen string) error {
	f := &replicatorFlags{data: u.DataDir, store: u.StoreURL, listen: listen, site: api.DefaultSite, name: "local", address: listen, replace: true}
	local := *g
	local.server = u.CP.LocalURL()
	if _, err := os.Stat(filepath.Join(u.DataDir, "replicator.yaml")); err != nil {
		tok, err := u.CP.CreateToken(ctx, u.CP.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenInstall,
			Scope: api.ScopeReplicator, Uses: 1, AllowReplace: true, Description: "the local replicator of lifeboat up"})
		if err != nil {
			return err
		}
		local.token = tok.Secret
	}
	return runReplicator(ctx, &local, f)
}

func newUpCmd(g *globals) *cobra.Command {
	var f serverFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run everything on this machine: control plane, local staging directory, embedded database",
		Long: `Run Lifeboat on one machine, listening on 127.0.0.1: the control plane with an embedded
SQLite database and a staging directory in the data directory. It prints the console URL,
where the admin token is, the staging store URL and the command that installs an agent.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runUp(cmd.Context(), g, &f) },
	}
	f.register(cmd, false)
	cmd.Flags().StringVar(&f.replicatorListen, "replicator-listen", "127.0.0.1:1500", "address of the local replicator for agents")
	return cmd
}

func runUp(ctx context.Context, g *globals, f *serverFlags) error {
	data, err := filepath.Abs(f.data)
	if err != nil {
		return err
	}
	f.data = data
	staging := filepath.Join(data, "staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return fmt.Errorf("create the staging directory: %w", err)
	}
	storeURL := (&url.URL{Scheme: "file", Path: staging}).String()
	return serveControlPlane(ctx, g, f.config(g, storeURL), func(ctx context.Context, u *upEnv) error {
		u.StagingDir = staging
		install, err := u.CP.CreateToken(ctx, u.CP.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenInstall,
			Description: "printed by lifeboat up"})
		if err != nil {
			return err
		}
		u.Replicator = f.replicatorListen
		printUpSummary(g, u.CP, u, install)
		return runComponents(ctx, u, upComponents(g, f.replicatorListen))
	})
}

// runComponents runs the components until ctx ends or one fails.
func runComponents(ctx context.Context, u *upEnv, comps []upComponent) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for _, run := range comps {
		wg.Go(func() {
			if err := run(ctx, u); err != nil && ctx.Err() == nil {
				once.Do(func() { first = err })
				cancel()
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	return first
}

// serveControlPlane opens and serves a control plane until ctx ends. Once it serves, it
// makes sure the admin token file works (creating it at first start) and calls started,
// which may run until ctx ends; an error from it stops everything.
func serveControlPlane(ctx context.Context, g *globals, cfg controlplane.Config, started func(context.Context, *upEnv) error) error {
	cp, err := controlplane.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer cp.Close()
	if err := cp.Listen(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	serveErr := make(chan error, 1)
	go func() {
		serveErr <- cp.Serve(ctx)
		cancel() // the control plane stopped: stop everything
	}()
	u, err := prepareEnv(ctx, cp, g.logger)
	if err == nil {
		err = started(ctx, u)
		if err == nil {
			<-ctx.Done()
		}
	}
	if ctx.Err() != nil {
		// Told to stop (or the control plane stopped, whose error is below) while
		// starting: what was cut short is not a failure of its own.
		err = nil
	}
	cancel()
	if sErr := <-serveErr; err == nil {
		err = sErr
	}
	return err
}

// prepareEnv makes sure the admin token in the data directory works (creating it on
// first start, or when the database was replaced) and builds the component environment.
func prepareEnv(ctx context.Context, cp *controlplane.ControlPlane, log *slog.Logger) (*upEnv, error) {
	path := adminTokenFile(cp.DataDir())
	newClient := func(token string) (*api.Client, error) {
		return api.NewClient(api.ClientConfig{Server: cp.LocalURL(), Token: token, Pin: cp.Pin(), UserAgent: "lifeboat"})
	}
	if err := secfile.Tighten(log, path); err != nil {
		return nil, err
	}
	token := ""
	if b, err := os.ReadFile(path); err == nil {
		token = strings.TrimSpace(string(b))
	}
	var admin *api.Client
	if token != "" {
		c, err := newClient(token)
		if err != nil {
			return nil, err
		}
		_, err = c.Whoami(ctx)
		var ae *api.Error
		switch {
		case err == nil:
			admin = c
		case errors.As(err, &ae) && ae.Status == 401:
			log.Warn("the admin token in the data directory is not valid here any more; writing a new one", "path", path)
		default:
			return nil, err
		}
	}
	if admin == nil {
		resp, err := cp.CreateToken(ctx, cp.SystemAccountID(), api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleAdmin,
			Description: "admin token written at first start"})
		if err != nil {
			return nil, err
		}
		token = resp.Secret
		if err := atomicfile.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
			return nil, err
		}
		log.Info("admin API token written", "path", path)
		if admin, err = newClient(token); err != nil {
			return nil, err
		}
	}
	tmpl, err := admin.ReplicationTemplate(ctx)
	if err != nil {
		return nil, err
	}
	return &upEnv{CP: cp, DataDir: cp.DataDir(), StoreURL: tmpl.StagingStoreURL, AdminToken: token, Admin: admin, Logger: log}, nil
}

func printUpSummary(g *globals, cp *controlplane.ControlPlane, u *upEnv, install api.CreateTokenResponse) {
	w := g.stdout
	fmt.Fprintf(w, "Lifeboat is up.\n\n")
	fmt.Fprintf(w, "  console:        %s/\n", cp.URL())
	fmt.Fprintf(w, "  admin token:    %s\n", adminTokenFile(u.DataDir))
	fmt.Fprintf(w, "  CA certificate: %s\n", caFile(u.DataDir))
	fmt.Fprintf(w, "  staging store:  %s\n", u.StoreURL)
	fmt.Fprintf(w, "  master key:     %s (keep a copy elsewhere: with the database it holds every account's key, and alone it opens every staging store)\n", stagingKeyFile(u.DataDir))
	fmt.Fprintf(w, "  replicator:     %s\n", u.Replicator)
	fmt.Fprintf(w, "  data directory: %s\n\n", u.DataDir)
	fmt.Fprintf(w, "Protect a Linux server: run this on it within the hour:\n\n")
	fmt.Fprintf(w, "  %s\n\n", installCommand(cp.URL(), install.Secret))
	fmt.Fprintf(w, "Use the CLI from another shell:\n\n")
	if u.DataDir == defaultDataDir() {
		fmt.Fprintf(w, "  lifeboat source-servers list\n\n")
	} else {
		fmt.Fprintf(w, "  export LIFEBOAT_SERVER=%s LIFEBOAT_CA_CERT=%s\n", cp.URL(), caFile(u.DataDir))
		fmt.Fprintf(w, "  export LIFEBOAT_TOKEN=$(cat %s)\n", adminTokenFile(u.DataDir))
		fmt.Fprintf(w, "  lifeboat source-servers list\n\n")
	}
	fmt.Fprintf(w, "Stop with Ctrl-C; run lifeboat up again to resume.\n")
}

// installCommand is the shell command `up` prints to install an agent. The token reaches
// agent install on stdin from echo, a shell builtin, so it is in no process's argv
// (`sudo LIFEBOAT_TOKEN=… lifeboat` would put it in sudo's).
func installCommand(server, token string) string {
	return fmt.Sprintf("echo %s | sudo lifeboat agent install --server %s --token-file -", token, server)
}
