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
//   - the repository key is wrapped by a master key kept outside the store.
//
// Writers (the replicator) open a Head per volume, write blocks, Flush to make them
// durable, and SealPIT at a consistency point. Readers open a PIT and read blocks or
// export whole volumes as sparse images. Retention, garbage collection (safe while
// ingest continues), verification and statistics complete the package.
package store
