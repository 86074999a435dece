package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func newSettingsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "settings", Short: "Replication settings (account template and per-server overrides) and launch settings"}
	repl := &cobra.Command{Use: "replication", Short: "Replication settings: the account template, or a server's overrides with --server-id"}
	repl.AddCommand(newReplicationGetCmd(g), newReplicationSetCmd(g))
	launch := &cobra.Command{Use: "launch", Short: "Launch settings of a source server"}
	launch.AddCommand(newLaunchGetCmd(g), newLaunchSetCmd(g))
	cmd.AddCommand(repl, launch)
	return cmd
}

func newReplicationGetCmd(g *globals) *cobra.Command {
	var serverID string
	cmd := &cobra.Command{
		Use: "get", Short: "Show the template, or a server's overrides and effective settings", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runReplicationGet(cmd.Context(), g, serverID) },
	}
	cmd.Flags().StringVar(&serverID, "server-id", "", "show this source server's settings instead of the template")
	return cmd
}

func runReplicationGet(ctx context.Context, g *globals, serverID string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	if serverID == "" {
		s, err := c.ReplicationTemplate(ctx)
		if err != nil {
			return err
		}
		return g.show(s, func(w *tabwriter.Writer) { settingsTable(w, s, nil) })
	}
	s, err := c.ServerReplicationSettings(ctx, serverID)
	if err != nil {
		return err
	}
	return g.show(s, func(w *tabwriter.Writer) { settingsTable(w, s.Effective, &s.Overrides) })
}

// replicationFlags are the settings flags; only those given change anything.
type replicationFlags struct {
	site, compression, store, dedicated, rules string
	bandwidth, dailyRetention                  int
	interval, freezeTimeout, keepPoints        time.Duration
	inherit                                    []string
	ignoreNewDisks                             bool
}

func (f *replicationFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.site, "target-site", "", "site that receives the replica")
	fl.IntVar(&f.bandwidth, "bandwidth-mbps", 0, "bandwidth limit in Mbit/s (0: unlimited)")
	fl.DurationVar(&f.interval, "consistency-interval", 0, "time between consistency points (whole seconds, e.g. 10s)")
	fl.DurationVar(&f.freezeTimeout, "freeze-timeout", 0, "longest filesystem freeze (e.g. 200ms)")
	fl.StringVar(&f.compression, "compression", "", "s2, zstd or none")
	fl.StringVar(&f.store, "staging-store", "", "staging store URL: file:///dir or s3://bucket/prefix?endpoint=host:port")
	fl.StringVar(&f.dedicated, "dedicated-replicator", "", "replicator name to use for the server(s); empty: automatic")
	fl.BoolVar(&f.ignoreNewDisks, "ignore-new-disks", false, "do not replicate disks that appear later (default: they are picked up)")
	fl.StringVar(&f.rules, "pit-rules", "", "PIT rules UNITS:INTERVAL:RETENTION, comma-separated (default MINUTE:10:60,HOUR:1:24,DAY:1:7)")
	fl.IntVar(&f.dailyRetention, "daily-retention", 0, "days daily PITs are kept (1-365)")
	fl.DurationVar(&f.keepPoints, "keep-consistency-points", 0, "how long every consistency point is kept (whole minutes, e.g. 60m)")
	fl.StringSliceVar(&f.inherit, "inherit", nil, "with --server-id: drop these overrides so the template applies (flag names, or all)")
}

// parseRules parses --pit-rules.
func parseRules(s string) ([]api.PITRule, error) {
	var out []api.PITRule
	for _, part := range strings.Split(s, ",") {
		f := strings.Split(strings.TrimSpace(part), ":")
		if len(f) != 3 {
			return nil, usagef("--pit-rules entry %q must be UNITS:INTERVAL:RETENTION, like HOUR:1:24", part)
		}
		iv, err1 := strconv.Atoi(f[1])
		rd, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			return nil, usagef("--pit-rules entry %q needs whole numbers for interval and retention", part)
		}
		out = append(out, api.PITRule{Units: strings.ToUpper(f[0]), Interval: iv, RetentionDuration: rd})
	}
	return out, nil
}

// apply applies the flags that were given to s (effective or template) and, for a
// server, records them as overrides in o.
func (f *replicationFlags) apply(fl *pflag.FlagSet, s *api.ReplicationSettings, o *api.ReplicationSettingsOverrides) error {
	changed := fl.Changed
	if changed("consistency-interval") && (f.interval%time.Second != 0 || f.interval <= 0) {
		return usagef("--consistency-interval must be a whole number of seconds, like 10s")
	}
	if changed("freeze-timeout") && (f.freezeTimeout%time.Millisecond != 0 || f.freezeTimeout <= 0) {
		return usagef("--freeze-timeout must be a whole number of milliseconds, like 200ms")
	}
	if changed("keep-consistency-points") && (f.keepPoints%time.Minute != 0 || f.keepPoints < 0) {
		return usagef("--keep-consistency-points must be a whole number of minutes, like 60m")
	}
	pitChanged := false
	if changed("pit-rules") {
		rules, err := parseRules(f.rules)
		if err != nil {
			return err
		}
		s.PITPolicy.Rules, pitChanged = rules, true
	}
	if changed("daily-retention") {
		found := false
		for i := range s.PITPolicy.Rules {
			if s.PITPolicy.Rules[i].Units == api.UnitDay {
				s.PITPolicy.Rules[i].RetentionDuration, found = f.dailyRetention, true
			}
		}
		if !found {
			s.PITPolicy.Rules = append(s.PITPolicy.Rules, api.PITRule{Units: api.UnitDay, Interval: 1, RetentionDuration: f.dailyRetention})
		}
		pitChanged = true
	}
	if changed("keep-consistency-points") {
		s.PITPolicy.ConsistencyPointRetentionMinutes, pitChanged = int(f.keepPoints/time.Minute), true
	}
	if o == nil {
		o = &api.ReplicationSettingsOverrides{} // the template has no overrides: they are dropped
	}
	str := func(name, v string, dst *string, ov **string) {
		if changed(name) {
			*dst, *ov = v, &v
		}
	}
	num := func(name string, v int, dst *int, ov **int) {
		if changed(name) {
			*dst, *ov = v, &v
		}
	}
	str("target-site", f.site, &s.TargetSite, &o.TargetSite)
	str("compression", f.compression, &s.Compression, &o.Compression)
	str("staging-store", f.store, &s.StagingStoreURL, &o.StagingStoreURL)
	str("dedicated-replicator", f.dedicated, &s.DedicatedReplicator, &o.DedicatedReplicator)
	num("bandwidth-mbps", f.bandwidth, &s.BandwidthMbps, &o.BandwidthMbps)
	num("consistency-interval", int(f.interval/time.Second), &s.ConsistencyPointIntervalSeconds, &o.ConsistencyPointIntervalSeconds)
	num("freeze-timeout", int(f.freezeTimeout/time.Millisecond), &s.FreezeTimeoutMs, &o.FreezeTimeoutMs)
	if changed("ignore-new-disks") {
		v := f.ignoreNewDisks
		s.IgnoreNewDisks, o.IgnoreNewDisks = v, &v
	}
	if pitChanged {
		p := s.PITPolicy
		o.PITPolicy = &p
	}
	return nil
}

// dropOverrides drops the overrides named by --inherit.
func (f *replicationFlags) dropOverrides(o *api.ReplicationSettingsOverrides) error {
	for _, name := range f.inherit {
		switch name {
		case "all":
			*o = api.ReplicationSettingsOverrides{}
		case "target-site":
			o.TargetSite = nil
		case "bandwidth-mbps":
			o.BandwidthMbps = nil
		case "consistency-interval":
			o.ConsistencyPointIntervalSeconds = nil
		case "freeze-timeout":
			o.FreezeTimeoutMs = nil
		case "compression":
			o.Compression = nil
		case "staging-store":
			o.StagingStoreURL = nil
		case "dedicated-replicator":
			o.DedicatedReplicator = nil
		case "ignore-new-disks":
			o.IgnoreNewDisks = nil
		case "pit-rules", "daily-retention", "keep-consistency-points", "pit-policy":
			o.PITPolicy = nil
		default:
			return usagef("--inherit %q is not a setting: use a flag name such as bandwidth-mbps, or all", name)
		}
	}
	return nil
}

func newReplicationSetCmd(g *globals) *cobra.Command {
	var serverID string
	var f replicationFlags
	cmd := &cobra.Command{
		Use:   "set [--server-id ID] [flags]",
		Short: "Change the template, or a server's overrides with --server-id",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplicationSet(cmd.Context(), g, cmd.Flags(), serverID, &f)
		},
	}
	cmd.Flags().StringVar(&serverID, "server-id", "", "change this source server's overrides instead of the template")
	f.register(cmd.Flags())
	return cmd
}

// runReplicationSet changes the settings flags fl names: the template's, or with
// serverID that server's overrides.
func runReplicationSet(ctx context.Context, g *globals, fl *pflag.FlagSet, serverID string, f *replicationFlags) error {
	if serverID == "" && fl.Changed("inherit") {
		return usagef("--inherit applies to a server's overrides: add --server-id")
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	if serverID == "" {
		return setReplicationTemplate(ctx, g, c, fl, f)
	}
	cur, err := c.ServerReplicationSettings(ctx, serverID)
	if err != nil {
		return err
	}
	o := cur.Overrides
	if err := f.dropOverrides(&o); err != nil {
		return err
	}
	eff := cur.Effective
	if err := f.apply(fl, &eff, &o); err != nil {
		return err
	}
	out, err := c.SetServerReplicationSettings(ctx, serverID, o)
	if err != nil {
		return err
	}
	return g.show(out, func(w *tabwriter.Writer) { settingsTable(w, out.Effective, &out.Overrides) })
}

// setReplicationTemplate changes the account template's settings that fl names.
func setReplicationTemplate(ctx context.Context, g *globals, c *api.Client, fl *pflag.FlagSet, f *replicationFlags) error {
	s, err := c.ReplicationTemplate(ctx)
	if err != nil {
		return err
	}
	if err := f.apply(fl, &s, nil); err != nil {
		return err
	}
	if err := s.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	out, err := c.SetReplicationTemplate(ctx, s)
	if err != nil {
		return err
	}
	return g.show(out, func(w *tabwriter.Writer) { settingsTable(w, out, nil) })
}

// settingsTable prints settings; with overrides, marks the overridden ones.
func settingsTable(w *tabwriter.Writer, s api.ReplicationSettings, o *api.ReplicationSettingsOverrides) {
	mark := func(set bool) string {
		if o != nil && set {
			return "(override)"
		}
		return ""
	}
	var ov api.ReplicationSettingsOverrides
	if o != nil {
		ov = *o
	}
	bw := "unlimited"
	if s.BandwidthMbps > 0 {
		bw = fmt.Sprintf("%d Mbit/s", s.BandwidthMbps)
	}
	row(w, "Target site:", s.TargetSite, mark(ov.TargetSite != nil))
	row(w, "Bandwidth limit:", bw, mark(ov.BandwidthMbps != nil))
	row(w, "Consistency points every:", (time.Duration(s.ConsistencyPointIntervalSeconds) * time.Second).String(), mark(ov.ConsistencyPointIntervalSeconds != nil))
	row(w, "Freeze timeout:", (time.Duration(s.FreezeTimeoutMs) * time.Millisecond).String(), mark(ov.FreezeTimeoutMs != nil))
	row(w, "Compression:", s.Compression, mark(ov.Compression != nil))
	row(w, "Staging store:", s.StagingStoreURL, mark(ov.StagingStoreURL != nil))
	row(w, "Dedicated replicator:", orDash(s.DedicatedReplicator), mark(ov.DedicatedReplicator != nil))
	row(w, "New disks:", map[bool]string{false: "replicated", true: "ignored"}[s.IgnoreNewDisks], mark(ov.IgnoreNewDisks != nil))
	row(w, "Keep every consistency point:", (time.Duration(s.PITPolicy.ConsistencyPointRetentionMinutes) * time.Minute).String(), mark(ov.PITPolicy != nil))
	for _, r := range s.PITPolicy.Rules {
		unit := strings.ToLower(r.Units)
		row(w, "PIT rule:", fmt.Sprintf("one every %d %s, kept %d %s", r.Interval, api.Plural(unit, r.Interval), r.RetentionDuration, api.Plural(unit, r.RetentionDuration)), mark(ov.PITPolicy != nil))
	}
}

func newLaunchGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "get ID", Short: "Show a source server's launch settings", Args: exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error { return runLaunchGet(cmd.Context(), g, args[0]) },
	}
}

func runLaunchGet(ctx context.Context, g *globals, id string) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	l, err := c.LaunchSettings(ctx, id)
	if err != nil {
		return err
	}
	return g.show(l, func(w *tabwriter.Writer) { launchTable(w, l.Settings) })
}

// launchFlags are the launch settings flags; only those given change anything. List
// flags replace the whole list.
type launchFlags struct {
	provider, network, bridge, ip, hostname, boot, target string
	kernelArgs, diskFormat, imageDir                      string
	imageDevices                                          []string
	cpus, memory                                          int
	start, copyTags, instant                              bool
	forwards, tags, actions, clear                        []string
}

func newLaunchSetCmd(g *globals) *cobra.Command {
	var f launchFlags
	cmd := &cobra.Command{
		Use:   "set ID [flags]",
		Short: "Change a source server's launch settings",
		Args:  exactArgs(1, "a source server id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runLaunchSet(cmd.Context(), g, cmd.Flags(), args[0], &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.provider, "provider", "", "qemu, image or existing-instance")
	fl.IntVar(&f.cpus, "cpus", 0, "virtual CPUs")
	fl.IntVar(&f.memory, "memory-mib", 0, "memory in MiB")
	fl.StringVar(&f.network, "network", "", "isolated, user or bridge")
	fl.StringVar(&f.bridge, "bridge", "", "host bridge for --network bridge")
	fl.StringSliceVar(&f.forwards, "port-forward", nil, "PROTO:HOSTPORT:GUESTPORT or PROTO:HOSTADDR:HOSTPORT:GUESTPORT (repeatable; replaces the list)")
	fl.StringVar(&f.ip, "ip", "", "static address with prefix, e.g. 10.0.0.5/24 (empty: DHCP)")
	fl.StringVar(&f.hostname, "hostname", "", "host name of the recovered machine (empty: the source's)")
	fl.StringVar(&f.boot, "boot-mode", "", "bios or uefi (firmware boots the disk), or kernel (direct kernel boot from the disk)")
	fl.StringVar(&f.kernelArgs, "kernel-args", "", "with --boot-mode kernel: the kernel command line (default: root by UUID, serial console)")
	fl.StringVar(&f.diskFormat, "disk-format", "", "raw (sparse, the default) or qcow2")
	fl.StringVar(&f.imageDir, "image-dir", "", "with --provider image: write the disks into this directory on the control plane's host")
	fl.StringSliceVar(&f.imageDevices, "image-device", nil, "with --provider image: write the volumes onto these block devices, in order (repeatable)")
	fl.BoolVar(&f.start, "start-after-launch", true, "start the instance once launched")
	fl.BoolVar(&f.instant, "instant", false, "boot from the staging store at once and copy the disks in the background (qemu provider)")
	fl.BoolVar(&f.copyTags, "copy-tags", true, "copy the source server's tags to the instance")
	fl.StringSliceVar(&f.tags, "tag", nil, "KEY=VALUE (repeatable; replaces the tags)")
	fl.StringVar(&f.target, "target-instance", "", "instance to launch into, with --provider existing-instance")
	fl.StringArrayVar(&f.actions, "post-launch-action", nil,
		"name=N,type=script|tcp-check|http-check,command=…|address=host:port|url=…,timeout=SECONDS (repeatable; replaces the list)")
	fl.StringSliceVar(&f.clear, "clear", nil, "empty a list: port-forwards, tags or post-launch-actions")
	return cmd
}

// runLaunchSet changes the launch settings fl names of source server id.
func runLaunchSet(ctx context.Context, g *globals, fl *pflag.FlagSet, id string, f *launchFlags) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	cur, err := c.LaunchSettings(ctx, id)
	if err != nil {
		return err
	}
	l := cur.Settings
	if err := f.apply(fl, &l); err != nil {
		return err
	}
	if err := l.Validate(); err != nil {
		return &UsageError{Err: err}
	}
	out, err := c.SetLaunchSettings(ctx, id, l)
	if err != nil {
		return err
	}
	return g.show(out, func(w *tabwriter.Writer) { launchTable(w, out.Settings) })
}

func (f *launchFlags) apply(fl *pflag.FlagSet, l *api.LaunchSettings) error {
	set := func(name string, dst *string, v string) {
		if fl.Changed(name) {
			*dst = v
		}
	}
	set("provider", &l.Provider, f.provider)
	set("network", &l.Network.Mode, f.network)
	set("bridge", &l.Network.Bridge, f.bridge)
	set("ip", &l.IP, f.ip)
	set("hostname", &l.Hostname, f.hostname)
	set("boot-mode", &l.BootMode, f.boot)
	set("target-instance", &l.TargetInstanceID, f.target)
	set("kernel-args", &l.KernelArgs, f.kernelArgs)
	set("disk-format", &l.DiskFormat, f.diskFormat)
	if fl.Changed("image-dir") || fl.Changed("image-device") {
		l.ImageTarget = &api.ImageTarget{Dir: f.imageDir, Devices: f.imageDevices}
		if f.imageDir == "" && len(f.imageDevices) == 0 {
			l.ImageTarget = nil
		}
	}
	if fl.Changed("cpus") {
		l.CPUs = f.cpus
	}
	if fl.Changed("memory-mib") {
		l.MemoryMiB = f.memory
	}
	if fl.Changed("start-after-launch") {
		l.StartAfterLaunch = f.start
	}
	if fl.Changed("copy-tags") {
		l.CopyTags = f.copyTags
	}
	if fl.Changed("instant") {
		l.Instant = f.instant
	}
	for _, c := range f.clear {
		switch c {
		case "port-forwards":
			l.Network.PortForwards = nil
		case "tags":
			l.Tags = nil
		case "post-launch-actions":
			l.PostLaunchActions = nil
		default:
			return usagef("--clear %q: use port-forwards, tags or post-launch-actions", c)
		}
	}
	if fl.Changed("port-forward") {
		l.Network.PortForwards = nil
		for _, s := range f.forwards {
			pf, err := parseForward(s)
			if err != nil {
				return err
			}
			l.Network.PortForwards = append(l.Network.PortForwards, pf)
		}
	}
	if fl.Changed("tag") {
		l.Tags = map[string]string{}
		for _, t := range f.tags {
			k, v, ok := strings.Cut(t, "=")
			if !ok || k == "" {
				return usagef("--tag %q must be KEY=VALUE", t)
			}
			l.Tags[k] = v
		}
	}
	if fl.Changed("post-launch-action") {
		l.PostLaunchActions = nil
		for _, s := range f.actions {
			a, err := parseAction(s)
			if err != nil {
				return err
			}
			l.PostLaunchActions = append(l.PostLaunchActions, a)
		}
	}
	return nil
}

func parseForward(s string) (api.PortForward, error) {
	p := strings.Split(s, ":")
	var pf api.PortForward
	var hp, gp string
	switch len(p) {
	case 3:
		pf.Protocol, hp, gp = p[0], p[1], p[2]
	case 4:
		pf.Protocol, pf.HostAddr, hp, gp = p[0], p[1], p[2], p[3]
	default:
		return pf, usagef("--port-forward %q must be PROTO:HOSTPORT:GUESTPORT, like tcp:8080:80", s)
	}
	var err1, err2 error
	pf.HostPort, err1 = strconv.Atoi(hp)
	pf.GuestPort, err2 = strconv.Atoi(gp)
	if err1 != nil || err2 != nil {
		return pf, usagef("--port-forward %q: ports must be numbers", s)
	}
	return pf, nil
}

func parseAction(s string) (api.PostLaunchAction, error) {
	var a api.PostLaunchAction
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return a, usagef("--post-launch-action %q: each part must be key=value", s)
		}
		switch k {
		case "name":
			a.Name = v
		case "type":
			a.Type = v
		case "command":
			a.Command = v
		case "address":
			a.Address = v
		case "url":
			a.URL = v
		case "timeout":
			n, err := strconv.Atoi(v)
			if err != nil {
				return a, usagef("--post-launch-action %q: timeout must be a number of seconds", s)
			}
			a.TimeoutSeconds = n
		default:
			return a, usagef("--post-launch-action %q: unknown key %q (name, type, command, address, url, timeout)", s, k)
		}
	}
	if a.TimeoutSeconds == 0 {
		a.TimeoutSeconds = 300
	}
	return a, nil
}

func launchTable(w *tabwriter.Writer, l api.LaunchSettings) {
	row(w, "Provider:", l.Provider)
	row(w, "CPUs:", l.CPUs)
	row(w, "Memory:", fmt.Sprintf("%d MiB", l.MemoryMiB))
	row(w, "Network:", l.Network.Mode+" "+l.Network.Bridge)
	for _, f := range l.Network.PortForwards {
		row(w, "Port forward:", fmt.Sprintf("%s %s:%d -> %d", f.Protocol, orDash(f.HostAddr), f.HostPort, f.GuestPort))
	}
	row(w, "IP:", orDash(l.IP))
	row(w, "Hostname:", orDash(l.Hostname))
	row(w, "Boot mode:", l.BootMode)
	if l.KernelArgs != "" {
		row(w, "Kernel args:", l.KernelArgs)
	}
	row(w, "Disk format:", orDash(l.DiskFormat))
	if t := l.ImageTarget; t != nil {
		row(w, "Image target:", strings.TrimSpace(t.Dir+" "+strings.Join(t.Devices, " ")))
	}
	row(w, "Start after launch:", yesNo(l.StartAfterLaunch))
	row(w, "Instant launch:", yesNo(l.Instant))
	row(w, "Copy tags:", yesNo(l.CopyTags))
	for k, v := range l.Tags {
		row(w, "Tag:", k+"="+v)
	}
	if l.TargetInstanceID != "" {
		row(w, "Launch into:", l.TargetInstanceID)
	}
	for _, a := range l.PostLaunchActions {
		row(w, "Post-launch action:", fmt.Sprintf("%s (%s) %s%s%s, timeout %ds", a.Name, a.Type, a.Command, a.Address, a.URL, a.TimeoutSeconds))
	}
}
