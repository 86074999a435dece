package nbd

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

const exportSize = 64 << 20

// newServer is a Server of one 64 MiB export named "disk" (and an empty "empty").
func newServer(t testing.TB) (*Server, []byte) {
	data := randomBytes(exportSize, 1)
	m := map[string]Export{"disk": &memExport{data: data}, "empty": &memExport{}}
	return &Server{Exports: exportsOf(m), Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}, data
}

// testWriter sends the server's log to the test's.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestReadWholeExport reads a 64 MiB export through the server, over TCP and a Unix
// socket, with simple and structured replies, and compares every byte.
func TestReadWholeExport(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		for _, structured := range []bool{false, true} {
			name := network + "/simple"
			if structured {
				name = network + "/structured"
			}
			t.Run(name, func(t *testing.T) {
				srv, want := newServer(t)
				c := startServer(t, network, srv).dial(t)
				ei := c.attach("disk", structured)
				if ei.size != exportSize {
					t.Fatalf("size %d, want %d", ei.size, exportSize)
				}
				wantFlags := tflagHasFlags | tflagReadOnly | tflagSendFlush | tflagMultiConn
				if structured {
					wantFlags |= tflagSendDF
				}
				if ei.flags != wantFlags {
					t.Fatalf("transmission flags %#x, want %#x", ei.flags, wantFlags)
				}
				if len(ei.blockSizes) != 3 || ei.blockSizes[0] != 1 || ei.blockSizes[1] != 4096 || ei.blockSizes[2] != maxPayload {
					t.Fatalf("block sizes %v, want [1 4096 %d]", ei.blockSizes, maxPayload)
				}
				h := sha256.New()
				const chunk = 4 << 20
				for off := uint64(0); off < exportSize; off += chunk {
					h.Write(c.read(off, off, chunk))
				}
				if got, w := h.Sum(nil), sha256.Sum256(want); string(got) != string(w[:]) {
					t.Fatal("the bytes read through the server differ from the export's")
				}
				checkBytes(t, "an unaligned read", c.read(1, 12345, 777), want[12345:12345+777])
				checkBytes(t, "the last byte", c.read(2, exportSize-1, 1), want[exportSize-1:])
				c.disconnect()
			})
		}
	}
}

// TestConcurrentReadsOutOfOrder pipelines reads; each reply must carry its request's
// cookie and data, whatever their order.
func TestConcurrentReadsOutOfOrder(t *testing.T) {
	for _, structured := range []bool{false, true} {
		srv, want := newServer(t)
		c := startServer(t, "tcp", srv).dial(t)
		c.attach("disk", structured)
		const n = 64
		for i := range uint64(n) {
			c.request(cmdRead, 0, 1000+i, i*(1<<20)+i, uint32(1<<20-i*100), nil)
		}
		seen := map[uint64]bool{}
		for range n {
			r := c.reply()
			i := r.cookie - 1000
			if r.errno != 0 || i >= n || seen[r.cookie] {
				t.Fatalf("reply cookie %d errno %d (seen before: %v)", r.cookie, r.errno, seen[r.cookie])
			}
			seen[r.cookie] = true
			off := i*(1<<20) + i
			checkBytes(t, "a pipelined read", r.data, want[off:off+uint64(1<<20-i*100)])
		}
		c.disconnect()
	}
}

// TestRequestErrors checks the error replies of the transmission phase and that the
// connection stays usable after each.
func TestRequestErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		srv, want := newServer(t)
		c := startServer(t, "tcp", srv).dial(t)
		c.attach("disk", structured)
		overflow := errInvalid
		if structured {
			overflow = errOverflow
		}
		cases := []struct {
			name       string
			typ, flags uint16
			off        uint64
			length     uint32
			payload    []byte
			errno      uint32
		}{
			{"read past the end", cmdRead, 0, exportSize - 10, 11, nil, errInvalid},
			{"read beyond the end", cmdRead, 0, exportSize + 1, 1, nil, errInvalid},
			{"read at the largest offset", cmdRead, 0, ^uint64(0), 4096, nil, errInvalid},
			{"huge read", cmdRead, 0, 0, maxPayload + 1, nil, overflow},
			{"read with an unknown flag", cmdRead, 1 << 9, 0, 512, nil, errInvalid},
			{"write", cmdWrite, 0, 0, 4096, make([]byte, 4096), errPerm},
			{"trim", cmdTrim, 0, 0, 4096, nil, errPerm},
			{"write zeroes", cmdWriteZeroes, 0, 0, 4096, nil, errPerm},
			{"unknown command", 99, 0, 0, 0, nil, errInvalid},
			{"block status without a context", cmdBlockStatus, 0, 0, 4096, nil, errInvalid},
			{"flush", cmdFlush, 0, 0, 0, nil, 0},
			{"empty read", cmdRead, 0, exportSize, 0, nil, 0},
		}
		for i, tc := range cases {
			c.request(tc.typ, tc.flags, uint64(i), tc.off, tc.length, tc.payload)
			r := c.reply()
			if r.cookie != uint64(i) || r.errno != tc.errno {
				t.Fatalf("%s (structured %v): cookie %d errno %d, want %d errno %d", tc.name, structured, r.cookie, r.errno, i, tc.errno)
			}
			if structured && tc.errno != 0 && r.msg == "" {
				t.Errorf("%s: a structured error reply without a message", tc.name)
			}
			checkBytes(t, "a read after "+tc.name, c.read(100, 4096, 4096), want[4096:8192])
		}
		c.disconnect()
	}
}

// failingExport fails every read.
type failingExport struct{ memExport }

func (f *failingExport) ReadAt([]byte, int64) (int, error) {
	return 0, errors.New("the staging store is unreachable")
}

// TestReadFailureIsEIO checks that a failed read of the export is an I/O error to the
// client, never wrong data, and that the connection goes on.
func TestReadFailureIsEIO(t *testing.T) {
	for _, structured := range []bool{false, true} {
		srv := &Server{Exports: exportsOf(map[string]Export{"bad": &failingExport{memExport{data: make([]byte, 1<<20)}}})}
		c := startServer(t, "tcp", srv).dial(t)
		c.attach("bad", structured)
		for i := range uint64(3) {
			c.request(cmdRead, 0, i, 0, 4096, nil)
			r := c.reply()
			if r.errno != errIO || len(r.data) != 0 {
				t.Fatalf("a failed read: errno %d with %d bytes, want EIO and none", r.errno, len(r.data))
			}
		}
		c.disconnect()
	}
}

// TestBlockStatus checks base:allocation through an ExtentLister, REQ_ONE, and the
// context's negotiation.
func TestBlockStatus(t *testing.T) {
	e := &sparseExport{memExport{data: make([]byte, 1<<20), holes: []Extent{
		{Length: 64 << 10}, {Length: 128 << 10, Hole: true}, {Length: 64 << 10, Hole: true},
		{Length: 768 << 10}}}}
	srv := &Server{Exports: exportsOf(map[string]Export{"sparse": e, "plain": &memExport{data: make([]byte, 8192)}})}
	ts := startServer(t, "tcp", srv)
	c := ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.expect(optSetMetaContext, metaData("sparse", metaBaseAllocation), repErrInvalid) // before structured replies
	c.expect(optStructuredReply, nil, repAck)
	c.structured = true
	r := c.expect(optListMetaContext, metaData("sparse"), repMetaContext)
	if string(r.data[4:]) != metaBaseAllocation {
		t.Fatalf("listed context %q", r.data[4:])
	}
	c.optReply() // ACK
	c.expect(optSetMetaContext, metaData("sparse", "base:", "qemu:dirty-bitmap:x", metaBaseAllocation), repMetaContext)
	c.optReply()
	if ei, typ := c.info(optGo, "sparse"); typ != repAck || ei.size != 1<<20 {
		t.Fatalf("GO: %#x size %d", typ, ei.size)
	}
	c.request(cmdBlockStatus, 0, 7, 0, 1<<20, nil)
	got := c.reply()
	want := [][2]uint32{{64 << 10, 0}, {192 << 10, stateHole | stateZero}, {768 << 10, 0}}
	if got.errno != 0 || len(got.status) != len(want) {
		t.Fatalf("block status: errno %d %v, want %v", got.errno, got.status, want)
	}
	for i := range want {
		if got.status[i] != want[i] {
			t.Fatalf("block status %v, want %v", got.status, want)
		}
	}
	c.request(cmdBlockStatus, cmdFlagReqOne, 8, 100<<10, 10<<10, nil)
	if got := c.reply(); len(got.status) != 1 || got.status[0] != [2]uint32{10 << 10, stateHole | stateZero} {
		t.Fatalf("block status with REQ_ONE: %v", got.status)
	}
	c.request(cmdBlockStatus, 0, 9, 1<<20-1, 2, nil)
	if got := c.reply(); got.errno != errInvalid {
		t.Fatalf("block status past the end: errno %d", got.errno)
	}
	c.disconnect()

	// An export without ExtentLister is all data; a context selected for another
	// export does not carry over.
	c = ts.dial(t)
	c.handshake(clientFixedNewstyle)
	c.expect(optStructuredReply, nil, repAck)
	c.structured = true
	c.expect(optSetMetaContext, metaData("sparse", metaBaseAllocation), repMetaContext)
	c.optReply()
	c.info(optGo, "plain")
	c.request(cmdBlockStatus, 0, 1, 0, 8192, nil)
	if got := c.reply(); got.errno != errInvalid {
		t.Fatalf("block status on another export than the context's: errno %d", got.errno)
	}
	c.disconnect()
}

// metaData encodes the data of the metadata context options.
func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

func TestDescriptorsBounded(t *testing.T) {
	var many []Extent
	for i := range 2 * maxExtents {
		many = append(many, Extent{Length: 1, Hole: i%2 == 0})
	}
	d, err := descriptors(many, 4*maxExtents, false)
	if err != nil || len(d) != 8*maxExtents {
		t.Fatalf("%d descriptors (err %v), want at most %d", len(d)/8, err, maxExtents)
	}
	if _, err := descriptors([]Extent{{Length: 0}}, 10, false); err == nil {
		t.Fatal("an empty extent was accepted")
	}
	d, _ = descriptors([]Extent{{Length: 1 << 40, Hole: true}}, 4096, false)
	if binary.BigEndian.Uint32(d) != 4096 {
		t.Fatalf("an extent past the request: %d bytes", binary.BigEndian.Uint32(d))
	}
}

// slowExport blocks reads until their context ends.
type slowExport struct {
	memExport
	started chan struct{}
	once    sync.Once
}

func (s *slowExport) ReadAtContext(ctx context.Context, _ []byte, _ int64) (int, error) {
	s.once.Do(func() { close(s.started) })
	<-ctx.Done()
	return 0, ctx.Err()
}

// TestShutdownAnswersInFlight stops the server while a read waits on the export: the
// client gets NBD_ESHUTDOWN, then the connection closes and Serve returns.
func TestShutdownAnswersInFlight(t *testing.T) {
	e := &slowExport{memExport: memExport{data: make([]byte, 1<<20)}, started: make(chan struct{})}
	ts := startServer(t, "unix", &Server{Exports: exportsOf(map[string]Export{"slow": e})})
	c := ts.dial(t)
	c.attach("slow", true)
	c.request(cmdRead, 0, 5, 0, 4096, nil)
	<-e.started
	ts.stop(t)
	if r := c.reply(); r.cookie != 5 || r.errno != errShutdown {
		t.Fatalf("a read in flight at shutdown: cookie %d errno %d, want ESHUTDOWN", r.cookie, r.errno)
	}
	c.expectClosed()
}

// TestIdleTimeout closes a connection that sends nothing.
func TestIdleTimeout(t *testing.T) {
	srv, _ := newServer(t)
	srv.IdleTimeout = 200 * time.Millisecond
	c := startServer(t, "tcp", srv).dial(t)
	c.attach("disk", false)
	start := time.Now()
	c.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("an idle connection was closed after %v", d)
	}
}

// TestMaxConnections refuses connections past the limit, and takes new ones once a
// connection ends.
func TestMaxConnections(t *testing.T) {
	srv, _ := newServer(t)
	srv.MaxConnections = 1
	ts := startServer(t, "tcp", srv)
	first := ts.dial(t)
	first.handshake(clientFixedNewstyle)
	second := ts.dial(t)
	second.expectClosed()
	first.expect(optAbort, nil, repAck)
	first.expectClosed()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := ts.dial(t)
		_ = c.nc.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.r.Peek(1); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection is served after the only one ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMalformedClientAffectsNoOther breaks the protocol on one connection while another
// reads.
func TestMalformedClientAffectsNoOther(t *testing.T) {
	srv, want := newServer(t)
	ts := startServer(t, "tcp", srv)
	good := ts.dial(t)
	good.attach("disk", true)
	for i, garbage := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		make([]byte, 64),
		append(binary.BigEndian.AppendUint32(nil, clientFixedNewstyle), strings.Repeat("\xff", 40)...),
	} {
		bad := ts.dial(t)
		bad.readN(18)
		bad.write(garbage)
		bad.expectClosed()
		checkBytes(t, "a read beside a bad client", good.read(uint64(i), 1<<20, 8192), want[1<<20:1<<20+8192])
	}
	// A request with a bad magic ends only that connection.
	bad := ts.dial(t)
	bad.attach("disk", false)
	bad.write(make([]byte, requestLen))
	bad.expectClosed()
	// A write larger than any request may carry ends the connection (its payload
	// cannot be skipped in reasonable time).
	bad = ts.dial(t)
	bad.attach("disk", false)
	bad.request(cmdWrite, 0, 1, 0, 0xffffffff, nil)
	bad.expectClosed()
	checkBytes(t, "a read after the bad clients", good.read(9, 0, 4096), want[:4096])
	good.disconnect()
}

// TestShutdownEndsIdleConnections stops the server with one client in negotiation and
// one attached but quiet: both are closed and Serve returns at once.
func TestShutdownEndsIdleConnections(t *testing.T) {
	srv, _ := newServer(t)
	srv.IdleTimeout = -1 // no idle limit: only the shutdown may end them
	ts := startServer(t, "tcp", srv)
	negotiating := ts.dial(t)
	negotiating.handshake(clientFixedNewstyle)
	attached := ts.dial(t)
	attached.attach("disk", false)
	start := time.Now()
	ts.stop(t)
	negotiating.expectClosed()
	attached.expectClosed()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stopping the server took %v", d)
	}
}

func TestServeErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := (&Server{}).Serve(context.Background(), l); err == nil {
		t.Fatal("a server without Exports served")
	}
	srv, _ := newServer(t)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	l.Close() // before or during Accept: the same error either way
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "closed") {
			t.Fatalf("Serve on a listener closed under it: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return when its listener was closed")
	}
}
