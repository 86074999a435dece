package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// streamVolume is the volume the stream tests replicate: 1000 blocks of 4 KiB and a
// last block of 1234 bytes.
const (
	streamBlockSize = MinBlockSize
	streamBlocks    = 1001
	streamSize      = (streamBlocks-1)*streamBlockSize + 1234
)

// entryFor is the deterministic content of entry i of frame seq: its block number, raw
// data and the codec to send it with. Both ends compute it: the receiver checks that
// every payload arrives intact and in order.
func entryFor(seq uint64, i int, buf []byte) (uint64, []byte, Codec) {
	block := (seq*3 + uint64(i)) % streamBlocks
	n := streamBlockSize
	if block == streamBlocks-1 {
		n = streamSize % streamBlockSize
	}
	raw := buf[:n]
	x := seq*0x9e3779b97f4a7c15 + uint64(i) + 1
	switch (seq + uint64(i)) % 4 {
	case 0: // incompressible
		for j := 0; j+8 <= n; j += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(raw[j:], x)
		}
		for j := n &^ 7; j < n; j++ {
			raw[j] = byte(x >> (j % 8))
		}
		return block, raw, CodecNone
	case 1, 3: // compressible
		for j := range raw {
			raw[j] = byte(x>>(j/512%8)) ^ byte(j/1024)
		}
		return block, raw, CodecS2
	default:
		clear(raw)
		return block, raw, CodecZero
	}
}

func entriesIn(seq uint64) int { return 1 + int(seq%3) }

// fillBatch builds frame seq carrying the entries of content (seq, unless the frame is
// resent in a later session) the way an agent does: compressing straight into the batch.
func fillBatch(t testing.TB, b *Batch, seq, content uint64, scratch []byte) {
	b.Reset(seq, 0)
	for i := range entriesIn(content) {
		block, raw, codec := entryFor(content, i, scratch)
		h := Hash(raw)
		switch codec {
		case CodecS2:
			dst, err := b.Reserve(s2.MaxEncodedLen(len(raw)))
			if err != nil {
				t.Error(err)
				return
			}
			enc := s2.Encode(dst, raw)
			if len(enc) > len(raw) {
				err = b.Add(block, uint32(len(raw)), CodecNone, h, raw)
			} else {
				err = b.Commit(block, uint32(len(raw)), CodecS2, h, enc)
			}
			if err != nil {
				t.Error(err)
			}
		case CodecZero:
			if err := b.Add(block, uint32(len(raw)), CodecZero, h, nil); err != nil {
				t.Error(err)
			}
		default:
			if err := b.Add(block, uint32(len(raw)), codec, h, raw); err != nil {
				t.Error(err)
			}
		}
	}
}

// checkBlocks decodes every entry of m and compares it with what frame m.Seq carried
// when it was sent as frame origSeq.
func checkBlocks(m *Blocks, origSeq uint64, scratch, out []byte) error {
	if len(m.Entries) != entriesIn(origSeq) {
		return fmt.Errorf("frame %d: %d entries, want %d", m.Seq, len(m.Entries), entriesIn(origSeq))
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		block, want, _ := entryFor(origSeq, i, scratch)
		var raw []byte
		switch e.Codec {
		case CodecNone:
			raw = e.Payload
		case CodecS2:
			var err error
			if raw, err = s2.Decode(out, e.Payload); err != nil {
				return fmt.Errorf("frame %d entry %d: %w", m.Seq, i, err)
			}
		case CodecZero:
			raw = out[:e.RawLen]
			clear(raw)
		default:
			return fmt.Errorf("frame %d entry %d: unexpected codec %v", m.Seq, i, e.Codec)
		}
		if err := e.VerifyRaw(raw); err != nil {
			return fmt.Errorf("frame %d entry %d: %w", m.Seq, i, err)
		}
		if e.Block != block || !bytes.Equal(raw, want) {
			return fmt.Errorf("frame %d entry %d: block %d differs from what was sent (block %d)", m.Seq, i, e.Block, block)
		}
	}
	return nil
}

// pair is an agent and a replicator connected over real mutual TLS on 127.0.0.1.
func pair(t testing.TB) (agent, replicator *Conn) {
	t.Helper()
	ca := newTestCA(t)
	now := time.Now()
	repCert := ca.issue(t, replicatorIdentity(), []string{"127.0.0.1"}, now)
	addr, acc := serve(t, ServerTLSConfig(repCert, ca.agents(), testAccount))
	c, err := Dial(t.Context(), addr, ClientTLSConfig(ca.issue(t, agentIdentity(), nil, now), ca.replicators(), "127.0.0.1", assigned(t, repCert)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := <-acc
	if a.err != nil {
		t.Fatal(a.err)
	}
	return c, a.conn
}

func streamHello() *Hello {
	return &Hello{Version: 1, SourceServerID: agentServerID, AgentVersion: "test", Tracker: "ebpf", TrackerGeneration: 3,
		Volumes: []Volume{{Name: "vdb", SizeBytes: streamSize, BlockSize: 512}}}
}

func streamWelcome() *Welcome {
	// A window of four batches: the agent waits for acks all the time.
	return &Welcome{Version: 1, BlockSize: streamBlockSize, WindowBytes: 64 << 10, MaxBatchBytes: 16 << 10, Volumes: []Replica{{}}}
}

// handshake runs Hello/Welcome on both sides and returns the session the replicator
// checks frames with.
func handshake(t testing.TB, agent, rep *Conn) *Session {
	t.Helper()
	if err := agent.WriteMsg(streamHello()); err != nil {
		t.Fatal(err)
	}
	if err := agent.Flush(); err != nil {
		t.Fatal(err)
	}
	m, err := rep.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	hello := m.(*Hello)
	peer, err := PeerIdentity(rep.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	if err := hello.CheckPeer(peer); err != nil {
		t.Fatal(err)
	}
	w := streamWelcome()
	sess, err := NewSession(hello, w)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteMsg(w); err != nil {
		t.Fatal(err)
	}
	if err := rep.Flush(); err != nil {
		t.Fatal(err)
	}
	rep.SetMaxPayload(int(w.MaxBatchBytes))
	if m, err = agent.ReadMsg(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSession(streamHello(), m.(*Welcome)); err != nil {
		t.Fatal(err)
	}
	return sess
}

// replicatorWriter writes what the replicator's reader queues, flushing when the queue
// is empty: the replicator's acks arrive while the agent is still sending.
func replicatorWriter(rep *Conn, out <-chan Msg, errs chan<- error) {
	var err error
	for m := range out {
		if err == nil {
			err = rep.WriteMsg(m)
		}
		if err == nil && len(out) == 0 {
			err = rep.Flush()
		}
	}
	errs <- err
}

// TestPipelinedStream sends 10,000 Blocks frames and a Marker from an agent to a
// replicator over mutual TLS, with a window of four batches, acks flowing back
// concurrently: every payload must arrive intact and in order, the Marker must be
// sealed, and nothing may stay unacknowledged.
func TestPipelinedStream(t *testing.T) {
	const frames = 10000
	agent, rep := pair(t)
	sess := handshake(t, agent, rep)

	// The replicator: check each frame as it is read (payloads alias the read buffer),
	// ack it, seal the marker, answer Goodbye. On a failure it closes the connection, so
	// the agent stops too and the test reports the cause.
	repDone := make(chan error, 2)
	out := make(chan Msg, 128)
	go replicatorWriter(rep, out, repDone)
	go func() {
		defer close(out)
		err := func() error {
			scratch, dec := make([]byte, streamBlockSize), make([]byte, streamBlockSize)
			var received int
			for {
				m, err := rep.ReadMsg()
				if err != nil {
					return fmt.Errorf("replicator read: %w", err)
				}
				if err := sess.Check(m); err != nil {
					return err
				}
				switch m := m.(type) {
				case *Blocks:
					if err := checkBlocks(m, m.Seq, scratch, dec); err != nil {
						return err
					}
					received++
					out <- &Ack{Seq: m.Seq}
				case *Marker:
					if received != frames {
						return fmt.Errorf("marker after %d frames, want %d", received, frames)
					}
					out <- &Ack{Seq: m.Seq}
					out <- &Sealed{MarkerID: m.ID, PITID: "pit-0000000000000001"}
				case *Goodbye:
					out <- &Goodbye{}
					return nil
				default:
					return fmt.Errorf("replicator got an unexpected %v", m.Type())
				}
			}
		}()
		if err != nil {
			rep.Close()
		}
		repDone <- err
	}()

	// The agent's reader: acks into the window, Sealed and Goodbye to the sender. When
	// it stops on an error it cancels the sender.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	win := NewWindow(streamWelcome().WindowBytes)
	sealed := make(chan *Sealed, 1)
	agentDone := make(chan error, 1)
	go func() {
		err := func() error {
			for {
				m, err := agent.ReadMsg()
				if err != nil {
					return fmt.Errorf("agent read: %w", err)
				}
				switch m := m.(type) {
				case *Ack:
					if err := win.Ack(m.Seq); err != nil {
						return err
					}
				case *Sealed:
					sealed <- m
				case *Goodbye:
					return nil
				default:
					return fmt.Errorf("agent got an unexpected %v", m.Type())
				}
			}
		}()
		if err != nil {
			cancel()
		}
		agentDone <- err
	}()

	// The agent's sender.
	sendErr := func() error {
		send := func(seq uint64, n int, m Msg) error {
			if !win.Fits(n) {
				if err := agent.Flush(); err != nil {
					return err
				}
			}
			if err := win.Send(ctx, seq, n); err != nil {
				return err
			}
			return agent.WriteMsg(m)
		}
		b := NewBatch(int(streamWelcome().MaxBatchBytes))
		scratch := make([]byte, streamBlockSize)
		for seq := uint64(1); seq <= frames; seq++ {
			fillBatch(t, b, seq, seq, scratch)
			if err := send(seq, b.PayloadLen(), b); err != nil {
				return err
			}
		}
		marker := &Marker{Seq: frames + 1, ID: 77, TimeUnixNano: time.Now().UnixNano(), Level: consistency.Filesystem, FreezeMicros: 900, VolumeSizes: []uint64{streamSize}}
		if err := send(marker.Seq, marker.PayloadLen(), marker); err != nil {
			return err
		}
		if err := agent.Flush(); err != nil {
			return err
		}
		if err := win.Drain(ctx); err != nil {
			return err
		}
		select {
		case s := <-sealed:
			if s.MarkerID != 77 || s.PITID != "pit-0000000000000001" {
				return fmt.Errorf("sealed %+v", s)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := agent.WriteMsg(&Goodbye{}); err != nil {
			return err
		}
		return agent.Flush()
	}()
	if sendErr != nil {
		agent.Close()
		t.Errorf("agent send: %v", sendErr)
	}
	for range 2 {
		if err := <-repDone; err != nil {
			t.Error(err)
		}
	}
	if err := <-agentDone; err != nil {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	if u := win.Unacked(); len(u) != 0 || win.InFlight() != 0 || win.Acked() != frames+1 {
		t.Fatalf("after the stream: unacked %v, in flight %d, acked %d", u, win.InFlight(), win.Acked())
	}
	if sess.LastSeq() != frames+1 {
		t.Fatalf("replicator checked up to %d", sess.LastSeq())
	}
}

// TestDisconnectResumes cuts the connection after the replicator acknowledged only part
// of what was sent: the window lists exactly the unacknowledged frames, and a new
// session resends their blocks (numbered from 1 again) until all are acknowledged.
func TestDisconnectResumes(t *testing.T) {
	const sent, durable = 100, 37
	agent, rep := pair(t)
	handshake(t, agent, rep)

	// First session: the replicator reads everything, acks up to `durable`, and dies.
	repDone := make(chan error, 1)
	go func() {
		for range sent {
			if _, err := rep.ReadMsg(); err != nil {
				repDone <- err
				return
			}
		}
		if err := rep.WriteMsg(&Ack{Seq: durable}); err != nil {
			repDone <- err
			return
		}
		if err := rep.Flush(); err != nil {
			repDone <- err
			return
		}
		repDone <- rep.Close()
	}()
	win := NewWindow(1 << 30)
	b := NewBatch(int(streamWelcome().MaxBatchBytes))
	scratch := make([]byte, streamBlockSize)
	bytesOf := map[uint64]uint64{}
	for seq := uint64(1); seq <= sent; seq++ {
		fillBatch(t, b, seq, seq, scratch)
		if err := win.Send(t.Context(), seq, b.PayloadLen()); err != nil {
			t.Fatal(err)
		}
		bytesOf[seq] = uint64(b.PayloadLen())
		if err := agent.WriteMsg(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := agent.Flush(); err != nil {
		t.Fatal(err)
	}
	var readErr error
	for readErr == nil {
		var m Msg
		if m, readErr = agent.ReadMsg(); readErr == nil {
			if a, ok := m.(*Ack); !ok {
				t.Fatalf("agent got %v", m.Type())
			} else if err := win.Ack(a.Seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := <-repDone; err != nil {
		t.Fatal(err)
	}
	unacked := win.Unacked()
	var want []uint64
	var inFlight uint64
	for seq := uint64(durable + 1); seq <= sent; seq++ {
		want = append(want, seq)
		inFlight += bytesOf[seq]
	}
	if !slices.Equal(unacked, want) || win.InFlight() != inFlight {
		t.Fatalf("after the disconnect (%v): unacked %v (%d bytes), want %v (%d bytes)", readErr, unacked, win.InFlight(), want, inFlight)
	}

	// Second session: resend what was not acknowledged, as new frames from 1.
	agent2, rep2 := pair(t)
	sess := handshake(t, agent2, rep2)
	check := make(chan error, 1)
	go func() {
		scratch, dec := make([]byte, streamBlockSize), make([]byte, streamBlockSize)
		for i, orig := range unacked {
			m, err := rep2.ReadMsg()
			if err == nil {
				err = sess.Check(m)
			}
			if err == nil {
				err = checkBlocks(m.(*Blocks), orig, scratch, dec)
			}
			if err == nil && i == len(unacked)-1 {
				if err = rep2.WriteMsg(&Ack{Seq: m.(*Blocks).Seq}); err == nil {
					err = rep2.Flush()
				}
			}
			if err != nil {
				check <- err
				return
			}
		}
		check <- nil
	}()
	win2 := NewWindow(1 << 30)
	for i, orig := range unacked {
		fillBatch(t, b, uint64(i+1), orig, scratch)
		if err := win2.Send(t.Context(), uint64(i+1), b.PayloadLen()); err != nil {
			t.Fatal(err)
		}
		if err := agent2.WriteMsg(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := agent2.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := <-check; err != nil {
		t.Fatal(err)
	}
	m, err := agent2.ReadMsg()
	if err != nil {
		t.Fatal(err)
	}
	if err := win2.Ack(m.(*Ack).Seq); err != nil {
		t.Fatal(err)
	}
	if len(win2.Unacked()) != 0 {
		t.Fatalf("second session left %v unacknowledged", win2.Unacked())
	}
	if err := win2.Ack(uint64(len(unacked) + 1)); !errors.Is(err, ErrProtocol) {
		t.Fatalf("an Ack of a frame never sent: %v", err)
	}
}
