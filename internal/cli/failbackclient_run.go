package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/failbackclient"
	"github.com/lifeboat-dr/lifeboat/internal/rescue"
)

// failbackClientFlags are the flags of failback-client (the client itself).
type failbackClientFlags struct {
	disk, device string
	poll         time.Duration
}

// addFailbackClientRun makes the failback-client command run the client (its
// subcommands build the media and list disks).
func addFailbackClientRun(cmd *cobra.Command, g *globals) {
	var f failbackClientFlags
	cmd.Use = "failback-client [--server URL --token-file F] [--disk NAME | --device PATH]"
	cmd.Long = `Run the failback client on a machine booted from Lifeboat's rescue media (build-iso) or
any rescue system: it registers with the control plane with an install token of scope
failback (lifeboat tokens create --kind install --scope failback --uses 1; asked for on
the console when none is given), reports the machine's disks and waits. On the control
plane, lifeboat failback launch RI --into FAILBACK-CLIENT writes the recovery instance's
final consistency point onto one of them: this client sends the hashes of the disk's
blocks and writes only the blocks that differ. The disk is unbootable until the write is
complete (its first block is written last); the client exits 0 then (the rescue media
reboot into the restored OS). See docs/failback-client.md.`
	cmd.Args = noArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return runFailbackClient(cmd, g, f) }
	fl := cmd.Flags()
	fl.StringVar(&f.disk, "disk", "", "offer only this disk (kernel name, such as sda)")
	fl.StringVar(&f.device, "device", "", "offer only this block device or image file (another rescue system's disks, or tests)")
	fl.DurationVar(&f.poll, "poll", 3*time.Second, "how often to ask for an assignment")
	cmd.AddCommand(newFailbackClientListCmd(g))
}

func runFailbackClient(cmd *cobra.Command, g *globals, f failbackClientFlags) error {
	if g.server == "" {
		return usagef("failback-client needs --server URL (the control plane, as this machine reaches it)")
	}
	if g.token == "" {
		t, err := g.promptSecret("failback token (lbi_…): ", "failback-client needs an install token of scope failback: --token-file FILE, --token-file - or env "+envToken)
		if err != nil {
			return err
		}
		g.token = t
	}
	disks, devDir, err := offeredDisks(f)
	if err != nil {
		return err
	}
	hostname, _ := os.Hostname()
	if hostname == "" {
		hostname = "rescue"
	}
	return failbackclient.Run(cmd.Context(), failbackclient.Options{Server: g.server, Token: g.token, Hostname: hostname,
		Disks: disks, DevDir: devDir, Poll: f.poll, Out: g.stdout, Logger: g.logger})
}

// offeredDisks are the disks the client reports, and the directory of their devices.
func offeredDisks(f failbackClientFlags) ([]api.FailbackDisk, string, error) {
	if f.device != "" {
		file, err := os.Open(f.device)
		if err != nil {
			return nil, "", fmt.Errorf("--device: %w", err)
		}
		defer file.Close()
		size, err := file.Seek(0, 2)
		if err != nil {
			return nil, "", fmt.Errorf("--device %s: %w", f.device, err)
		}
		return []api.FailbackDisk{{Name: filepath.Base(f.device), SizeBytes: size}}, filepath.Dir(f.device), nil
	}
	all, err := rescue.Disks()
	if err != nil {
		return nil, "", err
	}
	var out []api.FailbackDisk
	for _, d := range all {
		if d.ReadOnly || (f.disk != "" && d.Name != f.disk) {
			continue
		}
		out = append(out, api.FailbackDisk{Name: d.Name, SizeBytes: d.SizeBytes, Model: d.Model})
	}
	if len(out) == 0 {
		return nil, "", fmt.Errorf("no writable disk to offer (--disk %q): see lifeboat failback-client disks", f.disk)
	}
	return out, "/dev", nil
}

func newFailbackClientListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "list", Short: "List the failback clients registered with the control plane (operators)", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			defer c.Close()
			l, err := c.FailbackClients(cmd.Context())
			if err != nil {
				return err
			}
			return g.show(l, func(w *tabwriter.Writer) {
				row(w, "ID", "HOSTNAME", "DISKS", "ASSIGNED", "LAST SEEN")
				for _, fc := range l.Items {
					assigned := "-"
					if fc.Assignment != nil {
						assigned = fc.Assignment.Disk + " (job " + fc.Assignment.JobID + ")"
					}
					row(w, fc.ID, fc.Hostname, fmt.Sprint(len(fc.Disks)), assigned, fc.LastSeenAt.Local().Format(time.RFC3339))
				}
			})
		},
	}
}
