package store

import (
	"context"
	"fmt"
	"io"
)

// ReadAtContext reads len(p) bytes of the volume at off, block by block (io.ReaderAt
// with a context): an NBD export of a PIT serves its reads with it. A read that reaches
// past the end of the volume returns what precedes the end and io.EOF.
func (v *VolumeReader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d of volume %s: negative offset", off, v.vol.Name)
	}
	if off >= v.vol.Size {
		return 0, io.EOF
	}
	want := len(p)
	if rest := v.vol.Size - off; int64(want) > rest {
		want = int(rest)
	}
	bs := int64(v.r.cfg.BlockSize)
	var buf []byte
	n := 0
	for n < want {
		pos := off + int64(n)
		block, in := uint64(pos/bs), pos%bs
		var err error
		if buf, err = v.ReadBlock(ctx, block, buf); err != nil {
			return n, err
		}
		n += copy(p[n:want], buf[in:])
	}
	if want < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// ReadAt is ReadAtContext without a context (io.ReaderAt).
func (v *VolumeReader) ReadAt(p []byte, off int64) (int, error) {
	return v.ReadAtContext(context.Background(), p, off)
}

// Hole reports whether a block is all zeros, without reading its data (the tree says
// so): an NBD export answers block status with it.
func (v *VolumeReader) Hole(ctx context.Context, block uint64) (bool, error) {
	if block >= v.nblocks {
		return false, fmt.Errorf("block %d is past the end of volume %s (%d blocks)", block, v.vol.Name, v.nblocks)
	}
	id, err := v.blockID(ctx, block)
	return id.IsZero(), err
}
