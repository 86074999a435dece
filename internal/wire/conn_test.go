package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestCleanClose: Goodbye then Close reaches the peer as the Goodbye and a clean end of
// stream (the TLS close_notify got through the write gathering under TLS).
func TestCleanClose(t *testing.T) {
	agent, rep := pair(t)
	if err := agent.WriteMsg(&Goodbye{}); err != nil {
		t.Fatal(err)
	}
	if err := agent.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := agent.Close(); err != nil {
		t.Fatal(err)
	}
	m, err := rep.ReadMsg()
	if err != nil || m.Type() != TypeGoodbye {
		t.Fatalf("%v, %v; want Goodbye", m, err)
	}
	if _, err := rep.ReadMsg(); err != io.EOF {
		t.Fatalf("after Goodbye and Close: %v, want io.EOF", err)
	}
	if err := agent.WriteMsg(&Ping{}); err == nil {
		if err := agent.Flush(); err == nil {
			t.Fatal("a closed Conn accepted a write")
		}
	}
}

// TestCloseEndsABlockedWrite: a writer blocked because the peer does not read returns
// when another goroutine closes the Conn.
func TestCloseEndsABlockedWrite(t *testing.T) {
	agent, _ := pair(t)
	b := NewBatch(0)
	b.Reset(1, 0)
	data := make([]byte, MaxBlockSize)
	for i := range 3 {
		if err := b.Add(uint64(i), MaxBlockSize, CodecNone, 0, data); err != nil {
			t.Fatal(err)
		}
	}
	wrote := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		for seq := uint64(1); ; seq++ {
			b.Reset(seq, 0)
			for i := range 3 {
				_ = b.Add(uint64(i), MaxBlockSize, CodecNone, 0, data)
			}
			if err := agent.WriteMsg(b); err != nil {
				done <- err
				return
			}
			if seq == 64 { // 768 MiB: far past any socket buffer
				wrote <- struct{}{}
			}
		}
	}()
	select {
	case <-wrote:
		t.Fatal("64 frames of 12 MiB went out to a peer that reads nothing")
	default:
	}
	if err := agent.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("close: %v", err)
	}
	if err := <-done; err == nil {
		t.Fatal("the blocked write returned no error")
	}
	if err := agent.Flush(); err == nil {
		t.Fatal("a failed Conn flushed without error")
	}
}

// timeoutOnce returns data in two parts with a timeout between them, as a connection
// with a read deadline does.
type timeoutOnce struct {
	parts [][]byte
	timed bool
}

func (r *timeoutOnce) Read(p []byte) (int, error) {
	if len(r.parts) == 0 {
		return 0, io.EOF
	}
	if len(r.parts) == 1 && !r.timed {
		r.timed = true
		return 0, os.ErrDeadlineExceeded
	}
	n := copy(p, r.parts[0])
	r.parts[0] = r.parts[0][n:]
	if len(r.parts[0]) == 0 {
		r.parts = r.parts[1:]
	}
	return n, nil
}

// TestReadTimeoutKeepsThePartialFrame: a ReadMsg that times out in the middle of a frame
// can be called again and returns the whole frame.
func TestReadTimeoutKeepsThePartialFrame(t *testing.T) {
	f, err := AppendFrame(nil, &Error{Code: CodeStagingFull, Message: "the staging store is full"})
	if err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{3, HeaderSize, HeaderSize + 5, len(f) - 1} {
		c := newReaderConn(&timeoutOnce{parts: [][]byte{bytes.Clone(f[:cut]), bytes.Clone(f[cut:])}})
		if _, err := c.ReadMsg(); !errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, ErrProtocol) {
			t.Fatalf("cut at %d: %v, want the deadline error", cut, err)
		}
		m, err := c.ReadMsg()
		if err != nil {
			t.Fatalf("cut at %d, after the timeout: %v", cut, err)
		}
		if e, ok := m.(*Error); !ok || e.Code != CodeStagingFull {
			t.Fatalf("cut at %d: %#v", cut, m)
		}
	}
}

// TestNetBufGathersUntilFlush checks the layer under TLS on a real TCP connection:
// writes are held until Flush; setting a write deadline (what tls.Conn does around the
// close_notify alert it sends on Close) and Close send what is held.
func TestNetBufGathersUntilFlush(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	nb := newNetBuf(raw)
	nb.batching.Store(true)
	expect := func(want string) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(peer, got); err != nil || string(got) != want {
			t.Fatalf("peer read %q, %v; want %q", got, err, want)
		}
	}
	if _, err := nb.Write([]byte("one ")); err != nil {
		t.Fatal(err)
	}
	if _, err := nb.Write([]byte("two ")); err != nil {
		t.Fatal(err)
	}
	if len(nb.w) != 8 {
		t.Fatalf("netBuf holds %d bytes, want the 8 written", len(nb.w))
	}
	if err := nb.Flush(); err != nil {
		t.Fatal(err)
	}
	expect("one two ")
	if _, err := nb.Write([]byte("alert ")); err != nil {
		t.Fatal(err)
	}
	if err := nb.SetWriteDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	expect("alert ")
	big := bytes.Repeat([]byte("x"), netBufSize+1)
	if _, err := nb.Write([]byte("last")); err != nil {
		t.Fatal(err)
	}
	if _, err := nb.Write(big); err != nil { // flushes "last", then goes straight out
		t.Fatal(err)
	}
	expect("last" + string(big))
	if _, err := nb.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := nb.Close(); err != nil {
		t.Fatal(err)
	}
	expect("bye")
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after Close the peer read %d bytes, %v", n, err)
	}
}
