package wire

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkBlocksThroughput measures the agent → replicator path for 64 KiB blocks
// (codec none: incompressible data) over mutual TLS 1.3 on 127.0.0.1: Batch encoding,
// Window accounting, TLS, ReadMsg decoding, and an Ack per frame flowing back. Both
// ends run in this process, so the figure is what one machine's cores give to both.
// Run: go test -run '^$' -bench BlocksThroughput ./internal/wire/
func BenchmarkBlocksThroughput(b *testing.B) {
	for _, perBatch := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("blocks-per-frame=%d", perBatch), func(b *testing.B) {
			benchStream(b, perBatch)
		})
	}
}

func benchStream(b *testing.B, perBatch int) {
	const blockSize = 64 << 10
	agent, rep := pair(b)
	raw := make([]byte, blockSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range raw {
		raw[i] = byte(rng.Uint32())
	}
	hash := Hash(raw)
	win := NewWindow(64 << 20)

	// The replicator: read every frame, count its blocks, ack it.
	received := make(chan int, 1)
	go func() {
		n := 0
		for {
			m, err := rep.ReadMsg()
			if err != nil {
				received <- n
				return
			}
			if bl, ok := m.(*Blocks); ok {
				n += len(bl.Entries)
				if err := rep.WriteMsg(&Ack{Seq: bl.Seq}); err != nil {
					received <- n
					return
				}
				if err := rep.Flush(); err != nil {
					received <- n
					return
				}
			}
		}
	}()
	// The agent's ack reader.
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	go func() {
		defer cancel()
		for {
			m, err := agent.ReadMsg()
			if err != nil {
				return
			}
			if a, ok := m.(*Ack); ok && win.Ack(a.Seq) != nil {
				return
			}
		}
	}()

	batch := NewBatch(MaxPayload)
	b.SetBytes(blockSize)
	b.ReportAllocs()
	b.ResetTimer()
	seq := uint64(0)
	for sent := 0; sent < b.N; {
		seq++
		batch.Reset(seq, 0)
		for i := 0; i < perBatch && sent < b.N; i++ {
			if err := batch.Add(uint64(sent), blockSize, CodecNone, hash, raw); err != nil {
				b.Fatal(err)
			}
			sent++
		}
		if !win.Fits(batch.PayloadLen()) {
			if err := agent.Flush(); err != nil {
				b.Fatal(err)
			}
		}
		if err := win.Send(ctx, seq, batch.PayloadLen()); err != nil {
			b.Fatal(err)
		}
		if err := agent.WriteMsg(batch); err != nil {
			b.Fatal(err)
		}
	}
	if err := agent.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := win.Drain(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	agent.Close()
	if n := <-received; n != b.N {
		b.Fatalf("replicator received %d blocks, want %d", n, b.N)
	}
}
