// Package tracker finds the blocks of a source server's volumes that changed, and reads
// them (docs/architecture.md §2 and §4).
//
// Its parts, which the agent combines:
//
//   - DirtySet: the dirty blocks of one volume, marked by a tracker and taken by the
//     sender. Take clears a mark before the block is read, so a write that completes
//     after the clear marks the block again and is sent in its final content.
//   - Volume: a block device or image file opened read-only with O_DIRECT, with reads of
//     chosen blocks (ReadBlocks) and a sequential, read-ahead scan that hashes every
//     block with xxh3-64 (Scan).
//   - HashTable: per volume, the hash of each block as the replica holds it, persisted
//     atomically, so a scan after an agent restart sends only blocks that differ.
//   - EBPF: the "ebpf" tracker, an eBPF program on the block layer's completion
//     tracepoints that reports every completed write to the server's volumes, and on
//     block_rq_issue, so that a completion the kernel fails to report is still marked.
//
// The agent combines them into its two Sources (internal/agent): the eBPF one, and the
// "scan" one, which hashes every block with Scan and sends those whose hash differs from
// the HashTable's (initial sync, RESCAN, and the fallback where eBPF cannot run).
package tracker

import "context"

// Names of the trackers, as reported in a source server's state.
const (
	NameEBPF = "ebpf"
	NameScan = "scan"
)

// Tracker is a source of dirty-block marks. *EBPF is the one implementation; the scan
// tracker needs none because it is the agent's own Scan loop.
//
// The agent calls Run in a goroutine, Sync at each consistency point (after the freeze),
// Lost after each Sync (any increase means marks were dropped: answer with a RESCAN),
// and Close when it stops.
type Tracker interface {
	// Name is the tracker's name as reported in the server's state (NameEBPF).
	Name() string
	// Run delivers marks to mark until ctx ends or the tracker is closed.
	Run(ctx context.Context, mark func(volume int, first, last uint64)) error
	// Sync returns once every write that completed before it was called has been
	// passed to mark.
	Sync(ctx context.Context) error
	// Lost counts the marks dropped so far.
	Lost() uint64
	// Close stops tracking and releases what the tracker holds.
	Close() error
}
