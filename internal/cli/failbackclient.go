package cli

import (
	"fmt"
	"net/url"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/rescue"
)

func newFailbackClientCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "failback-client",
		Short: "The failback client: restore a recovery point onto this machine's disk (run from rescue media)",
	}
	cmd.AddCommand(newFailbackClientBuildISOCmd(g), newFailbackClientDisksCmd(g))
	addFailbackClientRun(cmd, g)
	return cmd
}

type buildISOFlags struct {
	out, kernel, initrd, busybox string
	server, tokenFile            string
	append                       []string
}

func newFailbackClientBuildISOCmd(g *globals) *cobra.Command {
	var f buildISOFlags
	cmd := &cobra.Command{
		Use:   "build-iso --out FILE [--server URL] [--token-file FILE|-] [--append WORD]...",
		Short: "Make bootable rescue media (BIOS) that runs the failback client on a machine whose OS is gone",
		Long: `Make a hybrid ISO (a CD, or a disk image to write onto a USB stick) that boots with
BIOS: a Debian kernel and initrd, busybox and this lifeboat binary. Booted, it brings up
the disks and the network (DHCP) and runs lifeboat failback-client, then reboots into
the restored OS. --server and --token-file put the control plane's URL and a failback
token on the media's kernel command line; without a token the client asks for one on
the console. It needs xorriso, isolinux and syslinux-common (Debian packages), a kernel
in /boot (linux-image-amd64) and a static busybox (busybox-static). See
docs/failback-client.md.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBuildISO(cmd, g, &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.out, "out", "", "the ISO file to write (mode 0600)")
	fl.StringVar(&f.kernel, "kernel", "", "a Debian kernel (default: the newest /boot/vmlinuz-* with its initrd)")
	fl.StringVar(&f.initrd, "initrd", "", "the kernel's initrd (default: /boot/initrd.img-VERSION beside --kernel)")
	fl.StringVar(&f.busybox, "busybox", "/bin/busybox", "a statically linked busybox (Debian package busybox-static)")
	// These two shadow the global flags: the media's server is the URL the machine being
	// restored reaches, and its token a failback token, whatever LIFEBOAT_SERVER and
	// LIFEBOAT_TOKEN hold here.
	fl.StringVar(&f.server, "server", "", "the control plane's URL as the machine booting the media reaches it")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding a failback token to put on the media; - reads one line from stdin")
	fl.StringArrayVar(&f.append, "append", nil, "one more kernel command-line word, e.g. lifeboat.disk=sda (repeatable)")
	return cmd
}

// isoResult is what build-iso prints.
type isoResult struct {
	Path      string `json:"path"`
	SizeBytes int64  `json:"sizeBytes"`
}

func runBuildISO(cmd *cobra.Command, g *globals, f *buildISOFlags) error {
	if f.out == "" {
		return usagef("build-iso needs --out FILE, the ISO to write")
	}
	if cmd.Flags().Changed("token") {
		return usagef("build-iso takes the failback token with --token-file FILE or --token-file -, not --token")
	}
	args, err := f.kernelArgs(g)
	if err != nil {
		return err
	}
	err = rescue.BuildISO(cmd.Context(), rescue.ISOOptions{
		Out: f.out, Kernel: f.kernel, Initrd: f.initrd, Busybox: f.busybox, KernelArgs: args,
		Progress: func(step string) { fmt.Fprintf(g.stderr, "build-iso: %s\n", step) },
	})
	if err != nil {
		return err
	}
	st, err := os.Stat(f.out)
	if err != nil {
		return err
	}
	return g.show(isoResult{Path: f.out, SizeBytes: st.Size()}, func(w *tabwriter.Writer) {
		row(w, f.out, bytesText(st.Size()))
	})
}

// kernelArgs are the media's kernel command-line words: the server, the token, then
// --append's, in that order.
func (f *buildISOFlags) kernelArgs(g *globals) ([]string, error) {
	var args []string
	if f.server != "" {
		u, err := url.Parse(f.server)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, usagef("--server %q is not a URL such as https://10.0.0.5:8443", f.server)
		}
		args = append(args, "lifeboat.server="+f.server)
	}
	if f.tokenFile != "" {
		tok, err := g.readSecret(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		args = append(args, "lifeboat.token="+tok)
		fmt.Fprintln(g.stderr, "lifeboat: warning: the ISO holds the failback token on its kernel command line, in clear: "+
			"whoever reads the ISO file or the copy written from it, or sees the machine's boot console, has it. "+
			"The file is written mode 0600. Failback tokens are good for one use and expire soon: "+
			"build the media just before it boots, and delete it afterwards.")
	}
	args = append(args, f.append...)
	if err := rescue.ValidateKernelArgs(args); err != nil {
		return nil, &UsageError{Err: err}
	}
	return args, nil
}

func newFailbackClientDisksCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "disks", Short: "List this machine's disks, which a recovery point can be written onto", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runFailbackClientDisks(g) },
	}
}

// diskList is what disks prints with -o json.
type diskList struct {
	Items []rescue.Disk `json:"items"`
}

func runFailbackClientDisks(g *globals) error {
	disks, err := rescue.Disks()
	if err != nil {
		return err
	}
	return g.show(diskList{Items: disks}, func(w *tabwriter.Writer) {
		row(w, "NAME", "SIZE", "MODEL", "RO")
		for _, d := range disks {
			row(w, d.Name, fmt.Sprintf("%s (%d)", bytesText(d.SizeBytes), d.SizeBytes), orDash(d.Model), yesNo(d.ReadOnly))
		}
	})
}
