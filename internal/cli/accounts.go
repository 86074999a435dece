package cli

import (
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"

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
