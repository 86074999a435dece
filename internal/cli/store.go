package cli

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
)

// storeFlags locate a staging store and its master key.
type storeFlags struct {
	url, key string
}

// stagingKeyFile is where the control plane (lifeboat server and up) keeps the master
// key by default.
func stagingKeyFile(dataDir string) string { return filepath.Join(dataDir, "staging.key") }

func (f *storeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	defURL := os.Getenv("LIFEBOAT_STORE")
	if defURL == "" {
		defURL = (&url.URL{Scheme: "file", Path: filepath.Join(defaultDataDir(), "staging")}).String()
	}
	defKey := os.Getenv("LIFEBOAT_STORE_KEY")
	if defKey == "" {
		defKey = stagingKeyFile(defaultDataDir())
	}
	fl.StringVar(&f.url, "store", defURL, "staging store URL: file:///dir or s3://bucket/prefix?endpoint=host:port (env LIFEBOAT_STORE)")
	fl.StringVar(&f.key, "key", defKey, "master key file of the staging store (env LIFEBOAT_STORE_KEY)")
}

// open opens the repository; with create, it is created (with a new key file) when absent.
func (f *storeFlags) open(ctx context.Context, g *globals, create bool, opts store.Options) (*store.Repo, error) {
	be, err := backendurl.Open(ctx, f.url, backendurl.WithLogger(g.logger))
	if err != nil {
		return nil, err
	}
	opts.Logger = g.logger
	var mk store.MasterKey
	if create {
		mk, err = store.LoadOrCreateMasterKey(f.key)
	} else {
		mk, err = store.LoadMasterKey(f.key)
	}
	if err != nil {
		be.Close()
		return nil, err
	}
	var r *store.Repo
	if create {
		r, err = store.OpenOrInit(ctx, be, mk, opts)
	} else {
		r, err = store.Open(ctx, be, mk, opts)
	}
	if err != nil {
		be.Close()
		return nil, err
	}
	return r, nil
}

func newStoreCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Work on a staging store directly: create, verify, collect garbage, statistics",
		Long: `Commands that open a staging store (the repository of replicated volumes and recovery
snapshots) with the master key file, without the control plane: the master key opens every
account's store.`,
	}
	cmd.AddCommand(newStoreInitCmd(g), newStoreVerifyCmd(g), newStoreGCCmd(g), newStoreStatsCmd(g), newStoreRebuildIndexCmd(g),
		newStoreExportCmd(g))
	return cmd
}

// storeExportFlags are the flags of store export.
type storeExportFlags struct {
	store storeFlags
	to    string
}

func newStoreExportCmd(g *globals) *cobra.Command {
	var f storeExportFlags
	cmd := &cobra.Command{
		Use:   "export SERVER PIT --to DIR",
		Short: "Write a PIT's volumes as sparse raw images, reading the store with the master key file",
		Long: `Write every volume of recovery snapshot PIT of source server SERVER to DIR/<volume>.img
as a sparse raw image, reading the staging store directly: for when the control plane is
gone. The master key file opens every account's store (lifeboat export, through the control
plane, needs no key file). Files are created only inside DIR, and a volume whose name is
not a plain file name is refused.`,
		Args: exactArgs(2, "a source server id and a recovery snapshot id (pit-…)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runStoreExport(cmd.Context(), g, args[0], args[1], f)
		},
	}
	f.store.register(cmd)
	cmd.Flags().StringVar(&f.to, "to", "", "directory for the images")
	return cmd
}

func runStoreExport(ctx context.Context, g *globals, server, pitID string, f storeExportFlags) error {
	if f.to == "" {
		return usagef("store export needs --to DIR")
	}
	r, err := f.store.open(ctx, g, false, store.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	pit, err := r.LoadPIT(ctx, server, pitID)
	if err != nil {
		return err
	}
	root, err := openExportDir(f.to)
	if err != nil {
		return err
	}
	defer root.Close()
	p := newProgress(g.stderr)
	defer p.Close()
	for _, v := range pit.Volumes {
		if err := exportVolume(ctx, g, r, pit, v.Name, root, p); err != nil {
			return err
		}
	}
	return nil
}

func newStoreInitCmd(g *globals) *cobra.Command {
	var f storeFlags
	var blockSize int
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a staging store (and its master key file if it does not exist)",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runStoreInit(cmd.Context(), g, f, blockSize) },
	}
	f.register(cmd)
	cmd.Flags().IntVar(&blockSize, "block-size", store.DefaultBlockSize, "block size in bytes (fixed for the store's life)")
	return cmd
}

func runStoreInit(ctx context.Context, g *globals, f storeFlags, blockSize int) error {
	be, err := backendurl.Open(ctx, f.url, backendurl.WithLogger(g.logger))
	if err != nil {
		return err
	}
	defer be.Close()
	mk, err := store.LoadOrCreateMasterKey(f.key)
	if err != nil {
		return err
	}
	r, err := store.Init(ctx, be, mk, store.Options{BlockSize: blockSize, Logger: g.logger})
	if err != nil {
		return err
	}
	defer r.Close()
	fmt.Fprintf(g.stdout, "created staging store %s (block size %d KiB); master key %s (fingerprint %s): keep a copy of it somewhere safe, without it nothing can be restored\n",
		r.Location(), r.BlockSize()>>10, f.key, mk.Fingerprint())
	return nil
}

func newStoreVerifyCmd(g *globals) *cobra.Command {
	var f storeFlags
	var readData bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every reference and pack of a staging store (and every chunk with --read-data)",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runStoreVerify(cmd.Context(), g, f, readData) },
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&readData, "read-data", false, "read every pack and check every chunk's content")
	return cmd
}

func runStoreVerify(ctx context.Context, g *globals, f storeFlags, readData bool) error {
	r, err := f.open(ctx, g, false, store.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	p := newProgress(g.stderr)
	defer p.Close()
	report := stepReporter(p, "verify ", verifyUnit)
	rep, err := r.Verify(ctx, store.VerifyOptions{ReadData: readData, Progress: func(step string, done, total int) {
		report(step, int64(done), int64(total))
	}})
	if err != nil {
		return err
	}
	p.Finish()
	if err := g.show(rep, func(w *tabwriter.Writer) { verifyTable(w, rep, readData) }); err != nil {
		return err
	}
	if !rep.OK() {
		return fmt.Errorf("verify found %d errors in %s: recovery snapshots that use the objects named above may not restore", len(rep.Errors), r.Location())
	}
	return nil
}

// verifyUnit is what each step of store verify counts.
func verifyUnit(step string) unit {
	switch step {
	case "index":
		return "index objects"
	case "packs":
		return "packs"
	case "references":
		return "tree nodes"
	}
	return ""
}

// gcUnit is what each step of store gc counts.
func gcUnit(step string) unit {
	switch step {
	case store.GCStepMark, store.GCStepMarkAgain:
		return "tree nodes"
	case store.GCStepGrace:
		return unitSeconds
	case store.GCStepRepack:
		return "packs"
	case store.GCStepRemove:
		return "objects"
	}
	return ""
}

// verifyTable prints a verify report: what was checked, then warnings and errors.
func verifyTable(w *tabwriter.Writer, rep store.VerifyReport, readData bool) {
	row(w, "index objects", rep.IndexObjects)
	row(w, "packs", rep.Packs)
	row(w, "chunks", rep.Chunks)
	row(w, "PITs", rep.PITs)
	row(w, "heads", rep.Heads)
	row(w, "tree nodes", rep.TreeNodes)
	row(w, "data chunks referenced", rep.DataRefs)
	if readData {
		row(w, "chunks read", fmt.Sprintf("%d (%s)", rep.ReadChunks, bytesIEC(rep.ReadBytes)))
	}
	for _, w2 := range rep.Warnings {
		row(w, "warning", w2)
	}
	for _, e := range rep.Errors {
		row(w, "ERROR", e)
	}
}

func newStoreGCCmd(g *globals) *cobra.Command {
	var f storeFlags
	var opts store.GCOptions
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove chunks no recovery snapshot or volume head uses; safe while replicators write",
		Long: `Collect garbage: chunks that no recovery snapshot and no volume head references are
condemned, then, after the grace period (so replicators in other processes learn of it),
removed; packs with much dead space are rewritten. Replication may continue meanwhile.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runStoreGC(cmd.Context(), g, f, opts) },
	}
	f.register(cmd)
	cmd.Flags().DurationVar(&opts.Grace, "grace", store.DefaultGCGrace, "wait between condemning chunks and removing them")
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "only report what would be removed")
	return cmd
}

func runStoreGC(ctx context.Context, g *globals, f storeFlags, opts store.GCOptions) error {
	r, err := f.open(ctx, g, false, store.Options{GCGrace: opts.Grace})
	if err != nil {
		return err
	}
	defer r.Close()
	p := newProgress(g.stderr)
	defer p.Close()
	report := stepReporter(p, "gc ", gcUnit)
	opts.Progress = func(step string, done, total int) { report(step, int64(done), int64(total)) }
	st, err := r.GC(ctx, opts)
	if err != nil {
		return err
	}
	p.Finish()
	return g.show(st, func(w *tabwriter.Writer) {
		row(w, "chunks", st.Chunks)
		row(w, "live", st.LiveChunks)
		row(w, "dead (removed)", st.DeadChunks)
		row(w, "condemned, then used again", st.Resurrected)
		row(w, "packs deleted", st.DeletedPacks)
		row(w, "packs repacked", fmt.Sprintf("%d into %d", st.RepackedPacks, st.NewPacks))
		row(w, "orphan packs removed", st.OrphanPacks)
		if st.LockedPacks > 0 {
			row(w, "packs kept by retention", st.LockedPacks)
		}
		row(w, "space freed", bytesIEC(st.FreedBytes))
		row(w, "took", st.Duration.Round(time.Millisecond))
	})
}

func newStoreStatsCmd(g *globals) *cobra.Command {
	var f storeFlags
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Logical size, stored size, deduplication and compression of a staging store, per server",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runStoreStats(cmd.Context(), g, f) },
	}
	f.register(cmd)
	return cmd
}

func runStoreStats(ctx context.Context, g *globals, f storeFlags) error {
	r, err := f.open(ctx, g, false, store.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	st, err := r.Stats(ctx)
	if err != nil {
		return err
	}
	return g.show(st, func(w *tabwriter.Writer) {
		row(w, "SERVER", "PITS", "LOGICAL", "REFERENCED", "UNIQUE", "STORED", "METADATA", "DEDUP", "COMPRESSION")
		for _, s := range st.Servers {
			row(w, s.Server, s.PITs, bytesIEC(s.LogicalBytes), bytesIEC(s.ReferencedBytes), bytesIEC(s.UniqueBytes),
				bytesIEC(s.StoredBytes), bytesIEC(s.MetadataBytes), ratio(s.DedupRatio), ratio(s.CompressionRatio))
		}
		row(w, "(store)", "-", "-", "-", bytesIEC(st.RawBytes), bytesIEC(st.PackBytes), "-", "-", ratio(safeDiv(st.RawBytes, st.StoredBytes)))
	})
}

func newStoreRebuildIndexCmd(g *globals) *cobra.Command {
	var f storeFlags
	cmd := &cobra.Command{
		Use:   "rebuild-index",
		Short: "Rebuild the index from the packs' own indexes (when index objects are lost or corrupt)",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runStoreRebuildIndex(cmd.Context(), g, f) },
	}
	f.register(cmd)
	return cmd
}

func runStoreRebuildIndex(ctx context.Context, g *globals, f storeFlags) error {
	be, err := backendurl.Open(ctx, f.url, backendurl.WithLogger(g.logger))
	if err != nil {
		return err
	}
	defer be.Close()
	mk, err := store.LoadMasterKey(f.key)
	if err != nil {
		return err
	}
	// Open loads the index, which may be what is damaged: open it without.
	r, err := store.OpenWithoutIndex(ctx, be, mk, store.Options{Logger: g.logger})
	if err != nil {
		return err
	}
	defer r.Close()
	st, err := r.RebuildIndex(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "rebuilt the index of %s from %d packs (%d chunks); replaced %d index objects with %d\n",
		r.Location(), st.Packs, st.Chunks, st.OldIndex, st.NewIndex)
	for _, u := range st.Unreadable {
		fmt.Fprintf(g.stdout, "unreadable pack (its chunks are lost): %s\n", u)
	}
	if len(st.Unreadable) > 0 {
		return errors.New("some packs could not be read: run lifeboat store verify to see which recovery snapshots are affected")
	}
	return nil
}

// bytesIEC formats a byte count with binary units.
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func ratio(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", x)
}

func safeDiv(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
