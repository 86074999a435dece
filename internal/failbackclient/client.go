// Package failbackclient is the failback client (docs/failback-client.md): run on a
// machine booted from Lifeboat's rescue media (or any rescue system), it registers with
// an install token of scope failback, reports the machine's disks, waits for a failback
// job to assign it one, and makes that disk equal to the job's image: it sends the
// hashes of its blocks and writes only the blocks that differ. The disk is unbootable
// while it is written: its first block is zeroed first and written last, after
// everything else is synced.
package failbackclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/pki"
)

// Options configure a run.
type Options struct {
	Server   string // the control plane's URL
	Token    string // an install token of scope failback (lbi_…): it carries the control plane's pin
	Hostname string
	// Disks are the machine's disks that may be written, and DevDir where their device
	// files are (default /dev): the assigned disk is DevDir/NAME.
	Disks  []api.FailbackDisk
	DevDir string
	Poll   time.Duration // between two asks for an assignment (default 3 s)
	Out    io.Writer     // what an operator at the console reads (default: nowhere)
	Logger *slog.Logger
}

// Run registers the client, waits for its assignment and writes it. It returns nil once
// the disk is complete and synced (the machine may reboot into it).
func Run(ctx context.Context, o Options) error {
	if o.DevDir == "" {
		o.DevDir = "/dev"
	}
	if o.Poll <= 0 {
		o.Poll = 3 * time.Second
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	tok, err := pki.ParseToken(o.Token)
	if err != nil || !tok.Install {
		return errors.New("the failback client needs an install token of scope failback (lbi_…): lifeboat tokens create --kind install --scope failback --uses 1")
	}
	reg, err := api.NewClient(api.ClientConfig{Server: o.Server, Token: o.Token, Pin: tok.Pin, UserAgent: "lifeboat-failback-client"})
	if err != nil {
		return err
	}
	defer reg.Close()
	resp, err := reg.RegisterFailbackClient(ctx, api.RegisterFailbackClientRequest{Hostname: o.Hostname, Disks: o.Disks})
	if err != nil {
		return fmt.Errorf("register with the control plane: %w", err)
	}
	c, err := api.NewClient(api.ClientConfig{Server: o.Server, Pin: tok.Pin, UserAgent: "lifeboat-failback-client",
		FailbackClient: resp.Client.ID + " " + resp.Secret, Timeout: 5 * time.Minute})
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(o.Out, "registered as failback client %s with %d disks\n", resp.Client.ID, len(o.Disks))
	fmt.Fprintf(o.Out, "waiting for: lifeboat failback launch RECOVERY-INSTANCE --into %s [--disk NAME]\n", resp.Client.ID)
	a, err := waitAssignment(ctx, c, o.Poll)
	if err != nil {
		return err
	}
	w := &writer{c: c, a: a, out: o.Out, log: o.Logger, path: filepath.Join(o.DevDir, filepath.Base(a.Disk))}
	return w.run(ctx)
}

// waitAssignment asks for the client's assignment until there is one.
func waitAssignment(ctx context.Context, c *api.Client, poll time.Duration) (api.FailbackAssignment, error) {
	for {
		self, err := c.FailbackClientSelf(ctx)
		var ae *api.Error
		switch {
		case err == nil && self.Assignment != nil && (self.Progress == nil || !self.Progress.Done):
			return *self.Assignment, nil
		case errors.As(err, &ae) && ae.Status == 401:
			return api.FailbackAssignment{}, err // unregistered: nothing to wait for
		}
		select {
		case <-ctx.Done():
			return api.FailbackAssignment{}, ctx.Err()
		case <-time.After(poll):
		}
	}
}
