package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"
)

// The volume export stream (docs/recovery.md, "Exporting through the control plane") is
// what GET /api/v1/recovery-snapshots/{id}/volumes/{name} answers: the volume's size,
// then only its non-zero regions in ascending order, then a trailer whose SHA-256 covers
// everything before it, so that a truncated or altered stream is detected.
//
//	header  = "LBEXTV1\n" ‖ size (u64) ‖ block size (u32)
//	extent  = 'E' ‖ offset (u64) ‖ length (u32) ‖ length bytes
//	trailer = 'T' ‖ extents (u64) ‖ data bytes (u64) ‖ SHA-256 of every byte before it
//
// Integers are big-endian. Extents do not overlap, lie inside the volume and are at most
// MaxExtentBytes long; what no extent covers is zeros.
const (
	ExtentContentType = "application/vnd.lifeboat.extents"
	MaxExtentBytes    = 4 << 20
	// maxExportBytes bounds the size a stream may claim (1 EiB).
	maxExportBytes = 1 << 60
	extentMagic    = "LBEXTV1\n"
	extentHeadLen  = len(extentMagic) + 8 + 4
	extentTag      = 'E'
	trailerTag     = 'T'
)

// ErrBadExtents means an export stream is malformed, altered or cut short.
var ErrBadExtents = errors.New("the volume export stream is malformed or incomplete")

// ExtentHeader opens an export stream.
type ExtentHeader struct {
	Size      int64 // bytes of the volume
	BlockSize int   // the store's block size (what the repository reads in)
}

func (h ExtentHeader) valid() bool {
	return h.Size >= 0 && h.Size <= maxExportBytes && h.BlockSize >= 512 && h.BlockSize <= 16<<20 && h.BlockSize&(h.BlockSize-1) == 0
}

// ExtentWriter writes an export stream.
type ExtentWriter struct {
	w         io.Writer
	sum       hash.Hash
	hdr       ExtentHeader
	next      int64 // end of the last extent
	extents   uint64
	dataBytes uint64
	closed    bool
}

// NewExtentWriter writes the header to w.
func NewExtentWriter(w io.Writer, hdr ExtentHeader) (*ExtentWriter, error) {
	if !hdr.valid() {
		return nil, fmt.Errorf("export of %d bytes with blocks of %d bytes: %w", hdr.Size, hdr.BlockSize, ErrBadExtents)
	}
	x := &ExtentWriter{w: w, sum: sha256.New(), hdr: hdr}
	b := make([]byte, 0, extentHeadLen)
	b = append(b, extentMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(hdr.Size))
	b = binary.BigEndian.AppendUint32(b, uint32(hdr.BlockSize))
	return x, x.write(b)
}

func (x *ExtentWriter) write(b []byte) error {
	x.sum.Write(b)
	_, err := x.w.Write(b)
	return err
}

// Extent writes data at off, in extents of at most MaxExtentBytes. Regions must come
// in ascending order without overlap and lie inside the volume.
func (x *ExtentWriter) Extent(off int64, data []byte) error {
	if x.closed || off < x.next || off > x.hdr.Size || int64(len(data)) > x.hdr.Size-off {
		return fmt.Errorf("extent [%d, +%d) after %d in a volume of %d bytes: %w", off, len(data), x.next, x.hdr.Size, ErrBadExtents)
	}
	var head [13]byte
	for len(data) > 0 {
		n := min(len(data), MaxExtentBytes)
		head[0] = extentTag
		binary.BigEndian.PutUint64(head[1:], uint64(off))
		binary.BigEndian.PutUint32(head[9:], uint32(n))
		if err := x.write(head[:]); err != nil {
			return err
		}
		if err := x.write(data[:n]); err != nil {
			return err
		}
		x.extents++
		x.dataBytes += uint64(n)
		off += int64(n)
		data = data[n:]
	}
	x.next = off
	return nil
}

// Close writes the trailer; the stream is complete only then. It does not close w.
func (x *ExtentWriter) Close() error {
	if x.closed {
		return nil
	}
	x.closed = true
	b := make([]byte, 0, 17+sha256.Size)
	b = append(b, trailerTag)
	b = binary.BigEndian.AppendUint64(b, x.extents)
	b = binary.BigEndian.AppendUint64(b, x.dataBytes)
	x.sum.Write(b)
	b = x.sum.Sum(b)
	_, err := x.w.Write(b)
	return err
}

// ExtentReader reads an export stream, checking it as it goes. Every outside value is
// bounded: the size claimed, each extent's place and length (so memory stays at
// MaxExtentBytes), and nothing may follow the trailer.
type ExtentReader struct {
	r         io.Reader
	sum       hash.Hash
	hdr       ExtentHeader
	next      int64
	extents   uint64
	dataBytes uint64
	buf       []byte
	done      bool
}

// NewExtentReader reads and checks the header.
func NewExtentReader(r io.Reader) (*ExtentReader, error) {
	x := &ExtentReader{r: r, sum: sha256.New()}
	var b [extentHeadLen]byte
	if err := x.read(b[:]); err != nil {
		return nil, err
	}
	if string(b[:len(extentMagic)]) != extentMagic {
		return nil, fmt.Errorf("it does not start with %q: %w", strings.TrimSpace(extentMagic), ErrBadExtents)
	}
	size := binary.BigEndian.Uint64(b[len(extentMagic):])
	x.hdr = ExtentHeader{Size: int64(size & (1<<63 - 1)), BlockSize: int(binary.BigEndian.Uint32(b[len(extentMagic)+8:]))}
	if size > maxExportBytes || !x.hdr.valid() {
		return nil, fmt.Errorf("its header claims %d bytes in blocks of %d: %w", size, x.hdr.BlockSize, ErrBadExtents)
	}
	return x, nil
}

// read fills b from the stream and adds it to the digest.
func (x *ExtentReader) read(b []byte) error {
	if _, err := io.ReadFull(x.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("it ended early (cut short): %w", ErrBadExtents)
		}
		return fmt.Errorf("reading the volume export stream: %w", err)
	}
	x.sum.Write(b)
	return nil
}

// Header is the stream's header.
func (x *ExtentReader) Header() ExtentHeader { return x.hdr }

// Next returns the next extent: its offset and data (valid until the next call). After
// the last one it returns io.EOF, once the trailer is checked: counts, digest, and
// nothing after it. Any other error means the stream cannot be trusted.
func (x *ExtentReader) Next() (int64, []byte, error) {
	if x.done {
		return 0, nil, io.EOF
	}
	var tag [1]byte
	if err := x.read(tag[:]); err != nil {
		return 0, nil, err
	}
	switch tag[0] {
	case extentTag:
		var h [12]byte
		if err := x.read(h[:]); err != nil {
			return 0, nil, err
		}
		off, n := binary.BigEndian.Uint64(h[:]), binary.BigEndian.Uint32(h[8:])
		if n == 0 || n > MaxExtentBytes || off < uint64(x.next) || off > uint64(x.hdr.Size) || uint64(n) > uint64(x.hdr.Size)-off {
			return 0, nil, fmt.Errorf("extent [%d, +%d) after %d in a volume of %d bytes: %w", off, n, x.next, x.hdr.Size, ErrBadExtents)
		}
		if cap(x.buf) < int(n) {
			x.buf = make([]byte, n)
		}
		x.buf = x.buf[:n]
		if err := x.read(x.buf); err != nil {
			return 0, nil, err
		}
		x.next = int64(off) + int64(n)
		x.extents++
		x.dataBytes += uint64(n)
		return int64(off), x.buf, nil
	case trailerTag:
		return 0, nil, x.trailer()
	}
	return 0, nil, fmt.Errorf("unknown record %#x: %w", tag[0], ErrBadExtents)
}

func (x *ExtentReader) trailer() error {
	var counts [16]byte
	if err := x.read(counts[:]); err != nil {
		return err
	}
	want := x.sum.Sum(nil)
	var got [sha256.Size]byte
	if _, err := io.ReadFull(x.r, got[:]); err != nil {
		return fmt.Errorf("its trailer is cut short: %w", ErrBadExtents)
	}
	if binary.BigEndian.Uint64(counts[:]) != x.extents || binary.BigEndian.Uint64(counts[8:]) != x.dataBytes {
		return fmt.Errorf("its trailer counts %d extents of %d bytes, the stream held %d of %d: %w",
			binary.BigEndian.Uint64(counts[:]), binary.BigEndian.Uint64(counts[8:]), x.extents, x.dataBytes, ErrBadExtents)
	}
	if !bytes.Equal(got[:], want) {
		return fmt.Errorf("its SHA-256 does not match what was received: %w", ErrBadExtents)
	}
	var extra [1]byte
	if n, _ := io.ReadFull(x.r, extra[:]); n > 0 {
		return fmt.Errorf("data follows its trailer: %w", ErrBadExtents)
	}
	x.done = true
	return io.EOF
}

// ExportVolume streams a volume of a recovery snapshot (role operator; audited). The
// caller reads the answer with NewExtentReader and closes it.
func (c *Client) ExportVolume(ctx context.Context, snapshotID, volume string) (io.ReadCloser, error) {
	return c.openStream(ctx, "GET", "/api/v1/recovery-snapshots/"+esc(snapshotID)+"/volumes/"+esc(volume), nil, ExtentContentType)
}

// openStream sends a request whose 200 answer is a stream of contentType, read by the
// caller without the client's timeout; any other answer becomes an *Error.
func (c *Client) openStream(ctx context.Context, method, path string, body any, contentType string) (io.ReadCloser, error) {
	req, err := c.newRequest(ctx, method, path, nil, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", contentType)
	resp, err := c.stream.Do(req)
	if err != nil {
		return nil, c.transportError(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp.Body, nil
}

// StagingStoreKey asks, as replicator id, for the key of a staging store of its account.
func (c *Client) StagingStoreKey(ctx context.Context, id string, req StagingStoreKeyRequest) (StagingStoreKeyResponse, error) {
	var out StagingStoreKeyResponse
	return out, c.do(ctx, "POST", "/api/v1/replicators/"+esc(id)+"/store-key", nil, req, &out)
}

// ExportFileName is the file a volume is exported to: <volume>.img. A volume name that
// is not a plain file name (a path, ".", "..", control characters) is refused: volume
// names come from source servers, and an export must stay inside its directory.
func ExportFileName(volume string) (string, error) {
	if volume == "" || volume == "." || volume == ".." || len(volume) > 250 || strings.ContainsAny(volume, `/\`) ||
		!printableRE.MatchString(volume) {
		return "", fmt.Errorf("volume name %q is not a plain file name: refusing to export it (it comes from the source server)", volume)
	}
	return volume + ".img", nil
}
