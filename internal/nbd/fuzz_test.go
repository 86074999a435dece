package nbd

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/limit"
)

// The fuzz tests feed arbitrary bytes to one connection: the server must never panic,
// and must end the connection in bounded time once the client has sent everything. The
// connection is a Unix socket pair rather than net.Pipe so that the client can close
// only its sending side and the server still answers everything it read. Run them for
// a minute at most on a shared machine, e.g.
//
//	go test -run '^$' -fuzz FuzzRequests -fuzztime 60s ./internal/nbd

// fuzzConn serves one connection that sends data then closes its sending side, and
// fails the test when the server does not end the connection in time.
func fuzzConn(t *testing.T, srv *Server, data []byte) {
	client, server := socketPair(t)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.serveConn(ctx, server, 1, limit.NewLogGate(time.Minute))
	}()
	go func() { _, _ = io.Copy(io.Discard, client) }() // take every reply
	_ = client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, _ = client.Write(data)
	_ = client.CloseWrite()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not end a connection after its client closed (input % x)", data[:min(len(data), 64)])
	}
}

// socketPair returns the two ends of a connected Unix stream socket pair.
func socketPair(t *testing.T) (*net.UnixConn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "nbd-fuzz")
		c, err := net.FileConn(f)
		f.Close() // FileConn made its own descriptor
		if err != nil {
			t.Fatalf("socketpair: %v", err)
		}
		conns[i] = c
	}
	return conns[0].(*net.UnixConn), conns[1]
}

// fuzzServer serves a small sparse export, lists it, and requires TLS when tc is set.
func fuzzServer(tc *tls.Config) *Server {
	e := &sparseExport{memExport{data: randomBytes(1<<20, 2), holes: []Extent{
		{Length: 4096}, {Length: 8192, Hole: true}, {Length: 1<<20 - 12288}}}}
	return &Server{
		Exports:     exportsOf(map[string]Export{"disk": e, "": e}),
		List:        func(context.Context) ([]string, error) { return []string{"disk"}, nil },
		TLSConfig:   tc,
		IdleTimeout: 2 * time.Second,
	}
}

// opt encodes an option as a client sends it.
func opt(o uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, o)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// req encodes a request as a client sends it.
func req(typ, flags uint16, cookie, off uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	return binary.BigEndian.AppendUint32(b, length)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var clientFlags = binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)

func FuzzNegotiation(f *testing.F) {
	f.Add(false, cat(clientFlags, opt(optGo, infoData("disk", infoBlockSize)), req(cmdRead, 0, 1, 0, 512)))
	f.Add(false, cat(clientFlags, opt(optList, nil), opt(optInfo, infoData("x")), opt(optAbort, nil)))
	f.Add(false, cat(clientFlags, opt(optStructuredReply, nil), opt(optSetMetaContext, metaData("disk", metaBaseAllocation)),
		opt(optListMetaContext, metaData("disk", "base:")), opt(optExportName, []byte("disk"))))
	f.Add(true, cat(clientFlags, opt(optStartTLS, nil), []byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5}))
	f.Add(true, cat(clientFlags, opt(optGo, infoData("disk")), opt(optExportName, nil)))
	f.Add(false, cat(clientFlags, opt(optInfo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})))
	f.Add(false, cat(clientFlags, binary.BigEndian.AppendUint64(nil, magicOption), []byte{0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff}))
	f.Add(false, []byte("GET / HTTP/1.1\r\n\r\n"))
	plain, withTLS := fuzzServer(nil), fuzzServer(&newTestCert(f).server)
	f.Fuzz(func(t *testing.T, tls bool, data []byte) {
		srv := plain
		if tls {
			srv = withTLS
		}
		fuzzConn(t, srv, data)
	})
}

func FuzzRequests(f *testing.F) {
	f.Add(true, cat(req(cmdRead, 0, 1, 0, 4096), req(cmdBlockStatus, cmdFlagReqOne, 2, 0, 1<<20), req(cmdDisc, 0, 3, 0, 0)))
	f.Add(false, cat(req(cmdWrite, 0, 1, 0, 8), []byte("12345678"), req(cmdFlush, 0, 2, 0, 0), req(cmdTrim, 0, 3, 0, 4096)))
	f.Add(true, cat(req(cmdRead, cmdFlagDF, 1, 1<<20-1, 2), req(cmdRead, 0, 2, 1<<63, 1<<31), req(99, 0xffff, 3, 0, 0)))
	f.Add(false, cat(req(cmdWrite, 0, 1, 0, 1<<30), make([]byte, 32)))
	f.Add(false, cat(req(cmdRead, 0, 1, 0, 512), []byte{0x25, 0x60, 0x95}))
	srv := fuzzServer(nil)
	f.Fuzz(func(t *testing.T, structured bool, data []byte) {
		prefix := clientFlags
		if structured {
			prefix = cat(prefix, opt(optStructuredReply, nil), opt(optSetMetaContext, metaData("disk", metaBaseAllocation)))
		}
		fuzzConn(t, srv, cat(prefix, opt(optGo, infoData("disk")), data))
	})
}
