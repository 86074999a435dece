package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO; GO's success enters transmission.
func (n *negotiation) infoGo(ctx context.Context, opt uint32, data []byte) (*transmission, error) {
	name, infos, err := parseInfoRequest(data)
	if err != nil {
		return nil, n.replyErr(opt, repErrInvalid, err.Error())
	}
	t, err := n.open(ctx, name)
	if err != nil {
		if ctx.Err() != nil {
			return nil, n.replyErr(opt, repErrShutdown, "the server is stopping")
		}
		return nil, n.replyErr(opt, repErrUnknown, fmt.Sprintf("there is no export %q", clip(name)))
	}
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 12), infoExport)
	b = binary.BigEndian.AppendUint64(b, t.size)
	b = binary.BigEndian.AppendUint16(b, t.flags)
	if err := n.reply(opt, repInfo, b); err != nil {
		return nil, err
	}
	for _, i := range infos {
		if i != infoBlockSize {
			continue // the protocol says to ignore what the server does not offer
		}
		b := binary.BigEndian.AppendUint16(make([]byte, 0, 14), infoBlockSize)
		b = binary.BigEndian.AppendUint32(b, 1)
		b = binary.BigEndian.AppendUint32(b, preferredBlockSize(t.exp))
		b = binary.BigEndian.AppendUint32(b, maxPayload)
		if err := n.reply(opt, repInfo, b); err != nil {
			return nil, err
		}
		break
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optInfo {
		return nil, nil
	}
	return t, nil
}

// preferredBlockSize is the export's block size when it has a usable one, else 4 KiB.
func preferredBlockSize(e Export) uint32 {
	if b, ok := e.(BlockSizer); ok {
		s := b.BlockSize()
		if s >= 512 && s <= maxPayload && s&(s-1) == 0 {
			return uint32(s)
		}
	}
	return 4096
}

// parseInfoRequest decodes the data of NBD_OPT_INFO and NBD_OPT_GO: a name and the
// information types asked for.
func parseInfoRequest(data []byte) (string, []uint16, error) {
	d := decoder{b: data}
	name, err := d.string32()
	if err != nil {
		return "", nil, err
	}
	count, ok := d.uint16()
	if !ok || d.len() != 2*int(count) {
		return "", nil, errors.New("the list of information requests does not match its length")
	}
	infos := make([]uint16, count)
	for i := range infos {
		infos[i], _ = d.uint16()
	}
	return name, infos, nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. The only
// context is base:allocation, offered for every export (an export without
// ExtentLister reports everything allocated).
func (n *negotiation) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext {
		n.metaFor = nil // a SET replaces the selection even when it fails
	}
	if !n.structured {
		return n.replyErr(opt, repErrInvalid, "negotiate structured replies before metadata contexts")
	}
	name, queries, err := parseMetaRequest(data)
	if err != nil {
		return n.replyErr(opt, repErrInvalid, err.Error())
	}
	match := false
	for _, q := range queries {
		match = match || q == metaBaseAllocation || (opt == optListMetaContext && q == "base:")
	}
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	if match {
		id := uint32(0) // a listing's ids are reserved, zero
		if opt == optSetMetaContext {
			id = metaBaseAllocationID
			n.metaFor = &name
		}
		b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(metaBaseAllocation)), id)
		if err := n.reply(opt, repMetaContext, append(b, metaBaseAllocation...)); err != nil {
			return err
		}
	}
	return n.reply(opt, repAck, nil)
}

// parseMetaRequest decodes the data of the metadata context options: an export name
// and the queries.
func parseMetaRequest(data []byte) (string, []string, error) {
	d := decoder{b: data}
	name, err := d.string32()
	if err != nil {
		return "", nil, err
	}
	count, ok := d.uint32()
	if !ok {
		return "", nil, errors.New("the number of queries is missing")
	}
	var queries []string
	for range count {
		q, err := d.string32()
		if err != nil {
			return "", nil, fmt.Errorf("query %d: %w", len(queries)+1, err)
		}
		queries = append(queries, q)
	}
	if d.len() != 0 {
		return "", nil, errors.New("the option carries data after its queries")
	}
	return name, queries, nil
}

// decoder reads the fields of an option's data, never past its end.
type decoder struct{ b []byte }

func (d *decoder) len() int { return len(d.b) }

func (d *decoder) uint16() (uint16, bool) {
	if len(d.b) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v, true
}

func (d *decoder) uint32() (uint32, bool) {
	if len(d.b) < 4 {
		return 0, false
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v, true
}

// string32 reads a string with a 32-bit length before it, valid as a name.
func (d *decoder) string32() (string, error) {
	n, ok := d.uint32()
	if !ok {
		return "", errors.New("a string's length is missing")
	}
	if uint64(n) > uint64(len(d.b)) {
		return "", fmt.Errorf("a string of %d bytes runs past the option's data", n)
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s, validName(s)
}

// validName checks an export name or a query: UTF-8 without NUL, at most 4096 bytes.
func validName(s string) error {
	switch {
	case len(s) > maxNameLen:
		return fmt.Errorf("a name of %d bytes is longer than the %d allowed", len(s), maxNameLen)
	case !utf8.ValidString(s):
		return errors.New("a name is not valid UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return errors.New("a name contains a NUL byte")
	}
	return nil
}

// clip shortens s for a message or a log line.
func clip(s string) string {
	if len(s) <= maxMessageLen {
		return s
	}
	cut := maxMessageLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
