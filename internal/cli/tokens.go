package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newTokensCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Create, list and revoke API and install tokens"}
	cmd.AddCommand(newTokensCreateCmd(g), newTokensListCmd(g), newTokensRevokeCmd(g))
	return cmd
}

// tokensCreateFlags are the flags of tokens create.
type tokensCreateFlags struct {
	req  api.CreateTokenRequest
	role string
	ttl  time.Duration
}

func newTokensCreateCmd(g *globals) *cobra.Command {
	var f tokensCreateFlags
	cmd := &cobra.Command{
		Use:   "create --kind install|api",
		Short: "Create a token; its secret is printed once",
		Long: `Create a token. An install token (default lifetime 1 hour) registers machines:
--scope source-server (default) for agents, replicator for replicators. It cannot
re-register a machine id or replicator name that is registered already (that takes over
its identity) unless made with --allow-replace: use that for one reinstall, with --uses 1.
An API token carries a role: admin, operator or viewer.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTokensCreate(cmd.Context(), g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.req.Kind, "kind", "", "install or api (required)")
	fl.StringVar(&f.role, "role", "", "role of an API token: admin, operator or viewer")
	fl.StringVar(&f.req.Scope, "scope", "", "what an install token registers: source-server (default), replicator, or failback (a failback client on rescue media)")
	fl.DurationVar(&f.ttl, "ttl", 0, "lifetime (default 1h for install tokens, none for API tokens)")
	fl.IntVar(&f.req.Uses, "uses", 0, "how many registrations an install token allows (0: unlimited)")
	fl.StringVar(&f.req.Description, "description", "", "what the token is for")
	fl.BoolVar(&f.req.AllowReplace, "allow-replace", false, "an install token that may re-register a machine or replicator registered already, taking over its id (agent install --replace, replicator --replace)")
	return cmd
}

func runTokensCreate(ctx context.Context, g *globals, f tokensCreateFlags) error {
	req := f.req
	req.Role = api.Role(f.role)
	if f.ttl < 0 || f.ttl%time.Second != 0 {
		return usagef("--ttl must be a positive whole number of seconds, like 30m or 24h")
	}
	req.TTLSeconds = int64(f.ttl / time.Second)
	if err := req.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	resp, err := c.CreateToken(ctx, req)
	if err != nil {
		return err
	}
	if g.output == "json" {
		return g.show(resp, nil)
	}
	fmt.Fprintln(g.stdout, resp.Secret)
	t := resp.Token
	exp := "never"
	if t.ExpiresAt != nil {
		exp = t.ExpiresAt.Local().Format(time.RFC3339)
	}
	fmt.Fprintf(g.stderr, "token %s (%s%s) expires %s; the secret above is shown only this once\n",
		t.ID, t.Kind, map[bool]string{true: ", role " + string(t.Role), false: ", scope " + t.Scope}[t.Kind == api.TokenAPI], exp)
	return nil
}

func newTokensListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List tokens (never their secrets)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runTokensList(cmd.Context(), g) },
	}
}

func runTokensList(ctx context.Context, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	ts, err := c.Tokens(ctx)
	if err != nil {
		return err
	}
	return g.show(ts, func(w *tabwriter.Writer) {
		row(w, "ID", "KIND", "ROLE/SCOPE", "USES", "EXPIRES", "STATUS", "DESCRIPTION")
		for _, t := range ts.Items {
			uses := fmt.Sprint(t.Uses)
			if t.UsesLeft != nil {
				uses += fmt.Sprintf("/%d", t.Uses+*t.UsesLeft)
			}
			rs := string(t.Role)
			if t.Kind == api.TokenInstall {
				rs = t.Scope
			}
			exp, status := tokenStatus(t)
			row(w, t.ID, t.Kind, rs, uses, exp, status, orDash(t.Description))
		}
	})
}

// tokenStatus returns when a token expires and whether it is active, expired, used up
// or revoked.
func tokenStatus(t api.Token) (expires, status string) {
	expires, status = "never", "active"
	if t.ExpiresAt != nil {
		expires = t.ExpiresAt.Local().Format("2006-01-02 15:04")
		if time.Now().After(*t.ExpiresAt) {
			status = "expired"
		}
	}
	if t.UsesLeft != nil && *t.UsesLeft == 0 {
		status = "used up"
	}
	if t.RevokedAt != nil {
		status = "revoked"
	}
	return expires, status
}

func newTokensRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token at once", Args: exactArgs(1, "a token id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runTokensRevoke(cmd.Context(), g, args[0]) },
	}
}

func runTokensRevoke(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	if err := c.RevokeToken(ctx, id); err != nil {
		return err
	}
	fmt.Fprintf(g.stderr, "token %s revoked\n", id)
	return nil
}
