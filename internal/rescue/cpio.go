package rescue

import (
	"fmt"
	"io"
	"io/fs"
	"math"
	"strings"
)

// cpioWriter writes an uncompressed cpio archive in the "newc" format (the SVR4 format
// without checksums), the one the kernel unpacks as an initramfs: for each entry a
// 110-byte ASCII header ("070701" then 13 fields of 8 hex digits), the name with its NUL,
// padded to 4 bytes, then the data, padded to 4 bytes; a "TRAILER!!!" entry ends it.
// Every entry is owned by root with mtime 0, so the same inputs make the same bytes.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error // the first write error; every later call returns it
}

func newCpioWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w} }

// File modes as cpio stores them (the st_mode bits, not Go's fs.FileMode bits).
const (
	cpioTypeDir  = 0o040000
	cpioTypeFile = 0o100000
	cpioTypeChar = 0o020000
)

const cpioTrailer = "TRAILER!!!"

// dir adds a directory.
func (c *cpioWriter) dir(name string, perm fs.FileMode) error {
	return c.entry(name, cpioTypeDir|cpioPerm(perm), 2, 0, 0, 0, nil)
}

// file adds a regular file of size bytes read from r.
func (c *cpioWriter) file(name string, perm fs.FileMode, size int64, r io.Reader) error {
	return c.entry(name, cpioTypeFile|cpioPerm(perm), 1, size, 0, 0, r)
}

// charDevice adds a character device node.
func (c *cpioWriter) charDevice(name string, perm fs.FileMode, major, minor uint32) error {
	return c.entry(name, cpioTypeChar|cpioPerm(perm), 1, 0, major, minor, nil)
}

// close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) close() error {
	return c.entry(cpioTrailer, 0, 1, 0, 0, 0, nil)
}

// cpioPerm keeps the permission bits, with setuid, setgid and sticky as st_mode has them.
func cpioPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

func (c *cpioWriter) entry(name string, mode, nlink uint32, size int64, rmajor, rminor uint32, r io.Reader) error {
	if c.err != nil {
		return c.err
	}
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsRune(name, 0) {
		return fmt.Errorf("cpio: bad entry name %q", name)
	}
	if size < 0 || size > math.MaxUint32 {
		return fmt.Errorf("cpio: %s: %d bytes is more than the format's 4 GiB", name, size)
	}
	c.ino++
	ino := c.ino
	if name == cpioTrailer {
		ino = 0
	}
	fields := []uint32{ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rmajor, rminor, uint32(len(name) + 1), 0}
	var hdr strings.Builder
	hdr.WriteString("070701")
	for _, f := range fields {
		fmt.Fprintf(&hdr, "%08x", f)
	}
	hdr.WriteString(name)
	hdr.WriteByte(0)
	hdr.WriteString(strings.Repeat("\x00", pad4(hdr.Len())))
	if _, c.err = io.WriteString(c.w, hdr.String()); c.err != nil {
		return c.err
	}
	if size > 0 {
		n, err := io.Copy(c.w, io.LimitReader(r, size))
		switch {
		case err != nil:
			c.err = fmt.Errorf("cpio: %s: %w", name, err)
		case n != size:
			c.err = fmt.Errorf("cpio: %s: %d bytes instead of %d: did it change while it was read?", name, n, size)
		}
		if c.err != nil {
			return c.err
		}
	}
	_, c.err = c.w.Write(make([]byte, pad4(int(size%4))))
	return c.err
}

// pad4 is how many bytes take n up to a multiple of 4.
func pad4(n int) int { return (4 - n%4) % 4 }
