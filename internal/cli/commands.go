package cli

import "github.com/spf13/cobra"

// commandList returns the constructors of the top-level commands, in help order.
// Each lives in its own file of this package.
func commandList() []func(*globals) *cobra.Command {
	return []func(*globals) *cobra.Command{
		newUpCmd,
		newServerCmd,
		newReplicatorCmd,
		newAgentCmd,
		newSourceServersCmd,
		newReplicationCmd,
		newSnapshotsCmd,
		newGroupsCmd,
		newExportCmd,
		newSettingsCmd,
		newDrillCmd,
		newRecoverCmd,
		newJobsCmd,
		newRecoveryInstancesCmd,
		newInstancesCmd,
		newFailbackCmd,
		newFailbackClientCmd,
		newPlanCmd,
		newTokensCmd,
		newReplicatorsCmd,
		newSitesCmd,
		newAccountsCmd,
		newAuditCmd,
		newEventsCmd,
		newStoreCmd,
	}
}
