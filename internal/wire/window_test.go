package wire

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
)

func TestWindowWaitsForAcks(t *testing.T) {
	w := NewWindow(100)
	ctx := t.Context()
	if err := w.Send(ctx, 1, 60); err != nil {
		t.Fatal(err)
	}
	if err := w.Send(ctx, 2, 40); err != nil {
		t.Fatal(err)
	}
	if w.InFlight() != 100 || w.Fits(1) || !w.Fits(0) {
		t.Fatalf("in flight %d; Fits(1) %v", w.InFlight(), w.Fits(1))
	}
	// Full: a Send whose context ends returns its error and records nothing.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := w.Send(cancelled, 3, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send on a full window with a cancelled context: %v", err)
	}
	if u := w.Unacked(); !slices.Equal(u, []uint64{1, 2}) {
		t.Fatalf("unacked %v after a cancelled Send", u)
	}
	// A waiting Send goes on when an Ack frees enough room.
	done := make(chan error, 1)
	go func() { done <- w.Send(ctx, 3, 50) }()
	select {
	case err := <-done:
		t.Fatalf("Send of 50 bytes into a full window returned before any Ack: %v", err)
	default:
	}
	if err := w.Ack(1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if u := w.Unacked(); !slices.Equal(u, []uint64{2, 3}) || w.InFlight() != 90 {
		t.Fatalf("unacked %v, in flight %d; want [2 3], 90", u, w.InFlight())
	}
	// Acks are cumulative.
	if err := w.Ack(3); err != nil {
		t.Fatal(err)
	}
	if len(w.Unacked()) != 0 || w.InFlight() != 0 || w.Acked() != 3 {
		t.Fatalf("after Ack(3): unacked %v, in flight %d, acked %d", w.Unacked(), w.InFlight(), w.Acked())
	}
	// An old Ack changes nothing; an Ack of what was never sent is a violation.
	if err := w.Ack(2); err != nil || w.Acked() != 3 {
		t.Fatalf("an older Ack: %v, acked %d", err, w.Acked())
	}
	if err := w.Ack(4); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Ack of sequence 4, never sent: %v", err)
	}
	// Sequence numbers must increase; a frame larger than the window can never go.
	if err := w.Send(ctx, 3, 1); err == nil {
		t.Fatal("Send reused sequence 3")
	}
	if err := w.Send(ctx, 9, 101); err == nil {
		t.Fatal("Send accepted a frame larger than the window")
	}
	if err := w.Send(ctx, 9, 100); err != nil {
		t.Fatalf("a gap in sequence numbers is the agent's business: %v", err)
	}
}

func TestWindowDrain(t *testing.T) {
	w := NewWindow(1 << 20)
	ctx := t.Context()
	if err := w.Drain(ctx); err != nil {
		t.Fatalf("an empty window: %v", err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if err := w.Send(ctx, seq, 10); err != nil {
			t.Fatal(err)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := w.Drain(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("Drain with frames in flight and a cancelled context: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Drain(ctx) }()
	if err := w.Ack(2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Drain returned with frame 3 in flight: %v", err)
	default:
	}
	if err := w.Ack(3); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestWindowConcurrent runs a sender and an acker at once over many frames (the
// compaction of the frame list included): at the end every frame is acknowledged and
// the sender never had more than the limit in flight.
func TestWindowConcurrent(t *testing.T) {
	const frames, limit = 20000, 10 * 1000
	w := NewWindow(limit)
	ctx := t.Context()
	sent := make(chan uint64, frames)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := range sent {
			if seq%7 == 0 || seq == frames { // acks arrive for some frames only
				if err := w.Ack(seq); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	for seq := uint64(1); seq <= frames; seq++ {
		if err := w.Send(ctx, seq, 1000); err != nil {
			t.Fatal(err)
		}
		if f := w.InFlight(); f > limit {
			t.Fatalf("%d bytes in flight, limit %d", f, limit)
		}
		sent <- seq
	}
	close(sent)
	wg.Wait()
	if len(w.Unacked()) != 0 || w.InFlight() != 0 || w.Acked() != frames {
		t.Fatalf("unacked %d frames, %d bytes, acked %d", len(w.Unacked()), w.InFlight(), w.Acked())
	}
}

// TestWindowUnackedAfterManyAcks checks the list of unacknowledged frames after the
// window compacted its records.
func TestWindowUnackedAfterManyAcks(t *testing.T) {
	w := NewWindow(1 << 40)
	for seq := uint64(1); seq <= 5000; seq++ {
		if err := w.Send(t.Context(), seq, int(seq)); err != nil {
			t.Fatal(err)
		}
		if seq%10 == 0 {
			if err := w.Ack(seq - 5); err != nil {
				t.Fatal(err)
			}
		}
	}
	u := w.Unacked()
	if len(u) != 5 || u[0] != 4996 || u[4] != 5000 {
		t.Fatalf("unacked %v, want 4996..5000", u)
	}
	if want := uint64(4996 + 4997 + 4998 + 4999 + 5000); w.InFlight() != want {
		t.Fatalf("in flight %d, want %d", w.InFlight(), want)
	}
}
