package qemu

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Streaming is where copying a disk's backing image into the disk stands.
type Streaming struct {
	Drive   string // the drive: "disk0", "disk1"… (Config.Disks' order)
	Backed  bool   // the disk still reads from its backing image
	Running bool   // a stream job copies it now
	Done    int64  // bytes of the job's work done, and its total
	Total   int64
}

// Streams says for each of the VM's disks whether it still has a backing image and how
// far the copy of it has come.
func (v *VM) Streams(ctx context.Context) ([]Streaming, error) {
	if !v.alive() {
		return nil, fmt.Errorf("streams of VM %s: %w", v.st.Name, ErrNotRunning)
	}
	var blocks []struct {
		Device   string `json:"device"`
		Inserted *struct {
			BackingFileDepth int `json:"backing_file_depth"`
		} `json:"inserted"`
	}
	var jobs []struct {
		Device string `json:"device"`
		Type   string `json:"type"`
		Len    int64  `json:"len"`
		Offset int64  `json:"offset"`
	}
	err := v.qmp(ctx, func(c *QMPClient) error {
		if err := c.Execute(ctx, "query-block", nil, &blocks); err != nil {
			return err
		}
		return c.Execute(ctx, "query-block-jobs", nil, &jobs)
	})
	if err != nil {
		return nil, fmt.Errorf("streams of VM %s: %w", v.st.Name, err)
	}
	var out []Streaming
	for _, b := range blocks {
		if !isDiskDrive(b.Device) || b.Inserted == nil {
			continue
		}
		s := Streaming{Drive: b.Device, Backed: b.Inserted.BackingFileDepth > 0}
		for _, j := range jobs {
			if j.Type == "stream" && j.Device == streamJobID(b.Device) {
				s.Running, s.Done, s.Total = true, j.Offset, j.Len
			}
		}
		out = append(out, s)
	}
	return out, nil
}

// Stream starts copying a disk's backing image into the disk (QMP block-stream): once
// it ends, the disk no longer needs its backing image. speed caps the copy in bytes a
// second (0: none). The guest keeps running and
// reading; a read during the copy that finds nothing local yet is served from the
// backing image. A job that fails (its backing image unreachable) ends and leaves what
// it copied; Stream again copies only the rest.
func (v *VM) Stream(ctx context.Context, drive string, speed int64) error {
	if !isDiskDrive(drive) {
		return fmt.Errorf("stream %q of VM %s: not one of its disks", drive, v.st.Name)
	}
	if !v.alive() {
		return fmt.Errorf("stream %s of VM %s: %w", drive, v.st.Name, ErrNotRunning)
	}
	args := map[string]any{"job-id": streamJobID(drive), "device": drive}
	if speed > 0 {
		args["speed"] = speed
	}
	err := v.qmp(ctx, func(c *QMPClient) error { return c.Execute(ctx, "block-stream", args, nil) })
	if err != nil {
		return fmt.Errorf("stream %s of VM %s: %w", drive, v.st.Name, err)
	}
	return nil
}

// streamJobID names the stream job of a drive.
func streamJobID(drive string) string { return "stream-" + drive }

// isDiskDrive reports whether a block device name is one Config.args gives a disk
// ("disk" and its index).
func isDiskDrive(name string) bool {
	n, ok := strings.CutPrefix(name, "disk")
	if !ok {
		return false
	}
	_, err := strconv.Atoi(n)
	return err == nil
}
