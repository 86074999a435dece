// Package chunkindex maps chunk ids to their location in the store with a memory
// footprint that does not grow with the number of chunks (issue 19). The store keeps
// its chunk index in one when Options.IndexDir is set (internal/store/diskindex.go).
//
// The index lives in one local directory:
//
//   - New entries go to a memtable (a map, bounded by Options.MemtableEntries). Flush
//     writes it, sorted, as a new segment: a temporary file, fsynced, renamed, and the
//     directory fsynced.
//   - A segment is an immutable file of fixed-size records sorted by id, in 4 KiB pages
//     each closed by a CRC-32C, followed by the first id of every page (the fences), a
//     blocked Bloom filter of its ids and a footer with counts, the format version and
//     a CRC-32C of the fences, filter and footer. Open maps only the footers, fences
//     and filters (about 1.9 bytes of RAM per entry at the default 12 bits per key, in
//     the page cache rather than the Go heap), and checks their checksum and the
//     file's size; a damaged or truncated segment is refused with the file's name and
//     what is wrong. Data pages are checked on every
//     read (and all of them by Verify).
//   - Get looks in the memtable, then in the segments newest first: a segment whose
//     filter says no costs nothing, otherwise the fences name the one page that can hold
//     the id and a single pread of that page answers.
//   - Segments are merged by a streaming k-way merge (newest entry wins for an id put
//     twice): after each flush the newest segments are merged while the next older one
//     is no larger than their sum (so sizes fall geometrically and each entry is
//     rewritten about log2(entries/memtable) times), and further if there are more than
//     Options.MaxSegments. Compact merges everything into one segment. A merged
//     segment is named after the range of flush sequence numbers it covers, so that
//     segments it replaced and that a crash left behind are recognised and removed at
//     Open, as are temporary files.
//
// The index is not a log: entries still in the memtable when the process dies are lost.
// The store's own index objects stay the source of truth: the store reads again those
// written since the index's last checkpoint, and rebuilds the index from them after a
// garbage collection (entries are never deleted one by one).
//
// Future work: merging in the background so that Put never waits for a merge.
package chunkindex
