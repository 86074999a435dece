package recovery

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// The console copy hands over whole, cleaned lines as the guest writes them, and the
// last partial line when it stops.
func TestTailConsole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	if err := os.WriteFile(path, []byte("first\r\nsec"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		tailConsole(ctx, path, func(lines []string) {
			mu.Lock()
			got = append(got, lines...)
			mu.Unlock()
		})
		close(done)
	}()
	wait := func(n int) {
		for end := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			mu.Lock()
			l := len(got)
			mu.Unlock()
			if l >= n {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("only %d lines: %q", l, got)
			}
		}
	}
	wait(1)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("ond \x1b[0mline\n\x00\x07\ntail")
	f.Close()
	wait(2)
	cancel()
	<-done
	want := []string{"first", "second [0mline", "tail"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("lines %q, want %q", got, want)
	}
}

func FuzzCleanLine(f *testing.F) {
	f.Add([]byte("[    1.0] ok\r"))
	f.Add([]byte("\x1b[1;31mred\x1b[0m\t\xff\xfe"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := cleanLine(b)
		if !utf8.ValidString(s) || strings.ContainsAny(s, "\r\n\x00\x1b") {
			t.Fatalf("cleanLine(%q) = %q", b, s)
		}
	})
}
