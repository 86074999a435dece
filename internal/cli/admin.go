package cli

import (
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
)

func newAccountsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "accounts", Short: "Accounts (tenants), their quotas and staging stores"}
	cmd.AddCommand(newAccountsListCmd(g), newAccountsDescribeCmd(g), newAccountsCreateCmd(g),
		newAccountsUpdateCmd(g), newAccountsSetQuotaCmd(g))
	return cmd
}

// accountsTable prints accounts, one a row, with the first of their staging stores.
func accountsTable(items []api.Account) func(w *tabwriter.Writer) {
	return func(w *tabwriter.Writer) {
		row(w, "ID", "NAME", "REPLICATING", "QUOTA", "SYSTEM", "STAGING STORE")
		for _, a := range items {
			store := "-"
			if len(a.StagingStores) > 0 {
				store = a.StagingStores[0].URL
				if n := len(a.StagingStores) - 1; n > 0 {
					store += fmt.Sprintf(" (+%d)", n)
				}
			}
			row(w, a.ID, a.Name, a.ReplicatingSourceServers, a.QuotaSourceServers, yesNo(a.System), store)
		}
	}
}

// accountFlags are the flags of accounts create and update.
type accountFlags struct {
	quota     int
	storeURL  string
	s3FromEnv bool
}

// register adds the flags to cmd; storeHelp is the help text of --staging-store.
func (f *accountFlags) register(cmd *cobra.Command, storeHelp string) {
	fl := cmd.Flags()
	fl.IntVar(&f.quota, "quota", api.DefaultQuotaSourceServers, "replicating source servers allowed")
	fl.StringVar(&f.storeURL, "staging-store", "", storeHelp)
	fl.BoolVar(&f.s3FromEnv, "s3-credentials-from-env", false,
		"give the staging store its own S3 credentials, read from LIFEBOAT_S3_ACCESS_KEY and LIFEBOAT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
}

// credentials are the staging store's own S3 credentials, from the environment with
// --s3-credentials-from-env, else none.
func (f *accountFlags) credentials() (*api.S3Credentials, error) {
	if !f.s3FromEnv {
		return nil, nil
	}
	access, secret, err := backendurl.Credentials(os.LookupEnv)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	return &api.S3Credentials{AccessKey: access, SecretKey: secret}, nil
}

func newAccountsListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List all accounts (system admins)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAccountsList(cmd, g) },
	}
}

func runAccountsList(cmd *cobra.Command, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	as, err := c.Accounts(cmd.Context())
	if err != nil {
		return err
	}
	return g.show(as, accountsTable(as.Items))
}

func newAccountsDescribeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "describe", Short: "Show your account and its staging stores", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAccountsDescribe(cmd, g) },
	}
}

func runAccountsDescribe(cmd *cobra.Command, g *globals) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	a, err := c.Account(cmd.Context())
	if err != nil {
		return err
	}
	return g.show(a, accountsTable([]api.Account{a}))
}

func newAccountsCreateCmd(g *globals) *cobra.Command {
	var f accountFlags
	cmd := &cobra.Command{
		Use: "create NAME", Short: "Create an account with its own staging store; prints its first admin token", Args: exactArgs(1, "an account name"),
		Long: `Create an account (system admins). It gets its own staging store: --staging-store, or by
default the control plane's default store with the account id appended. Its key, kept by the
control plane, opens its stores and no other account's.`,
		RunE: func(cmd *cobra.Command, args []string) error { return runAccountsCreate(cmd, g, args[0], &f) },
	}
	f.register(cmd, "the account's staging store URL (default: the control plane's default store with the account id appended)")
	return cmd
}

func runAccountsCreate(cmd *cobra.Command, g *globals, name string, f *accountFlags) error {
	req := api.CreateAccountRequest{Name: name, StagingStoreURL: f.storeURL}
	if cmd.Flags().Changed("quota") {
		req.QuotaSourceServers = &f.quota
	}
	var err error
	if req.StagingStoreCredentials, err = f.credentials(); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	resp, err := c.CreateAccount(cmd.Context(), req)
	if err != nil {
		return err
	}
	if g.output == "json" {
		return g.show(resp, nil)
	}
	fmt.Fprintln(g.stdout, resp.AdminToken)
	fmt.Fprintf(g.stderr, "account %s (%s) created; above is its admin token, shown only this once\n", resp.Account.Name, resp.Account.ID)
	return nil
}

func newAccountsUpdateCmd(g *globals) *cobra.Command {
	var f accountFlags
	cmd := &cobra.Command{
		Use:   "update ACCOUNT-ID [--staging-store URL] [--quota N]",
		Short: "Give an account a staging store (its template's from now on) or change its quota (system admins)",
		Long: `Change an account (system admins). --staging-store gives the account that store, if it has it
not yet, and makes it the store of its replication template; "default" names the account's
default store. A store belongs to one account; the account's earlier stores stay its own, so
their recovery snapshots stay readable. With --s3-credentials-from-env the store gets its own
S3 credentials, which the control plane keeps wrapped by its master key and gives only to the
account's replicators.`,
		Args: exactArgs(1, "an account id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runAccountsUpdate(cmd, g, args[0], &f) },
	}
	f.register(cmd, `staging store URL to give the account, or "default"`)
	return cmd
}

func runAccountsUpdate(cmd *cobra.Command, g *globals, id string, f *accountFlags) error {
	var req api.UpdateAccountRequest
	if cmd.Flags().Changed("quota") {
		req.QuotaSourceServers = &f.quota
	}
	if cmd.Flags().Changed("staging-store") {
		req.StagingStoreURL = &f.storeURL
	}
	var err error
	if req.StagingStoreCredentials, err = f.credentials(); err != nil {
		return err
	}
	return updateAccount(cmd, g, id, req)
}

func newAccountsSetQuotaCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "set-quota ACCOUNT-ID N", Short: "Change how many replicating source servers an account may have (system admins)",
		Args: exactArgs(2, "an account id and a number"),
		RunE: func(cmd *cobra.Command, args []string) error { return runAccountsSetQuota(cmd, g, args[0], args[1]) },
	}
}

func runAccountsSetQuota(cmd *cobra.Command, g *globals, id, quota string) error {
	n, err := strconv.Atoi(quota)
	if err != nil {
		return usagef("the quota %q is not a number", quota)
	}
	return updateAccount(cmd, g, id, api.UpdateAccountRequest{QuotaSourceServers: &n})
}

// updateAccount sends req, checked, and shows the account as it is now.
func updateAccount(cmd *cobra.Command, g *globals, id string, req api.UpdateAccountRequest) error {
	if err := req.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	a, err := c.UpdateAccount(cmd.Context(), id, req)
	if err != nil {
		return err
	}
	return g.show(a, accountsTable([]api.Account{a}))
}

func newSitesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "sites", Short: "Sites: locations with staging storage, replicators and a launch provider"}
	list := &cobra.Command{
		Use: "list", Short: "List sites", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ss, err := c.Sites(cmd.Context())
			if err != nil {
				return err
			}
			return g.show(ss, func(w *tabwriter.Writer) {
				row(w, "ID", "DESCRIPTION", "CREATED")
				for _, s := range ss.Items {
					row(w, s.ID, orDash(s.Description), s.CreatedAt.Local().Format(time.RFC3339))
				}
			})
		},
	}
	var desc string
	create := &cobra.Command{
		Use: "create ID", Short: "Create a site", Args: exactArgs(1, "a site id (a name you choose)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.CreateSiteRequest{ID: args[0], Description: desc}
			if err := req.Validate(); err != nil {
				return &UsageError{Err: err}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			s, err := c.CreateSite(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.show(s, func(w *tabwriter.Writer) { row(w, "site", s.ID, "created") })
		},
	}
	create.Flags().StringVar(&desc, "description", "", "what and where the site is")
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a site nothing uses", Args: exactArgs(1, "a site id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteSite(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "site %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, create, del)
	return cmd
}

func newReplicatorsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "replicators", Short: "Replication servers registered with the control plane"}
	table := func(items []api.Replicator) func(w *tabwriter.Writer) {
		return func(w *tabwriter.Writer) {
			row(w, "ID", "NAME", "SITE", "ADDRESS", "STATE", "SERVERS", "CPU", "RSS", "LAST HEARTBEAT")
			for _, r := range items {
				hb := "never"
				if r.LastHeartbeatAt != nil {
					hb = r.LastHeartbeatAt.Local().Format("2006-01-02 15:04:05")
				}
				row(w, r.ID, r.Name, r.SiteID, r.Address, r.State, r.AssignedSourceServers,
					fmt.Sprintf("%.0f%%", r.Metrics.CPUPercent), bytesText(r.Metrics.RSSBytes), hb)
			}
		}
	}
	list := &cobra.Command{
		Use: "list", Short: "List replicators", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			rs, err := c.Replicators(cmd.Context())
			if err != nil {
				return err
			}
			return g.show(rs, table(rs.Items))
		},
	}
	describe := &cobra.Command{
		Use: "describe ID", Short: "Show a replicator", Args: exactArgs(1, "a replicator id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.Replicator(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.show(r, table([]api.Replicator{r}))
		},
	}
	del := &cobra.Command{
		Use: "delete ID", Short: "Delete a replicator; its source servers move to others", Args: exactArgs(1, "a replicator id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DeleteReplicator(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stderr, "replicator %s deleted\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, describe, del)
	return cmd
}

func newAuditCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The audit log: who changed what, when (admins)"}
	var f api.AuditFilter
	list := &cobra.Command{
		Use: "list", Short: "List audit entries, newest first", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.Limit < 1 || f.Limit > api.MaxPageSize {
				return usagef("--limit must be 1 to %d", api.MaxPageSize)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			page, err := c.Audit(cmd.Context(), f)
			if err != nil {
				return err
			}
			return g.show(page, func(w *tabwriter.Writer) {
				row(w, "TIME", "ACTOR", "ACTION", "TARGET")
				for _, e := range page.Items {
					row(w, e.Time.Local().Format("2006-01-02 15:04:05"), e.ActorKind+":"+e.ActorID, e.Action, e.TargetKind+":"+e.TargetID)
				}
			})
		},
	}
	fl := list.Flags()
	fl.StringVar(&f.TargetID, "target", "", "only entries about this id")
	fl.StringVar(&f.Action, "action", "", "only this action, e.g. source-server.register")
	fl.IntVar(&f.Limit, "limit", 50, "how many entries")
	fl.StringVar(&f.PageToken, "page-token", "", "continue after a previous page (its nextPageToken)")
	cmd.AddCommand(list)
	return cmd
}

func newEventsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "events", Short: "Follow the event stream: one line per change, until interrupted", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var last int64
			for {
				err := c.Events(cmd.Context(), last, func(ev api.Event) error {
					if ev.Seq > 0 {
						last = ev.Seq
					}
					if g.output == "json" {
						return g.show(ev, nil)
					}
					fmt.Fprintf(g.stdout, "%s  %-40s %s:%s\n", ev.Time.Local().Format("15:04:05.000"), ev.Type, ev.TargetKind, ev.TargetID)
					return nil
				})
				if cmd.Context().Err() != nil {
					return nil
				}
				if err != nil {
					return err
				}
				select { // the server ended the stream: reconnect
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		},
	}
}
