package store

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// FuzzDecoders feeds arbitrary bytes to every decoder of repository objects: none may
// panic or allocate without bound, whatever it is given.
func FuzzDecoders(f *testing.F) {
	e := entry{ID: ID{1, 2, 3}, Type: blobData, Offset: 8, Length: 100, RawLen: 65536}
	f.Add(encodeTrailer([]entry{e}))
	f.Add(encodeIndex([]packEntries{{Pack: ID{9}, Entries: []entry{e, e}}}))
	f.Add(encodeNode(0, make([]ID, 16)))
	f.Add(encodeJournal(journal{Seq: 3, Size: 1 << 20, Entries: []journalEntry{{Block: 4, ID: ID{5}}}}))
	f.Add(encodeIDs(pendingMagic, []ID{{1}, {2}}))
	f.Add([]byte{0, 0, 0, 40, 'L', 'B', 'P', 'E'})
	f.Add([]byte(`{"version":1,"wrapped":"AAAA"}`))
	pit := PIT{ID: "pit-1", Server: "s-1", Seq: 2, Prev: &PITLink{ID: "pit-0", Digest: strings.Repeat("ab", 32)},
		Volumes: []PITVolume{{Name: "vda", Size: 1 << 20, BlockSize: 65536, HeadVersion: 3}}}
	content, _ := json.Marshal(pit)
	f.Add(encodeManifest(content, time.Unix(1e9, 0)))
	f.Add([]byte(`{"server":"s-1","volume":"vda","size":1048576,"root":"` + strings.Repeat("00", 32) + `","seq":4,"version":5}`))
	f.Add([]byte(`{"server":"s-1","pit":"pit-1","digest":"` + strings.Repeat("ab", 32) + `","lockUntil":"2030-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, content, err := parseManifest(b); err == nil {
			if p.Digest != manifestDigest(content) || p.Seq == 0 || len(p.Volumes) == 0 {
				t.Fatalf("a manifest decoded inconsistently: %+v", p)
			}
			// What decodes encodes back to the same sealed content and digest.
			if q, _, err := parseManifest(encodeManifest(content, p.LockUntil)); err != nil || q.Digest != p.Digest {
				t.Fatalf("a decoded manifest does not survive a rewrite: %v", err)
			}
		}
		if st, err := decodeHeadState(b); err == nil && (st.Version == 0 || st.Size < 0 || st.Size > MaxVolumeBytes) {
			t.Fatalf("a head state decoded out of bounds: %+v", st)
		}
		_, _ = decodeLockRecord("locks/s-1/pit-1", b)
		_, _ = decodeTrailer(b, 1<<20)
		_, _ = decodeIndex(b)
		_, _ = decodeNode(b, 0, 16)
		_, _ = decodeNode(b, 1, 1024)
		_, _ = decodeJournal(b)
		_, _ = decodeIDs(pendingMagic, b)
		if len(b) >= packFooterSize {
			_, _ = decodeFooter(b[:packFooterSize], int64(len(b))+1<<20)
		}
		_, _ = decodeKeyObject(b)
	})
}

// FuzzSealedObjects feeds arbitrary bytes where the repository expects its own
// encrypted objects, chunks and pack trailers: they must be refused, never decoded.
func FuzzSealedObjects(f *testing.F) {
	r, _, _ := newTestRepo(f, testOptions())
	ctx := context.Background()
	h, _ := r.OpenHead(ctx, "s-fz", "vda", 4*testBS, HeadOptions{})
	_ = h.WriteBlocks(ctx, []Block{{Index: 0, Data: content(0, 2)}})
	_, _ = r.SealPIT(ctx, SealRequest{ID: "pit-fz", Server: "s-fz", Time: time.Now(), Level: consistency.Crash, Heads: []*Head{h}})
	good, _ := r.be.Get(ctx, snapshotName("s-fz", "pit-fz"))
	f.Add(good)
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		if plain, err := r.openSealed(snapshotName("s-fz", "pit-fz"), b); err == nil {
			if _, _, err := r.decodeManifest(snapshotName("s-fz", "pit-fz"), plain); err != nil && string(b) != string(good) {
				t.Fatalf("a forged manifest authenticated")
			}
		}
		l := loc{length: uint32(len(b)), rawLen: 65536, typ: blobData}
		if _, err := r.openChunk(b, l, ID{7}, blobData, "data/x", nil); err == nil {
			t.Fatal("random bytes opened as a chunk")
		}
		if _, _, err := r.readTrailerWith("data/x", ID{8}, int64(len(b)), func(off, n int64) ([]byte, error) {
			return b[off : off+n], nil
		}); err == nil {
			t.Fatal("random bytes opened as a pack trailer")
		}
		_, _ = r.codecs.decompress(nil, b, 65536)
	})
}
