// Package ext4image reads and writes files inside the ext2/3/4 filesystems of a disk
// image without mounting it, so it works where mounting is not allowed (no root, no
// loop devices, containers) and never exposes the host to a hostile filesystem through
// the kernel. The work is done by debugfs from e2fsprogs; this package finds the
// filesystems (a whole-disk filesystem, or the partitions of an MBR or GPT table), quotes
// paths for debugfs, and turns its messages, which it prints with exit status 0, into
// errors.
//
// Nothing else may use the image while it is changed: a running VM must be stopped
// first.
package ext4image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
)

// Filesystem is one ext2/3/4 filesystem inside a disk image.
type Filesystem struct {
	Image     string // the disk image file
	Partition int    // 1-based partition number; 0 when the filesystem spans the whole image
	Offset    int64  // where the filesystem starts in the image, in bytes
	UUID      string // the filesystem UUID, as root=UUID=… and /etc/fstab name it
	// NeedsRecovery is true when the filesystem's journal holds transactions that were
	// not written back (a snapshot of a mounted filesystem). ReplayJournal writes them.
	NeedsRecovery bool
}

// Entry is one directory entry as debugfs lists it.
type Entry struct {
	Name  string
	Inode uint64
	Mode  fs.FileMode // type bits and permissions, as io/fs spells them
	UID   int
	GID   int
	Size  int64 // 0 for directories
}

// IsDir reports whether the entry is a directory.
func (e Entry) IsDir() bool { return e.Mode.IsDir() }

// IsRegular reports whether the entry is a regular file.
func (e Entry) IsRegular() bool { return e.Mode.IsRegular() }

// ErrNoFilesystem is returned by Find and Root when an image holds no ext filesystem.
var ErrNoFilesystem = errors.New("no ext2/ext3/ext4 filesystem found")

// Find lists the ext2/3/4 filesystems of a disk image: the whole image if it is one
// filesystem, else those in the primary partitions of its MBR or GPT table, in table
// order. Only raw images can be read: a qcow2 image is refused with the command that
// converts it.
func Find(image string) ([]Filesystem, error) {
	if strings.ContainsAny(image, "?\n") {
		return nil, fmt.Errorf("disk image path %q contains '?' or a newline, which debugfs cannot open: rename or link it", image)
	}
	f, err := os.Open(image)
	if err != nil {
		return nil, fmt.Errorf("open disk image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open disk image: %w", err)
	}
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0); err == nil && string(magic) == "QFI\xfb" {
		return nil, fmt.Errorf("%s is a qcow2 image; only raw images can be read without mounting: convert it first (qemu-img convert -O raw %s IMAGE.raw)", image, image)
	}
	cands, err := candidates(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	var out []Filesystem
	for _, c := range cands {
		sb, ok := readSuperblock(f, c.offset)
		if !ok {
			continue
		}
		out = append(out, Filesystem{
			Image:         image,
			Partition:     c.partition,
			Offset:        c.offset,
			UUID:          formatUUID(sb.uuid),
			NeedsRecovery: sb.incompat&incompatRecover != 0,
		})
		if c.partition == 0 {
			break // a whole-disk filesystem: its bytes are not a partition table
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %w (a raw whole-disk ext4 image, or an MBR/GPT disk with one in a primary partition, is needed)", image, ErrNoFilesystem)
	}
	return out, nil
}

// Root returns the image's root filesystem: the first one that has an /etc directory.
func Root(ctx context.Context, image string) (Filesystem, error) {
	all, err := Find(image)
	if err != nil {
		return Filesystem{}, err
	}
	for _, f := range all {
		e, err := f.Stat(ctx, "/etc")
		if err == nil && e.IsDir() {
			return f, nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return Filesystem{}, err
		}
	}
	return Filesystem{}, fmt.Errorf("%s: %w with an /etc directory (is it the system disk?)", image, ErrNoFilesystem)
}

func formatUUID(u [16]byte) string {
	const hex = "0123456789abcdef"
	var b strings.Builder
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b.WriteByte('-')
		}
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// device is the name debugfs and e2fsck open: the image, with the filesystem's offset.
func (f Filesystem) device() string {
	if f.Offset == 0 {
		return f.Image
	}
	return f.Image + "?offset=" + strconv.FormatInt(f.Offset, 10)
}

func (f Filesystem) String() string {
	if f.Partition == 0 {
		return f.Image
	}
	return fmt.Sprintf("%s (partition %d)", f.Image, f.Partition)
}

// ReplayJournal writes back the transactions left in the journal (e2fsck -E
// journal_only), so that changes made now are not undone by the replay at the next
// mount. It does nothing when the journal is clean.
func (f Filesystem) ReplayJournal(ctx context.Context) error {
	if !f.NeedsRecovery {
		return nil
	}
	if _, err := exec.LookPath("e2fsck"); err != nil {
		return fmt.Errorf("e2fsck is needed to replay the journal of %s: apt-get install e2fsprogs", f)
	}
	cmd := exec.CommandContext(ctx, "e2fsck", "-E", "journal_only", "-p", f.device())
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	// e2fsck exits 1 when it changed the filesystem, which replaying a journal does.
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		return fmt.Errorf("replay the journal of %s (e2fsck -E journal_only): %w: %s", f, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// checkPath refuses what debugfs cannot be given safely: relative paths, "..", quotes,
// backslashes and control characters.
func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("path %q inside the image must be absolute", p)
	}
	if path.Clean(p) != p {
		return fmt.Errorf("path %q inside the image is not clean (use %q)", p, path.Clean(p))
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return fmt.Errorf("path %q inside the image contains a quote, a backslash or a control character, which debugfs cannot be given", p)
		}
	}
	return nil
}

func quote(p string) string { return `"` + p + `"` }

// debugfs runs commands against the filesystem (read-write when write is set) and
// returns their standard output. debugfs exits 0 even when a command fails, so any
// message on standard error other than its version banner is an error.
func (f Filesystem) debugfs(ctx context.Context, write bool, cmds ...string) (string, error) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		return "", fmt.Errorf("debugfs is not installed (apt-get install e2fsprogs): it is needed to read and change disk images without mounting them")
	}
	var args []string
	if write {
		args = append(args, "-w")
	}
	var stdin string
	if len(cmds) == 1 {
		args = append(args, "-R", cmds[0])
	} else {
		args = append(args, "-f", "-")
		stdin = strings.Join(cmds, "\n") + "\n"
	}
	args = append(args, f.device())
	cmd := exec.CommandContext(ctx, "debugfs", args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var msgs []string
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "debugfs ") && strings.HasSuffix(line, ")") {
			continue // the version banner: "debugfs 1.47.0 (5-Feb-2023)"
		}
		msgs = append(msgs, line)
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("debugfs on %s: %w", f, ctx.Err())
	}
	if runErr != nil || len(msgs) > 0 {
		msg := strings.Join(msgs, "; ")
		err := fmt.Errorf("debugfs on %s: %s", f, msg)
		if runErr != nil {
			err = fmt.Errorf("debugfs on %s: %w: %s", f, runErr, msg)
		}
		if strings.Contains(msg, "File not found by ext2_lookup") {
			return stdout.String(), fmt.Errorf("%w (%w)", err, fs.ErrNotExist)
		}
		return stdout.String(), err
	}
	return stdout.String(), nil
}

// ReadDir lists a directory, without "." and "..".
func (f Filesystem) ReadDir(ctx context.Context, dir string) ([]Entry, error) {
	if err := checkPath(dir); err != nil {
		return nil, err
	}
	out, err := f.debugfs(ctx, false, "ls -p "+quote(dir))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	entries := parseList(out)
	if len(entries) == 0 {
		// Every directory has "." and "..": nothing listed means dir is not a directory.
		return nil, fmt.Errorf("list %s in %s: not a directory", dir, f)
	}
	var keep []Entry
	for _, e := range entries {
		if e.Name != "." && e.Name != ".." {
			keep = append(keep, e)
		}
	}
	return keep, nil
}

// Stat describes one path. A missing path is an error matching fs.ErrNotExist. A
// symbolic link is described, not followed.
func (f Filesystem) Stat(ctx context.Context, p string) (Entry, error) {
	if err := checkPath(p); err != nil {
		return Entry{}, err
	}
	if p == "/" {
		return Entry{Name: "/", Inode: 2, Mode: fs.ModeDir | 0o755}, nil
	}
	dir, name := path.Split(p)
	entries, err := f.ReadDir(ctx, path.Clean(dir))
	if err != nil {
		return Entry{}, err
	}
	for _, e := range entries {
		if e.Name == name {
			return e, nil
		}
	}
	return Entry{}, fmt.Errorf("%s in %s: %w", p, f, fs.ErrNotExist)
}

// ReadFile returns the content of a regular file. Symbolic links are not followed.
func (f Filesystem) ReadFile(ctx context.Context, p string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "lifeboat-ext4image-")
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", p, f, err)
	}
	defer os.RemoveAll(tmp)
	local := path.Join(tmp, "file")
	if err := f.CopyOut(ctx, p, local); err != nil {
		return nil, err
	}
	return os.ReadFile(local)
}

// CopyOut copies a regular file out of the image to local (which must not exist yet).
func (f Filesystem) CopyOut(ctx context.Context, p, local string) error {
	e, err := f.Stat(ctx, p)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if !e.IsRegular() {
		return fmt.Errorf("read %s from %s: it is not a regular file (%s)", p, f, e.Mode.Type())
	}
	if err := checkLocal(local); err != nil {
		return err
	}
	if _, err := f.debugfs(ctx, false, "dump "+quote(p)+" "+quote(local)); err != nil {
		os.Remove(local)
		return fmt.Errorf("read %s: %w", p, err)
	}
	st, err := os.Stat(local)
	if err != nil {
		return fmt.Errorf("read %s from %s: debugfs wrote nothing: %w", p, f, err)
	}
	if st.Size() != e.Size {
		return fmt.Errorf("read %s from %s: got %d bytes of %d (is the image truncated?)", p, f, st.Size(), e.Size)
	}
	return nil
}

func checkLocal(local string) error {
	if !strings.HasPrefix(local, "/") {
		return fmt.Errorf("local path %q must be absolute", local)
	}
	for _, r := range local {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' {
			return fmt.Errorf("local path %q contains a quote, a backslash or a control character, which debugfs cannot be given (set TMPDIR to a plain directory)", local)
		}
	}
	return nil
}

// WriteFile creates or replaces a regular file (a symbolic link in its place is
// replaced, not followed), owned by root with the given permissions. Its directory must
// exist (see MkdirAll).
func (f Filesystem) WriteFile(ctx context.Context, p string, data []byte, perm fs.FileMode) error {
	if err := checkPath(p); err != nil {
		return err
	}
	if p == "/" {
		return fmt.Errorf("write %s: it is the root directory", p)
	}
	dir, name := path.Split(p)
	dir = path.Clean(dir)
	d, err := f.Stat(ctx, dir)
	if err != nil {
		return fmt.Errorf("write %s: its directory: %w", p, err)
	}
	if !d.IsDir() {
		return fmt.Errorf("write %s in %s: %s is not a directory", p, f, dir)
	}
	var exists bool
	switch e, err := f.Stat(ctx, p); {
	case err == nil && e.IsDir():
		return fmt.Errorf("write %s in %s: a directory of that name exists", p, f)
	case err == nil:
		exists = true
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("write %s: %w", p, err)
	}
	tmp, err := os.CreateTemp("", "lifeboat-ext4image-")
	if err != nil {
		return fmt.Errorf("write %s into %s: %w", p, f, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s into %s: staging file: %w", p, f, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s into %s: staging file: %w", p, f, err)
	}
	if err := checkLocal(tmp.Name()); err != nil {
		return err
	}
	cmds := []string{"cd " + quote(dir)}
	if exists {
		cmds = append(cmds, "rm "+quote(name))
	}
	cmds = append(cmds,
		"write "+quote(tmp.Name())+" "+quote(name),
		fmt.Sprintf("sif %s mode 0%o", quote(name), 0o100000|uint32(perm.Perm())),
		"sif "+quote(name)+" uid 0",
		"sif "+quote(name)+" gid 0",
	)
	if _, err := f.debugfs(ctx, true, cmds...); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// Remove removes a file or a symbolic link (not a directory). A missing one is no
// error.
func (f Filesystem) Remove(ctx context.Context, p string) error {
	if err := checkPath(p); err != nil {
		return err
	}
	e, err := f.Stat(ctx, p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	if e.IsDir() {
		return fmt.Errorf("remove %s in %s: it is a directory", p, f)
	}
	dir, name := path.Split(p)
	if _, err := f.debugfs(ctx, true, "cd "+quote(path.Clean(dir)), "rm "+quote(name)); err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// MkdirAll creates a directory and any missing parents, owned by root with the given
// permissions. Directories that exist are left as they are.
func (f Filesystem) MkdirAll(ctx context.Context, p string, perm fs.FileMode) error {
	if err := checkPath(p); err != nil {
		return err
	}
	var missing []string
	for cur := p; cur != "/"; cur = path.Dir(cur) {
		e, err := f.Stat(ctx, cur)
		if err == nil {
			if !e.IsDir() {
				return fmt.Errorf("create directory %s in %s: %s exists and is not a directory", p, f, cur)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("create directory %s: %w", p, err)
		}
		missing = append(missing, cur)
	}
	if len(missing) == 0 {
		return nil
	}
	var cmds []string
	for i := len(missing) - 1; i >= 0; i-- {
		dir, name := path.Split(missing[i])
		cmds = append(cmds,
			"cd "+quote(path.Clean(dir)),
			"mkdir "+quote(name),
			fmt.Sprintf("sif %s mode 0%o", quote(name), 0o40000|uint32(perm.Perm())),
			"sif "+quote(name)+" uid 0",
			"sif "+quote(name)+" gid 0",
		)
	}
	if _, err := f.debugfs(ctx, true, cmds...); err != nil {
		return fmt.Errorf("create directory %s: %w", p, err)
	}
	return nil
}

// parseList reads the output of debugfs "ls -p": one "/inode/mode/uid/gid/name/size/"
// line per entry (size empty for directories). Lines that do not parse are skipped.
func parseList(out string) []Entry {
	var entries []Entry
	for _, line := range strings.Split(out, "\n") {
		e, ok := parseListLine(line)
		if ok {
			entries = append(entries, e)
		}
	}
	return entries
}

func parseListLine(line string) (Entry, bool) {
	if !strings.HasPrefix(line, "/") || !strings.HasSuffix(line, "/") || len(line) < 2 {
		return Entry{}, false
	}
	fields := strings.SplitN(line[1:len(line)-1], "/", 5)
	if len(fields) != 5 {
		return Entry{}, false
	}
	rest := fields[4] // name/size: a name has no slash, so the last slash splits them
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return Entry{}, false
	}
	name, sizeText := rest[:i], rest[i+1:]
	ino, err1 := strconv.ParseUint(fields[0], 10, 64)
	mode, err2 := strconv.ParseUint(fields[1], 8, 32)
	uid, err3 := strconv.Atoi(fields[2])
	gid, err4 := strconv.Atoi(fields[3])
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil || name == "" || strings.Contains(name, "/") {
		return Entry{}, false
	}
	var size int64
	if sizeText != "" {
		s, err := strconv.ParseInt(sizeText, 10, 64)
		if err != nil || s < 0 {
			return Entry{}, false
		}
		size = s
	}
	return Entry{Name: name, Inode: ino, Mode: unixMode(uint32(mode)), UID: uid, GID: gid, Size: size}, true
}

// unixMode converts st_mode bits to an fs.FileMode.
func unixMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	switch m & 0o170000 {
	case 0o040000:
		mode |= fs.ModeDir
	case 0o120000:
		mode |= fs.ModeSymlink
	case 0o100000:
	case 0o020000:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		mode |= fs.ModeDevice
	case 0o010000:
		mode |= fs.ModeNamedPipe
	case 0o140000:
		mode |= fs.ModeSocket
	default:
		mode |= fs.ModeIrregular
	}
	return mode
}
