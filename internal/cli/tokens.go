package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newTokensCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tokens", Short: "Create, list and revoke API and install tokens"}
	var req api.CreateTokenRequest
	var role string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --kind install|api",
		Short: "Create a token; its secret is printed once",
		Long: `Create a token. An install token (default lifetime 1 hour) registers machines:
--scope source-server (default) for agents, replicator for replicators. It cannot
re-register a machine id or replicator name that is registered already (that takes over
its identity) unless made with --allow-replace: use that for one reinstall, with --uses 1.
An API token carries a role: admin, operator or viewer.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req.Role = api.Role(role)
			if ttl < 0 || ttl%time.Second != 0 {
				return usagef("--ttl must be a positive whole number of seconds, like 30m or 24h")
			}
			req.TTLSeconds = int64(ttl / time.Second)
			if err := req.Validate(); err != nil {
				return &UsageError{Err: err}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			resp, err := c.CreateToken(cmd.Context(), req)
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
		},
	}
	fl := create.Flags()
	fl.StringVar(&req.Kind, "kind", "", "install or api (required)")
	fl.StringVar(&role, "role", "", "role of an API token: admin, operator or viewer")
	fl.StringVar(&req.Scope, "scope", "", "what an install token registers: source-server (default) or replicator")
	fl.DurationVar(&ttl, "ttl", 0, "lifetime (default 1h for install tokens, none for API tokens)")
	fl.IntVar(&req.Uses, "uses", 0, "how many registrations an install token allows (0: unlimited)")
	fl.StringVar(&req.Description, "description", "", "what the token is for")
	fl.BoolVar(&req.AllowReplace, "allow-replace", false, "an install token that may re-register a machine or replicator registered already, taking over its id (agent install --replace, replicator --replace)")

	list := &cobra.Command{
		Use: "list", Short: "List tokens (never their secrets)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ts, err := c.Tokens(cmd.Context())
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
					exp, status := "never", "active"
					if t.ExpiresAt != nil {
						exp = t.ExpiresAt.Local().Format("2006-01-02 15:04")
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
					rs := string(t.Role)
					if t.Kind == api.TokenInstall {
						rs = t.Scope
					}
					row(w, t.ID, t.Kind, rs, uses, exp, status, orDash(t.Description))
				}
			})
		},
	}
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token at once", Args: exactArgs(1, "a token id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "token %s revoked\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
