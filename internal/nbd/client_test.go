package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// This file holds what the tests share: a small NBD client written from the protocol
// (the tests' own, so a bug in the server cannot hide behind the same bug in a shared
// decoder), in-memory exports and a server started per test.

// memExport is an export of bytes in memory.
type memExport struct {
	data  []byte
	holes []Extent // when set, Extents reports these (ExtentLister)
}

func (m *memExport) Size() int64 { return int64(len(m.data)) }

func (m *memExport) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(m.data)) {
		return 0, errors.New("offset out of range")
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// sparseExport is a memExport that lists its extents.
type sparseExport struct{ memExport }

func (s *sparseExport) Extents(_ context.Context, off, length int64) ([]Extent, error) {
	var out []Extent
	pos := int64(0)
	for _, e := range s.holes {
		end := pos + e.Length
		if end > off && pos < off+length {
			lo := max(pos, off)
			out = append(out, Extent{Length: end - lo, Hole: e.Hole})
		}
		pos = end
	}
	return out, nil
}

// randomBytes returns n bytes that depend only on seed.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// testServer is a Server serving on a listener until the test ends.
type testServer struct {
	srv    *Server
	addr   string
	net    string
	cancel context.CancelFunc
	done   chan error
}

// exportsOf is an Exports function over a map.
func exportsOf(m map[string]Export) func(context.Context, string) (Export, error) {
	return func(_ context.Context, name string) (Export, error) {
		e, ok := m[name]
		if !ok {
			return nil, fmt.Errorf("export %q: %w", name, ErrUnknownExport)
		}
		return e, nil
	}
}

// startServer serves srv on TCP ("tcp") or a Unix socket ("unix") until the test ends.
func startServer(t testing.TB, network string, srv *Server) *testServer {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "nbd.sock")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, addr: l.Addr().String(), net: network, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop ends the server and checks that Serve returns nil in time.
func (ts *testServer) stop(t testing.TB) {
	ts.cancel()
	select {
	case err, ok := <-ts.done:
		if ok && err != nil {
			t.Errorf("Serve returned %v after its context ended", err)
		}
		if ok {
			close(ts.done)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("Serve did not return within 10 s of its context ending")
	}
}

// client is the tests' NBD client.
type client struct {
	t          testing.TB
	nc         net.Conn
	r          *bufio.Reader
	structured bool
	pending    map[uint64]uint32 // cookie → length of reads in flight (simple replies)
}

func (ts *testServer) dial(t testing.TB) *client {
	t.Helper()
	nc, err := net.DialTimeout(ts.net, ts.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", ts.addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	return newClient(t, nc)
}

func newClient(t testing.TB, nc net.Conn) *client {
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, nc: nc, r: bufio.NewReader(nc), pending: map[uint64]uint32{}}
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write to the server: %v", err)
	}
}

func (c *client) readN(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("read %d bytes from the server: %v", n, err)
	}
	return b
}

// handshake reads the greeting and answers with flags; it returns the server's flags.
func (c *client) handshake(flags uint32) uint16 {
	c.t.Helper()
	g := c.readN(18)
	if binary.BigEndian.Uint64(g) != magicInit || binary.BigEndian.Uint64(g[8:]) != magicOption {
		c.t.Fatalf("greeting % x is not a newstyle one", g)
	}
	c.write(binary.BigEndian.AppendUint32(nil, flags))
	return binary.BigEndian.Uint16(g[16:])
}

func (c *client) option(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) optReply() optReply {
	c.t.Helper()
	h := c.readN(20)
	if m := binary.BigEndian.Uint64(h); m != magicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = c.readN(int(binary.BigEndian.Uint32(h[16:])))
	return r
}

// expect sends an option and checks that its final reply has type typ.
func (c *client) expect(opt uint32, data []byte, typ uint32) optReply {
	c.t.Helper()
	c.option(opt, data)
	r := c.optReply()
	if r.opt != opt || r.typ != typ {
		c.t.Fatalf("option %d: reply %#x to option %d (%q), want %#x", opt, r.typ, r.opt, r.data, typ)
	}
	return r
}

// infoData encodes the data of NBD_OPT_INFO / NBD_OPT_GO.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// exportInfo is what NBD_OPT_INFO / NBD_OPT_GO told.
type exportInfo struct {
	size       uint64
	flags      uint16
	blockSizes []uint32 // minimum, preferred, maximum, when sent
}

// info sends NBD_OPT_INFO or NBD_OPT_GO and returns the information, or the final
// reply's type when it is an error.
func (c *client) info(opt uint32, name string, infos ...uint16) (exportInfo, uint32) {
	c.t.Helper()
	c.option(opt, infoData(name, infos...))
	var ei exportInfo
	for {
		r := c.optReply()
		switch r.typ {
		case repInfo:
			switch binary.BigEndian.Uint16(r.data) {
			case infoExport:
				ei.size, ei.flags = binary.BigEndian.Uint64(r.data[2:]), binary.BigEndian.Uint16(r.data[10:])
			case infoBlockSize:
				d := r.data[2:]
				ei.blockSizes = []uint32{binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:]), binary.BigEndian.Uint32(d[8:])}
			}
		case repAck:
			return ei, repAck
		default:
			return ei, r.typ
		}
	}
}

// attach negotiates (structured replies when asked) and enters transmission on name.
func (c *client) attach(name string, structured bool) exportInfo {
	c.t.Helper()
	c.handshake(clientFixedNewstyle | clientNoZeroes)
	if structured {
		c.expect(optStructuredReply, nil, repAck)
		c.structured = true
	}
	ei, typ := c.info(optGo, name, infoBlockSize)
	if typ != repAck {
		c.t.Fatalf("NBD_OPT_GO %q: reply %#x", name, typ)
	}
	return ei
}

func (c *client) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	if typ == cmdRead {
		c.pending[cookie] = length
	}
	c.write(append(b, payload...))
}

// reply is a whole reply to one request.
type reply struct {
	cookie uint64
	errno  uint32
	msg    string
	data   []byte   // a read's data, at the request's offset order
	chunks []uint16 // types of the structured chunks
	status [][2]uint32
}

// reply reads the next complete reply (structured chunks until the one marked done).
func (c *client) reply() reply {
	c.t.Helper()
	if !c.structured {
		h := c.readN(16)
		if m := binary.BigEndian.Uint32(h); m != magicSimple {
			c.t.Fatalf("simple reply magic %#x", m)
		}
		r := reply{errno: binary.BigEndian.Uint32(h[4:]), cookie: binary.BigEndian.Uint64(h[8:])}
		if n, ok := c.pending[r.cookie]; ok && r.errno == 0 {
			r.data = c.readN(int(n))
		}
		delete(c.pending, r.cookie)
		return r
	}
	var r reply
	for {
		h := c.readN(20)
		if m := binary.BigEndian.Uint32(h); m != magicStructured {
			c.t.Fatalf("structured reply magic %#x", m)
		}
		flags, typ := binary.BigEndian.Uint16(h[4:]), binary.BigEndian.Uint16(h[6:])
		r.cookie = binary.BigEndian.Uint64(h[8:])
		p := c.readN(int(binary.BigEndian.Uint32(h[16:])))
		r.chunks = append(r.chunks, typ)
		c.decodeChunk(&r, typ, p)
		if flags&replyFlagDone != 0 {
			delete(c.pending, r.cookie)
			return r
		}
	}
}

func (c *client) decodeChunk(r *reply, typ uint16, p []byte) {
	c.t.Helper()
	switch {
	case typ == replyOffsetData:
		r.data = append(r.data, p[8:]...)
	case typ == replyBlockStatus:
		if binary.BigEndian.Uint32(p) != metaBaseAllocationID {
			c.t.Fatalf("block status for context %d", binary.BigEndian.Uint32(p))
		}
		for d := p[4:]; len(d) >= 8; d = d[8:] {
			r.status = append(r.status, [2]uint32{binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:])})
		}
	case typ&(1<<15) != 0:
		r.errno = binary.BigEndian.Uint32(p)
		r.msg = string(p[6 : 6+binary.BigEndian.Uint16(p[4:])])
	}
}

// read reads length bytes at off and fails the test on an error reply.
func (c *client) read(cookie, off uint64, length uint32) []byte {
	c.t.Helper()
	c.request(cmdRead, 0, cookie, off, length, nil)
	r := c.reply()
	if r.cookie != cookie || r.errno != 0 {
		c.t.Fatalf("read of %d at %d: cookie %d errno %d %q", length, off, r.cookie, r.errno, r.msg)
	}
	return r.data
}

// disconnect sends NBD_CMD_DISC and checks that the server closes the connection.
func (c *client) disconnect() {
	c.t.Helper()
	c.request(cmdDisc, 0, 0, 0, 0, nil)
	c.expectClosed()
}

// expectClosed checks that the server closes the connection without sending more.
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c.r)
	if err != nil && !isReset(err) {
		c.t.Fatalf("waiting for the server to close: %v", err)
	}
	if len(b) > 0 {
		c.t.Fatalf("the server sent %d more bytes before closing: % x", len(b), b[:min(len(b), 32)])
	}
}

// isReset is a connection reset: the server closed with data of ours unread.
func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// startTLS upgrades the client's connection after NBD_OPT_STARTTLS was acknowledged.
func (c *client) startTLS(cfg *tls.Config) {
	c.t.Helper()
	c.expect(optStartTLS, nil, repAck)
	if c.r.Buffered() != 0 {
		c.t.Fatalf("the server sent %d bytes after acknowledging STARTTLS", c.r.Buffered())
	}
	tc := tls.Client(c.nc, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.nc, c.r = tc, bufio.NewReader(tc)
}

// checkBytes compares got with want and reports the first difference.
func checkBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: first difference at byte %d", what, i)
		}
	}
}
