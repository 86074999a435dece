package recovery

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Bounds of the console copy into a job's log.
const (
	consoleMaxBytes = 256 << 10 // per instance
	consoleMaxLines = 200       // per CONSOLE entry
	consoleInterval = time.Second
)

// captureConsole copies a VM's serial console into the job's log, as CONSOLE entries of
// up to consoleMaxLines lines a second, for ConsoleCapture after the launch (or until
// the instance is terminated, or consoleMaxBytes were copied). The file itself stays
// with the instance (ProviderHandle.ConsoleLog).
func (r *Runner) captureConsole(ctx context.Context, j *jobCtx, server, ri, path string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ConsoleCapture)
	r.mu.Lock()
	if old := r.consoles[ri]; old != nil {
		old()
	}
	r.consoles[ri] = cancel
	r.mu.Unlock()
	r.wg.Go(func() {
		defer cancel()
		// The runner's ctx ends at shutdown: stop then too.
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		tailConsole(cctx, path, func(lines []string) {
			j.event(context.WithoutCancel(cctx), server, api.EventConsole, strings.Join(lines, "\n"),
				map[string]any{"recoveryInstanceId": ri, "lines": len(lines)})
		})
	})
}

// stopConsole ends a recovery instance's console copy.
func (r *Runner) stopConsole(ri string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.consoles[ri]; c != nil {
		c()
		delete(r.consoles, ri)
	}
}

// tailConsole follows a console file until ctx ends, handing over complete lines,
// cleaned of control characters.
func tailConsole(ctx context.Context, path string, emit func([]string)) {
	var off int64
	var partial []byte
	var copied int
	flush := func(final bool) {
		f, err := os.Open(path)
		if err != nil {
			return
		}
		defer f.Close()
		buf, err := io.ReadAll(io.NewSectionReader(f, off, consoleMaxBytes))
		if err != nil {
			return
		}
		off += int64(len(buf))
		partial = append(partial, buf...)
		var lines []string
		for {
			i := bytes.IndexByte(partial, '\n')
			if i < 0 {
				break
			}
			if l := cleanLine(partial[:i]); l != "" {
				lines = append(lines, l)
			}
			partial = partial[i+1:]
		}
		if final && len(partial) > 0 {
			if l := cleanLine(partial); l != "" {
				lines = append(lines, l)
			}
			partial = nil
		}
		for len(lines) > 0 && copied < consoleMaxBytes {
			n := min(len(lines), consoleMaxLines)
			emit(lines[:n])
			for _, l := range lines[:n] {
				copied += len(l) + 1
			}
			lines = lines[n:]
		}
	}
	t := time.NewTicker(consoleInterval)
	defer t.Stop()
	for copied < consoleMaxBytes {
		select {
		case <-ctx.Done():
			flush(true)
			return
		case <-t.C:
			flush(false)
		}
	}
}

// cleanLine drops carriage returns, escape sequences' control bytes and other
// non-printable characters.
func cleanLine(b []byte) string {
	var sb strings.Builder
	for _, r := range string(b) {
		if r == '\t' || (r >= 0x20 && r != 0x7f && r != 0xfffd) {
			sb.WriteRune(r)
		}
	}
	return strings.TrimRight(sb.String(), " ")
}
