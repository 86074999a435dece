package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch/qemu"
)

// Instant launch (docs/recovery.md "Instant launch"): each disk is a qcow2 overlay whose
// backing image is the PIT's volume served over NBD by the control plane. The VM boots
// from the overlays at once; Hydrate copies the backing images into them (QMP
// block-stream) until the VM no longer needs the staging store.

// NBDReconnectDelay is how long QEMU's NBD client keeps a read waiting while the server
// is gone (a control plane restart) before it fails the read.
const NBDReconnectDelay = 300 * time.Second

// ExportName names the NBD export of the i-th disk.
func ExportName(i int) string { return "disk" + strconv.Itoa(i) }

// CreateOverlay makes a qcow2 overlay of size bytes at path whose backing image is the
// NBD export on a Unix socket. It does not connect to the export.
func CreateOverlay(ctx context.Context, path string, size int64, socket, export string) error {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return errors.New("instant launch needs qemu-img, which is not installed on the control plane's host: apt-get install qemu-utils")
	}
	// The backing image's format is raw (-F); its "file" is the export.
	backing, err := json.Marshal(map[string]any{"file": map[string]any{"driver": "nbd", "export": export,
		"server":          map[string]string{"type": "unix", "path": socket},
		"reconnect-delay": int(NBDReconnectDelay / time.Second)}})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, "create", "-q", "-f", "qcow2", "-u", "-F", "raw",
		"-b", "json:"+string(backing), path, strconv.FormatInt(size, 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(path)
		return fmt.Errorf("create the overlay %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return os.Chmod(path, 0o600)
}

// RawView shows qcow2 images (overlays) as raw files, so that what reads and writes raw
// images (conversion, kernel extraction) works on them: qemu-storage-daemon exports
// each image through FUSE on a file in dir. Writes go into the images. Close ends the
// view; the images are consistent after it.
type RawView struct {
	Paths []string
	cmd   *exec.Cmd
	done  chan error
}

// OpenRawView starts the view of images in dir.
func OpenRawView(ctx context.Context, dir string, images []string, sizes []int64) (*RawView, error) {
	bin, err := exec.LookPath("qemu-storage-daemon")
	if err != nil {
		return nil, errors.New("instant launch needs qemu-storage-daemon, which is not installed on the control plane's host: apt-get install qemu-system-x86")
	}
	v := &RawView{done: make(chan error, 1)}
	var args []string
	for i, img := range images {
		mnt := filepath.Join(dir, fmt.Sprintf("view%d.raw", i))
		if err := os.WriteFile(mnt, nil, 0o600); err != nil {
			return nil, err
		}
		v.Paths = append(v.Paths, mnt)
		node := fmt.Sprintf("img%d", i)
		args = append(args,
			"--blockdev", fmt.Sprintf("driver=qcow2,node-name=%s,file.driver=file,file.filename=%s", node, qemu.OptValue(img)),
			"--export", fmt.Sprintf("type=fuse,id=exp%d,node-name=%s,mountpoint=%s,writable=on", i, node, qemu.OptValue(mnt)))
	}
	v.cmd = exec.Command(bin, args...)
	out := &strings.Builder{}
	v.cmd.Stdout, v.cmd.Stderr = out, out
	if err := v.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu-storage-daemon: %w", err)
	}
	go func() { v.done <- v.cmd.Wait() }()
	if err := v.waitMounted(ctx, sizes); err != nil {
		v.Close()
		return nil, fmt.Errorf("show the overlays as raw images: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return v, nil
}

// waitMounted waits until every view has its image's size (the FUSE mount is up).
func (v *RawView) waitMounted(ctx context.Context, sizes []int64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		up := 0
		for i, p := range v.Paths {
			if fi, err := os.Stat(p); err == nil && fi.Size() == sizes[i] {
				up++
			}
		}
		if up == len(v.Paths) {
			return nil
		}
		select {
		case err := <-v.done:
			v.done <- err
			return fmt.Errorf("qemu-storage-daemon ended: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("the FUSE exports did not come up: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close stops the daemon, which flushes the images and unmounts the views, and
// removes the view files.
func (v *RawView) Close() error {
	var err error
	if v.cmd.Process != nil {
		_ = v.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err = <-v.done:
		case <-time.After(30 * time.Second):
			_ = v.cmd.Process.Kill()
			err = errors.New("qemu-storage-daemon did not stop in 30 s: killed")
			<-v.done
		}
	}
	for _, p := range v.Paths {
		_ = syscall.Unmount(p, syscall.MNT_DETACH) // left mounted only if the daemon died
		os.Remove(p)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
		err = nil // it ended on our SIGTERM
	}
	return err
}

// Hydration is where copying an instant launch's disks to local storage stands.
type Hydration struct {
	Running bool  // the instance runs (a stopped one copies nothing)
	Done    bool  // every disk is local: the staging store is no longer needed
	Started int   // copies started by this call (a first call, or after a failed copy)
	Bytes   int64 // bytes copied by the running copies, of Total
	Total   int64
}

// Hydrate moves an instant launch's disks towards local storage: it starts the copy of
// every disk that still reads from the staging store and has none running, and says
// where they stand. It is called again and again until Done; each call is safe to
// repeat (after a failed copy, or a control plane restart, it starts the rest).
func (q *QEMU) Hydrate(ctx context.Context, h api.ProviderHandle) (Hydration, error) {
	var hy Hydration
	if h.VMDir == "" {
		return hy, errors.New("the instance has no VM")
	}
	vm, err := q.attach(h.VMDir)
	if errors.Is(err, qemu.ErrNotRunning) {
		return hy, nil
	}
	if err != nil {
		return hy, err
	}
	streams, err := vm.Streams(ctx)
	if errors.Is(err, qemu.ErrNotRunning) {
		return hy, nil
	}
	if err != nil {
		return hy, err
	}
	hy.Running, hy.Done = true, true
	for _, s := range streams {
		if !s.Backed {
			continue
		}
		hy.Done = false
		if s.Running {
			hy.Bytes, hy.Total = hy.Bytes+s.Done, hy.Total+s.Total
			continue
		}
		if err := vm.Stream(ctx, s.Drive, q.opts.HydrationBytesPerSecond); err != nil {
			return hy, err
		}
		hy.Started++
	}
	return hy, nil
}
