package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// The S3 staging store of a fleet run is a bucket on versitygw, started by the helper
// the store's tests use (internal/testutil.StartVersitygwWith). That helper takes a
// testing.TB; benchTB is the little of one it calls, outside a test: Fatalf and Skipf
// panic with a tbFailure that startS3 turns into an error, cleanups run in reverse order
// when the run ends. The embedded testing.TB is nil: a method the helper might call that
// is not defined here panics too, and startS3 reports that as well.
type benchTB struct {
	testing.TB
	dir      string
	n        int
	cleanups []func()
}

type tbFailure string

func (t *benchTB) Helper()                           {}
func (t *benchTB) Logf(format string, args ...any)   { logf(format, args...) }
func (t *benchTB) Fatalf(format string, args ...any) { panic(tbFailure(fmt.Sprintf(format, args...))) }
func (t *benchTB) Fatal(args ...any)                 { panic(tbFailure(fmt.Sprint(args...))) }
func (t *benchTB) Skipf(format string, args ...any)  { panic(tbFailure(fmt.Sprintf(format, args...))) }
func (t *benchTB) Cleanup(fn func())                 { t.cleanups = append(t.cleanups, fn) }

func (t *benchTB) TempDir() string {
	t.n++
	d := filepath.Join(t.dir, fmt.Sprintf("tmp%d", t.n))
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatalf("temporary directory: %v", err)
	}
	return d
}

func (t *benchTB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
}

// s3Store is a bucket on a versitygw this program started.
type s3Store struct {
	url string   // the staging store URL (no credentials)
	env []string // the credentials, for the processes that open the store
	log string
}

// startS3 starts versitygw (bin, or the helper's lookup when empty) on a directory
// under dir and creates a bucket; versitygw is stopped by its pid when u runs.
func startS3(u *undo, dir, bin string) (st *s3Store, err error) {
	if bin != "" {
		if err := os.Setenv("LIFEBOAT_TEST_VERSITYGW", bin); err != nil {
			return nil, err
		}
	}
	buckets := filepath.Join(dir, "s3")
	if err := os.MkdirAll(buckets, 0o700); err != nil {
		return nil, err
	}
	tb := &benchTB{dir: dir}
	u.push(tb.cleanup)
	defer func() {
		if r := recover(); r != nil {
			var f tbFailure
			if e, ok := r.(tbFailure); ok {
				f = e
			} else {
				f = tbFailure(fmt.Sprintf("testutil called something replbench does not provide: %v", r))
			}
			st, err = nil, errors.New("start versitygw: "+string(f))
		}
	}()
	s := testutil.StartVersitygwWith(tb, testutil.VersitygwOptions{Dir: buckets})
	bucket := s.Bucket(tb, false)
	return &s3Store{
		url: fmt.Sprintf("s3://%s/fleet?endpoint=%s&region=%s&tls=false", bucket, s.Endpoint, s.Region),
		env: []string{"LIFEBOAT_S3_ACCESS_KEY=" + s.AccessKey, "LIFEBOAT_S3_SECRET_KEY=" + s.SecretKey},
		log: s.Log,
	}, nil
}
