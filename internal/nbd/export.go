package nbd

import (
	"context"
	"errors"
	"io"
)

// Export is a read-only disk image the server offers: a PIT's volume, a file, bytes in
// memory. Its methods are called from several goroutines at once.
type Export interface {
	// Size is the image's size in bytes; it must not change while it is served.
	Size() int64
	// ReadAt reads as io.ReaderAt does. The server asks only for bytes within Size.
	ReadAt(p []byte, off int64) (int, error)
}

// ContextReaderAt is an Export whose reads can be cancelled. When an Export has it, the
// server reads through it with a context that ends with the connection or the server,
// so a read waiting on a slow staging store does not hold either up.
type ContextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// Extent is a run of an export's bytes with one allocation status.
type Extent struct {
	Length int64 // bytes, more than zero
	Hole   bool  // not stored: reads as zeros
}

// ExtentLister is an Export that knows where its holes are. The server answers
// NBD_CMD_BLOCK_STATUS for base:allocation with it, so clients such as qemu-img and
// QEMU's block-stream skip what reads as zeros. Extents describes consecutive extents
// from off; they may cover less than length (the client asks again for the rest) or
// more (the excess is ignored).
type ExtentLister interface {
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// BlockSizer is an Export with a natural block size (a PIT volume's store block): the
// server advertises it as the preferred block size when it is a power of two from 512
// bytes to 32 MiB.
type BlockSizer interface {
	BlockSize() int
}

// ErrUnknownExport is what Server.Exports returns (wrapped) for a name it does not
// serve; other errors are logged as failures of the server.
var ErrUnknownExport = errors.New("no such export")

// readFull reads len(p) bytes at off from e, through ReadAtContext when e has it.
func readFull(ctx context.Context, e Export, p []byte, off int64) error {
	var n int
	var err error
	if c, ok := e.(ContextReaderAt); ok {
		n, err = c.ReadAtContext(ctx, p, off)
	} else {
		n, err = e.ReadAt(p, off)
	}
	if n == len(p) {
		return nil // io.ReaderAt may return io.EOF with a full read at the end
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
