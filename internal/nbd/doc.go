// Package nbd is a read-only Network Block Device server: it serves disk images (a PIT's
// volumes, for instant launch) to QEMU, qemu-img, qemu-nbd and libnbd clients over TCP
// or a Unix socket, with or without TLS. It is written in the project against the
// protocol's specification (NetworkBlockDevice/nbd, doc/proto.md); nothing here comes
// from another implementation.
//
// # Protocol subset
//
// Handshake: fixed newstyle only. The server sends NBD_FLAG_FIXED_NEWSTYLE and
// NBD_FLAG_NO_ZEROES and never speaks oldstyle; a client that does not answer with
// NBD_FLAG_C_FIXED_NEWSTYLE, or sets a flag the server does not know, is disconnected.
//
// Options:
//
//   - NBD_OPT_EXPORT_NAME: enters transmission (the 124 zero bytes are left out when
//     the client set NBD_FLAG_C_NO_ZEROES); an unknown export ends the connection, as
//     this option cannot carry an error.
//   - NBD_OPT_INFO and NBD_OPT_GO: NBD_INFO_EXPORT always, NBD_INFO_BLOCK_SIZE when
//     asked (minimum 1, preferred the export's block size or 4 KiB, maximum 32 MiB);
//     other information requests are ignored. An unknown export is
//     NBD_REP_ERR_UNKNOWN.
//   - NBD_OPT_LIST: one NBD_REP_SERVER per export (at most 1000) when Server.List is
//     set, NBD_REP_ERR_POLICY otherwise.
//   - NBD_OPT_ABORT: acknowledged, then the connection ends.
//   - NBD_OPT_STARTTLS: with Server.TLSConfig the server is in FORCEDTLS mode: every
//     option but NBD_OPT_STARTTLS and NBD_OPT_ABORT is NBD_REP_ERR_TLS_REQD until TLS
//     is up (NBD_OPT_EXPORT_NAME ends the connection), TLS 1.2 at least, and the
//     negotiation state is forgotten on the upgrade. Without it, NBD_REP_ERR_POLICY.
//   - NBD_OPT_STRUCTURED_REPLY: structured replies for the transmission.
//   - NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: the one context
//     base:allocation (after structured replies only).
//   - anything else: NBD_REP_ERR_UNSUP.
//
// Every export is read-only: its transmission flags are NBD_FLAG_HAS_FLAGS,
// NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH and NBD_FLAG_CAN_MULTI_CONN (nothing is cached
// per connection), plus NBD_FLAG_SEND_DF with structured replies (a read is always
// answered in one chunk).
//
// Transmission:
//
//   - NBD_CMD_READ: a simple reply, or one NBD_REPLY_TYPE_OFFSET_DATA chunk (or one
//     NBD_REPLY_TYPE_ERROR chunk) with structured replies. At most 32 MiB per read
//     (NBD_EINVAL, or NBD_EOVERFLOW with structured replies); a read past the end is
//     NBD_EINVAL; a failed read of the export is NBD_EIO, and NBD_ESHUTDOWN while the
//     server stops.
//   - NBD_CMD_BLOCK_STATUS for base:allocation: holes (NBD_STATE_HOLE|NBD_STATE_ZERO)
//     as the export reports them through ExtentLister, everything allocated otherwise.
//   - NBD_CMD_FLUSH: succeeds (there is nothing to write back).
//   - NBD_CMD_WRITE, NBD_CMD_TRIM and NBD_CMD_WRITE_ZEROES: NBD_EPERM (a write's
//     payload is read and dropped, so the stream stays in step).
//   - NBD_CMD_DISC: the server answers what is in flight, then closes.
//   - anything else, or a command flag that does not apply: NBD_EINVAL.
//
// # Bounds
//
// Everything a client sends is bounded: option data (8 KiB; larger is
// NBD_REP_ERR_TOO_BIG and the end of the connection), export names (4096 bytes, UTF-8
// without NUL), options per connection (2048), the whole negotiation (60 s), requests
// in flight per connection (16, and 32 MiB of read buffers), a write's payload (32 MiB,
// more ends the connection), the time to take a reply (60 s), the time without a
// request (Server.IdleTimeout) and the connections at once (Server.MaxConnections,
// beyond which new ones are closed at once). A request with a bad magic, a truncated
// message or any other breach of the protocol ends that client's connection and no
// other; replies to concurrent requests may come out of order, each written whole.
package nbd
