package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func TestGreeting(t *testing.T) {
	srv, _ := newServer(t)
	c := startServer(t, "tcp", srv).dial(t)
	if f := c.handshake(clientFixedNewstyle | clientNoZeroes); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
}

func TestRefusedHandshakes(t *testing.T) {
	srv, _ := newServer(t)
	ts := startServer(t, "tcp", srv)
	for name, flags := range map[string]uint32{
		"not fixed newstyle": 0,
		"no zeroes only":     clientNoZeroes,
		"unknown flag":       clientFixedNewstyle | 1<<7,
	} {
		c := ts.dial(t)
		c.handshake(flags)
		c.nc.Write(make([]byte, 16)) // an option the server must not answer
		if _, err := c.r.ReadByte(); err == nil {
			t.Fatalf("%s: the server went on", name)
		}
	}
}

// TestExportName checks NBD_OPT_EXPORT_NAME with and without the 124 zero bytes.
func TestExportName(t *testing.T) {
	srv, want := newServer(t)
	ts := startServer(t, "tcp", srv)
	for _, noZeroes := range []bool{false, true} {
		c := ts.dial(t)
		flags := clientFixedNewstyle
		if noZeroes {
			flags |= clientNoZeroes
		}
		c.handshake(flags)
		c.option(optExportName, []byte("disk"))
		b := c.readN(10)
		if size := binary.BigEndian.Uint64(b); size != exportSize {
			t.Fatalf("size %d", size)
		}
		if !noZeroes {
			if z := c.readN(124); strings.Trim(string(z), "\x00") != "" {
				t.Fatal("the 124 reserved bytes are not zeros")
			}
		}
		checkBytes(t, "a read after NBD_OPT_EXPORT_NAME", c.read(1, 0, 512), want[:512])
		c.disconnect()
	}
	// An unknown export cannot be refused with an error: the connection ends.
	c := ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.option(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestOptions(t *testing.T) {
	srv, _ := newServer(t)
	srv.List = func(context.Context) ([]string, error) {
		return []string{"disk", "bad\x00name", "empty"}, nil
	}
	c := startServer(t, "tcp", srv).dial(t)
	c.handshake(clientFixedNewstyle | clientNoZeroes)

	c.option(optList, nil)
	var names []string
	for {
		r := c.optReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer || binary.BigEndian.Uint32(r.data) != uint32(len(r.data)-4) {
			t.Fatalf("NBD_OPT_LIST reply %#x %q", r.typ, r.data)
		}
		names = append(names, string(r.data[4:]))
	}
	if strings.Join(names, ",") != "disk,empty" {
		t.Fatalf("listed %q, want disk and empty (an invalid name left out)", names)
	}
	c.expect(optList, []byte("x"), repErrInvalid)
	c.expect(4, nil, repErrUnsup) // NBD_OPT_PEEK_EXPORT, withdrawn
	c.expect(0xdeadbeef, []byte("data"), repErrUnsup)
	c.expect(optStartTLS, nil, repErrPolicy) // no TLSConfig
	c.expect(optStructuredReply, []byte{1}, repErrInvalid)
	c.expect(optInfo, []byte{0, 0, 0, 9, 'd'}, repErrInvalid)                     // name runs past the data
	c.expect(optInfo, append(infoData("disk"), 0), repErrInvalid)                 // a byte after the requests
	c.expect(optInfo, infoData("disk\xff"), repErrInvalid)                        // not UTF-8
	c.expect(optInfo, infoData(strings.Repeat("a", maxNameLen+1)), repErrInvalid) // too long
	c.expect(optListMetaContext, metaData("disk"), repErrInvalid)                 // before structured replies
	c.expect(optStructuredReply, nil, repAck)
	c.expect(optStructuredReply, nil, repErrInvalid)                           // twice
	c.expect(optSetMetaContext, []byte{0, 0, 0, 0, 0, 0, 0, 5}, repErrInvalid) // 5 queries, none sent
	if _, typ := c.info(optInfo, "nope"); typ != repErrUnknown {
		t.Fatalf("NBD_OPT_INFO of an unknown export: %#x", typ)
	}
	if ei, typ := c.info(optInfo, "empty"); typ != repAck || ei.size != 0 {
		t.Fatalf("NBD_OPT_INFO of the empty export: %#x size %d", typ, ei.size)
	}
	if ei, typ := c.info(optGo, "disk"); typ != repAck || ei.size != exportSize {
		t.Fatalf("NBD_OPT_GO after all that: %#x size %d", typ, ei.size)
	}
	c.structured = true
	c.read(1, 0, 4096)
	c.disconnect()
}

func TestListRefusedOrFailed(t *testing.T) {
	srv, _ := newServer(t)
	ts := startServer(t, "tcp", srv)
	c := ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.expect(optList, nil, repErrPolicy)
	srv.List = func(context.Context) ([]string, error) { return nil, errors.New("store offline") }
	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.expect(optList, nil, repErrPolicy)
	c.expect(optAbort, nil, repAck)
	c.expectClosed()
}

// TestOptionBounds ends connections that send too much or too many.
func TestOptionBounds(t *testing.T) {
	srv, _ := newServer(t)
	ts := startServer(t, "tcp", srv)

	c := ts.dial(t)
	c.handshake(clientFixedNewstyle)
	hdr := binary.BigEndian.AppendUint64(nil, magicOption)
	hdr = binary.BigEndian.AppendUint32(hdr, optInfo)
	c.write(binary.BigEndian.AppendUint32(hdr, 0xffffffff))
	if r := c.optReply(); r.typ != repErrTooBig {
		t.Fatalf("an option of 4 GiB: reply %#x", r.typ)
	}
	c.expectClosed()

	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.write(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, magicOption), optExportName))
	c.write(binary.BigEndian.AppendUint32(nil, maxOptionLen+1))
	c.expectClosed()

	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.write(append([]byte("NOTMAGIC"), make([]byte, 8)...))
	c.expectClosed()

	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	for range maxOptions {
		c.expect(optStructuredReply, []byte{1}, repErrInvalid)
	}
	c.option(optStructuredReply, nil)
	c.expectClosed()
}
