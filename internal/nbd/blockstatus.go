package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
)

// startBlockStatus checks an NBD_CMD_BLOCK_STATUS request and starts the goroutine
// that answers it (an ExtentLister may have to read the store).
func (t *transmission) startBlockStatus(ctx context.Context, req request) error {
	switch {
	case !t.structured || !t.allocation:
		return t.replyErr(req, errInvalid, "select base:allocation with NBD_OPT_SET_META_CONTEXT for this export first")
	case req.flags&^(cmdFlagFUA|cmdFlagReqOne) != 0:
		return t.replyErr(req, errInvalid, fmt.Sprintf("flags %#x do not apply to a block status query", req.flags))
	case req.length == 0:
		return t.replyErr(req, errInvalid, "a block status query of 0 bytes")
	}
	if err := t.checkRange(req); err != nil {
		return t.replyErr(req, errInvalid, err.Error())
	}
	if err := t.acquire(ctx, 0); err != nil {
		return err
	}
	t.wg.Go(func() {
		defer t.release(0)
		t.blockStatus(ctx, req)
	})
	return nil
}

// blockStatus answers a checked block status query with one base:allocation chunk.
func (t *transmission) blockStatus(ctx context.Context, req request) {
	extents := []Extent{{Length: int64(req.length)}}
	if l, ok := t.exp.(ExtentLister); ok {
		var err error
		extents, err = l.Extents(ctx, int64(req.offset), int64(req.length))
		if err != nil {
			if ctx.Err() != nil {
				_ = t.replyErr(req, errShutdown, "the server is stopping")
				return
			}
			t.gate.Warn(t.log, "extents:"+t.name, "listing the extents of an NBD export failed; the client gets an I/O error",
				"offset", req.offset, "length", req.length, "err", err)
			_ = t.replyErr(req, errIO, "reading the export's allocation failed")
			return
		}
	}
	desc, err := descriptors(extents, req.length, req.flags&cmdFlagReqOne != 0)
	if err != nil {
		t.gate.Warn(t.log, "extents:"+t.name, "an NBD export described its extents wrongly; the client gets an I/O error",
			"offset", req.offset, "length", req.length, "err", err)
		_ = t.replyErr(req, errIO, "reading the export's allocation failed")
		return
	}
	h := chunkHeader(replyFlagDone, replyBlockStatus, req.cookie, uint32(4+len(desc)))
	h = binary.BigEndian.AppendUint32(h, metaBaseAllocationID)
	_ = t.send(h, desc)
}

// descriptors encodes extents as base:allocation descriptors covering at most length
// bytes (adjacent extents of one status merged, at most maxExtents, one with reqOne).
func descriptors(extents []Extent, length uint32, reqOne bool) ([]byte, error) {
	var out []byte
	var lastFlags uint32
	n, left := 0, int64(length)
	for _, e := range extents {
		if left == 0 {
			break
		}
		if e.Length <= 0 {
			return nil, fmt.Errorf("an extent of %d bytes", e.Length)
		}
		l := min(e.Length, left)
		left -= l
		var flags uint32
		if e.Hole {
			flags = stateHole | stateZero
		}
		if n > 0 && flags == lastFlags {
			prev := binary.BigEndian.Uint32(out[len(out)-8:])
			binary.BigEndian.PutUint32(out[len(out)-8:], prev+uint32(l)) // at most length in all
			continue
		}
		if n == maxExtents || (reqOne && n == 1) {
			break
		}
		out = binary.BigEndian.AppendUint32(out, uint32(l))
		out = binary.BigEndian.AppendUint32(out, flags)
		lastFlags = flags
		n++
	}
	if n == 0 {
		return nil, errors.New("no extent")
	}
	return out, nil
}
