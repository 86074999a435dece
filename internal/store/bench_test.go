package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// BenchmarkCheckpoint: the cost of sealing one changed block of a 4 TiB volume with
// 4096 written tables (every PIT checkpoints its heads).
func BenchmarkCheckpoint(b *testing.B) {
	ctx := context.Background()
	r, _, _ := newTestRepo(b, benchOptions())
	const size = 4 << 40
	h, err := r.OpenHead(ctx, "s-bench", "vda", size, HeadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	nleaves := uint64(size / testBS / DefaultFanout)
	for k := uint64(0); k < 4096; k++ {
		blk := k * (nleaves / 4096) * DefaultFanout
		if err := h.WriteBlocks(ctx, []Block{{Index: blk, Data: content(blk, 1)}}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := h.checkpoint(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		blk := uint64(i%4096) * (nleaves / 4096) * DefaultFanout
		if err := h.WriteBlocks(ctx, []Block{{Index: blk, Data: content(blk, uint32(i%5+1))}}); err != nil {
			b.Fatal(err)
		}
		if _, err := h.checkpoint(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadBlock: reading blocks of a PIT through its leaf table.
func BenchmarkReadBlock(b *testing.B) {
	ctx := context.Background()
	r, _, _ := newTestRepo(b, testOptions())
	h, err := r.OpenHead(ctx, "s-bench", "vda", 256*testBS, HeadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var bl []Block
	for k := uint64(0); k < 256; k++ {
		bl = append(bl, Block{Index: k, Data: content(k, 2)})
	}
	if err := h.WriteBlocks(ctx, bl); err != nil {
		b.Fatal(err)
	}
	v := sealedVolume(b, r, h)
	buf := make([]byte, 0, testBS)
	b.SetBytes(testBS)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if buf, err = v.ReadBlock(ctx, uint64(i%256), buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExport: exporting a 256 MiB volume of incompressible blocks to a file, the
// path of a recovery's disk image.
func BenchmarkExport(b *testing.B) {
	ctx := context.Background()
	r, _, _ := newTestRepo(b, benchOptions())
	const nblocks = 4096
	h, err := r.OpenHead(ctx, "s-bench", "vda", nblocks*testBS, HeadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for k := uint64(0); k < nblocks; k += 64 {
		var bl []Block
		for i := k; i < k+64; i++ {
			if i%16 != 15 { // one block in 16 is a hole
				bl = append(bl, Block{Index: i, Data: content(i, 1)})
			}
		}
		if err := h.WriteBlocks(ctx, bl); err != nil {
			b.Fatal(err)
		}
	}
	v := sealedVolume(b, r, h)
	path := filepath.Join(b.TempDir(), "export.img")
	b.SetBytes(nblocks * testBS)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		st, err := v.Export(ctx, f, ExportOptions{})
		f.Close()
		if err != nil || st.WrittenBlocks != nblocks-nblocks/16 {
			b.Fatalf("export: %+v %v", st, err)
		}
	}
}

// sealedVolume seals h's server into a PIT and opens its volume vda.
func sealedVolume(b *testing.B, r *Repo, h *Head) *VolumeReader {
	ctx := context.Background()
	p, err := r.SealPIT(ctx, SealRequest{ID: "pit-b", Server: h.Server(), Level: consistency.Crash, Heads: []*Head{h}})
	if err != nil {
		b.Fatal(err)
	}
	v, err := r.OpenVolume(ctx, p, "vda")
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// benchOptions are the test options with the production fanout and pack size.
func benchOptions() Options {
	opts := testOptions()
	opts.Fanout = DefaultFanout
	opts.PackSize = DefaultPackSize
	return opts
}
