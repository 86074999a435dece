package s3_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendtest"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/s3"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/minio/minio-go/v7"
)

func config(srv *testutil.S3Server, bucket, prefix string) s3.Config {
	return s3.Config{
		Endpoint:  srv.Endpoint,
		Bucket:    bucket,
		Prefix:    prefix,
		Region:    srv.Region,
		AccessKey: srv.AccessKey,
		SecretKey: srv.SecretKey,
	}
}

func open(t *testing.T, cfg s3.Config) *s3.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b, err := s3.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open %s/%s on %s: %v", cfg.Bucket, cfg.Prefix, cfg.Endpoint, err)
	}
	return b
}

// TestConformance runs the suite on versitygw: a bucket with Object Lock (versioned, as
// on AWS), one without, one versioned without Object Lock, and one with Object Lock but
// no versioning (where the server itself refuses to overwrite a retained object).
func TestConformance(t *testing.T) {
	versioned := testutil.StartVersitygw(t)
	plain := testutil.StartVersitygwWith(t, testutil.VersitygwOptions{})
	for _, tc := range []struct {
		name       string
		srv        *testutil.S3Server
		lock       bool
		versioning bool // turned on by hand, without Object Lock
	}{
		{"ObjectLock", versioned, true, false},
		{"NoObjectLock", versioned, false, false},
		{"VersionedNoObjectLock", versioned, false, true},
		{"ObjectLockUnversioned", plain, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := tc.srv.Bucket(t, tc.lock)
			if tc.versioning {
				if err := tc.srv.Client(t).EnableVersioning(t.Context(), bucket); err != nil {
					t.Fatalf("enable versioning on %s: %v", bucket, err)
				}
			}
			n := 0
			backendtest.Run(t, func(t *testing.T) backend.Backend {
				n++
				cfg := config(tc.srv, bucket, fmt.Sprintf("lifeboat/suite-%d", n))
				cfg.ObjectLock = tc.lock
				b := open(t, cfg)
				if b.Capabilities().Retention != tc.lock {
					t.Fatalf("bucket with object lock %v: Capabilities().Retention = %v", tc.lock, b.Capabilities().Retention)
				}
				return b
			})
		})
	}
}

// versions lists every version and delete marker of key, as the server keeps them.
func versions(t *testing.T, c *minio.Client, bucket, key string) []minio.ObjectInfo {
	t.Helper()
	var out []minio.ObjectInfo
	for obj := range c.ListObjectsIter(t.Context(), bucket, minio.ListObjectsOptions{Prefix: key, WithVersions: true}) {
		if obj.Err != nil {
			t.Fatalf("list versions of %s: %v", key, obj.Err)
		}
		if obj.Key == key {
			out = append(out, obj)
		}
	}
	return out
}

// TestVersionedBucketFreesSpace: on a versioned (object-locked) bucket, a replace
// leaves one version and a delete leaves none, not a delete marker over the data.
func TestVersionedBucketFreesSpace(t *testing.T) {
	srv := testutil.StartVersitygw(t)
	bucket := srv.Bucket(t, true)
	b := open(t, config(srv, bucket, "p"))
	ctx := t.Context()
	raw := srv.Client(t)
	for i := range 3 {
		if err := b.Put(ctx, "data/x", []byte(fmt.Sprint("version ", i)), backend.PutOptions{}); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if v := versions(t, raw, bucket, "p/data/x"); len(v) != 1 {
		t.Fatalf("after 3 puts the server keeps %d versions, want 1", len(v))
	}
	if err := b.Delete(ctx, "data/x"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if v := versions(t, raw, bucket, "p/data/x"); len(v) != 0 {
		t.Fatalf("after delete the server keeps %d versions (delete marker: %v), want none", len(v), v[0].IsDeleteMarker)
	}
}

// TestRetainIsCompliance: what Retain sets is a COMPLIANCE retention, rounded up to
// the second, that a later shorter Retain leaves alone.
func TestRetainIsCompliance(t *testing.T) {
	srv := testutil.StartVersitygw(t)
	bucket := srv.Bucket(t, true)
	b := open(t, config(srv, bucket, ""))
	ctx := t.Context()
	if err := b.Put(ctx, "pit/1", []byte("manifest"), backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	until := time.Now().Add(2*time.Second + 300*time.Millisecond)
	if err := b.Retain(ctx, "pit/1", until); err != nil {
		t.Fatalf("retain: %v", err)
	}
	if err := b.Retain(ctx, "pit/1", until.Add(-time.Second)); err != nil {
		t.Fatalf("retain for less: %v", err)
	}
	info, err := srv.Client(t).StatObject(ctx, bucket, "pit/1", minio.StatObjectOptions{})
	if err != nil {
		t.Fatalf("head: %v", err)
	}
	mode := info.Metadata.Get("X-Amz-Object-Lock-Mode")
	got, err := time.Parse(time.RFC3339, info.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date"))
	if err != nil || mode != "COMPLIANCE" || got.Before(until) || got.After(until.Add(time.Second)) {
		t.Fatalf("retention = %q until %v (%v), want COMPLIANCE until %v rounded up to the second", mode, got, err, until)
	}
	// Wait it out, so the temporary directory can be removed.
	time.Sleep(time.Until(got.Add(time.Second)))
	if err := b.Delete(ctx, "pit/1"); err != nil {
		t.Fatalf("delete after retention: %v", err)
	}
}

// retryCounter is a slog handler counting the backend's retries; onRetry, if set, is
// called at each.
type retryCounter struct {
	mu      sync.Mutex
	retries int
	onRetry func()
}

func (h *retryCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *retryCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *retryCounter) WithGroup(string) slog.Handler            { return h }
func (h *retryCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "retrying") {
		h.mu.Lock()
		h.retries++
		f := h.onRetry
		h.mu.Unlock()
		if f != nil {
			f()
		}
	}
	return nil
}

func (h *retryCounter) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.retries
}

// TestServerKilled: with the server gone, every operation fails with ErrUnavailable
// after exactly MaxAttempts tries, and a cancelled context ends the retrying.
func TestServerKilled(t *testing.T) {
	srv := testutil.StartVersitygw(t)
	bucket := srv.Bucket(t, false)
	counter := &retryCounter{}
	cfg := config(srv, bucket, "p")
	cfg.MaxAttempts = 3
	cfg.Logger = slog.New(counter)
	b := open(t, cfg)
	// A second backend that would retry (almost) forever, to show the context ends it.
	patient := &retryCounter{}
	cfg2 := cfg
	cfg2.MaxAttempts = 1000
	cfg2.Logger = slog.New(patient)
	b2 := open(t, cfg2)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute) // a hang guard
	defer cancel()
	if err := b.Put(ctx, "data/x", []byte("x"), backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)

	ops := map[string]func() error{
		"put":    func() error { return b.Put(ctx, "data/x", []byte("y"), backend.PutOptions{}) },
		"get":    func() error { _, err := b.Get(ctx, "data/x"); return err },
		"read":   func() error { _, err := b.ReadAt(ctx, "data/x", 0, 1); return err },
		"stat":   func() error { _, err := b.Stat(ctx, "data/x"); return err },
		"delete": func() error { return b.Delete(ctx, "data/x") },
		"list": func() error {
			return b.List(ctx, "data/", func(backend.ObjectInfo) error { return nil })
		},
	}
	for op, fn := range ops {
		before := counter.count()
		err := fn()
		name := "data/x"
		if op == "list" {
			name = "data/"
		}
		backendtest.RequireKind(t, err, backend.ErrUnavailable, name)
		if !strings.Contains(err.Error(), srv.Endpoint) || !strings.Contains(err.Error(), "3 attempts") {
			t.Errorf("%s: error %q does not say where and how often it tried", op, err)
		}
		if got := counter.count() - before; got != cfg.MaxAttempts-1 {
			t.Errorf("%s: %d retries, want %d (MaxAttempts %d)", op, got, cfg.MaxAttempts-1, cfg.MaxAttempts)
		}
	}

	_, err := s3.Open(ctx, cfg)
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("open with the server gone: %v, want ErrUnavailable", err)
	}

	// Cancelling the context while it retries ends the operation with the context's
	// error at once, not after its attempts.
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	patient.mu.Lock()
	patient.onRetry = ccancel
	patient.mu.Unlock()
	_, err = b2.Get(cctx, "data/x")
	backendtest.RequireKind(t, err, context.Canceled, "data/x")
	if patient.count() != 1 {
		t.Fatalf("get cancelled at its first retry went on to %d retries", patient.count())
	}
}

// TestWrongCredentials: a wrong secret or access key gives ErrAccess at Open, and the
// message never shows the secret.
func TestWrongCredentials(t *testing.T) {
	srv := testutil.StartVersitygw(t)
	bucket := srv.Bucket(t, false)
	for _, tc := range []struct{ name, access, secret string }{
		{"secret", srv.AccessKey, "wrong-secret-0123456789"},
		{"access key", "nobody", srv.SecretKey},
	} {
		cfg := config(srv, bucket, "p")
		cfg.AccessKey, cfg.SecretKey = tc.access, tc.secret
		b, err := s3.Open(t.Context(), cfg)
		if err == nil {
			b.Close()
			t.Fatalf("open with a wrong %s succeeded", tc.name)
		}
		if !errors.Is(err, backend.ErrAccess) {
			t.Fatalf("open with a wrong %s: %v, want ErrAccess", tc.name, err)
		}
		if strings.Contains(err.Error(), tc.secret) || strings.Contains(err.Error(), srv.SecretKey) {
			t.Fatalf("error shows a secret: %v", err)
		}
	}
}

// TestOpen: what Open creates (only the bucket, when asked) and refuses.
func TestOpen(t *testing.T) {
	srv := testutil.StartVersitygw(t)
	ctx := t.Context()

	cfg := config(srv, "lifeboat-missing", "")
	_, err := s3.Open(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "lifeboat-missing") || !strings.Contains(err.Error(), "create-bucket=true") {
		t.Fatalf("open a missing bucket: %v, want an error naming it and how to create it", err)
	}

	cfg.CreateBucket, cfg.ObjectLock = true, true
	b := open(t, cfg)
	if !b.Capabilities().Retention {
		t.Fatal("a bucket created with ObjectLock has no retention")
	}
	b.Close()
	b = open(t, cfg) // the bucket exists now: opening again creates nothing
	b.Close()

	plain := srv.Bucket(t, false)
	cfg = config(srv, plain, "")
	cfg.ObjectLock = true
	if _, err := s3.Open(ctx, cfg); err == nil || !strings.Contains(err.Error(), "Object Lock") {
		t.Fatalf("open a bucket without object lock, requiring it: %v, want an error saying so", err)
	}
	cfg.ObjectLock = false
	b = open(t, cfg)
	if b.Capabilities().Retention {
		t.Fatal("a bucket without object lock reports retention")
	}
	loc := b.Location()
	if strings.Contains(loc, srv.SecretKey) || strings.Contains(loc, srv.AccessKey) {
		t.Fatalf("location %q shows credentials", loc)
	}
	want := "s3://" + plain + "?endpoint=" + srv.Endpoint + "&region=" + srv.Region + "&tls=false"
	if loc != want {
		t.Fatalf("location = %q, want %q", loc, want)
	}
	b.Close()

	for _, bad := range []s3.Config{
		{Endpoint: srv.Endpoint, Bucket: "Bad_Bucket", AccessKey: "a", SecretKey: "b"},
		{Endpoint: srv.Endpoint, Bucket: plain, Prefix: "../up", AccessKey: "a", SecretKey: "b"},
		{Endpoint: srv.Endpoint, Bucket: plain},
	} {
		if _, err := s3.Open(ctx, bad); err == nil {
			t.Fatalf("open %+v succeeded", bad)
		}
	}
}

// TestFull: versitygw on a small file system answers 507 Insufficient Storage, which
// is ErrFull; what was stored before stays readable.
func TestFull(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testutil.Mount(t, "tmpfs", "-t", "tmpfs", "-o", "size=8m")
	srv := testutil.StartVersitygwWith(t, testutil.VersitygwOptions{Dir: filepath.Join(mnt)})
	bucket := srv.Bucket(t, false)
	b := open(t, config(srv, bucket, ""))
	ctx := t.Context()
	early := backendtest.Data("early", 1<<20)
	if err := b.Put(ctx, "data/early", early, backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	err := b.Put(ctx, "data/huge", backendtest.Data("huge", 16<<20), backend.PutOptions{})
	backendtest.RequireKind(t, err, backend.ErrFull, "data/huge")
	got, err := b.Get(ctx, "data/early")
	if err != nil || string(got) != string(early) {
		t.Fatalf("get an earlier object on a full server: %d bytes, %v", len(got), err)
	}
	if _, err := b.Stat(ctx, "data/huge"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("stat the object whose put failed: %v, want ErrNotFound", err)
	}
}

// TestTLS: HTTPS with the endpoint's CA given, or verification skipped when asked; an
// untrusted certificate is refused at once, not retried as an outage.
func TestTLS(t *testing.T) {
	srv := testutil.StartVersitygwWith(t, testutil.VersitygwOptions{TLS: true})
	bucket := srv.Bucket(t, false)
	ctx := t.Context()

	counter := &retryCounter{}
	cfg := config(srv, bucket, "p")
	cfg.UseTLS = true
	cfg.Logger = slog.New(counter)
	_, err := s3.Open(ctx, cfg)
	if err == nil || errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("open with an untrusted certificate: %v, want a certificate error that is not ErrUnavailable", err)
	}
	t.Logf("untrusted: %v", err)
	if counter.count() != 0 {
		t.Fatalf("an untrusted certificate was retried %d times", counter.count())
	}

	cfg.CAFile = srv.CAFile
	b := open(t, cfg)
	if err := b.Put(ctx, "data/x", []byte("over TLS"), backend.PutOptions{}); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	b.Close()

	cfg.CAFile, cfg.InsecureSkipVerify = "", true
	b = open(t, cfg)
	if got, err := b.Get(ctx, "data/x"); err != nil || string(got) != "over TLS" {
		t.Fatalf("get with verification skipped: %q, %v", got, err)
	}
	b.Close()
}
