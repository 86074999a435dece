// Package store is the staging store: the repository where replicated volumes live
// while nothing is wrong, and where every recovery point (PIT) is read from when
// something is. docs/store-format.md specifies the format; in short:
//
//   - a volume is a sequence of fixed-size blocks; a block's content is a chunk,
//     addressed by a keyed BLAKE3 hash of its content (so equal blocks are stored once
//     across volumes and servers, and ids reveal nothing), compressed (codec recorded
//     per chunk) and encrypted with AES-256-GCM; all-zero blocks are never stored;
//   - chunks are appended to packs of ~16 MiB, each carrying its own index; index
//     objects map chunk ids to (pack, offset, length) and can be rebuilt from the packs;
//   - a volume version is a tree of block tables, so a new version writes only the
//     tables that changed; a PIT manifest names the version of every volume of a server
//     at one consistency point;
//   - the repository key is wrapped by a master key kept outside the store;
//   - an old object put back by someone with write access to the backend is detected:
//     a head object has a version that every later PIT records, PIT manifests of a
//     server form a hash chain whose digests the control plane records, a PIT's lock
//     has a record of its own, and a pack's trailer names its pack (ErrRollback,
//     Verify).
//
// A head's memory follows what its volume holds, not its declared size (at most
// MaxVolumeBytes): leaf tables are allocated where blocks were written.
//
// Writers (the replicator) open a Head per volume, write blocks, Flush to make them
// durable, and SealPIT at a consistency point. Readers open a PIT and read blocks or
// export whole volumes as sparse images. Retention, garbage collection (safe while
// ingest continues), verification and statistics complete the package.
package store
