// Package s3 is the staging store backend on an S3-compatible bucket
// (s3://bucket/prefix): AWS S3, MinIO, Ceph RGW, SeaweedFS, versitygw.
//
// Objects are stored under Config.Prefix in one PUT each (atomic on every S3 server),
// with a Content-MD5 the server verifies. Operations that fail because the server
// cannot be reached or answers with a server error are retried a bounded number of
// times with backoff, within the caller's context; every operation is idempotent.
//
// When the bucket has S3 Object Lock enabled (detected at Open), the backend has native
// retention: Retain and PutOptions.RetainUntil set a COMPLIANCE-mode retention that no
// credential can shorten or remove. Such buckets are versioned (on AWS always): Delete
// removes every version of the object, so space is really freed, and a replace removes
// the version it replaced; an object whose current version is retained is neither
// deleted nor replaced (ErrLocked).
//
// Open creates nothing unless Config.CreateBucket is set, and then only the bucket.
package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// Config says where the bucket is and how to reach it.
type Config struct {
	// Endpoint is the S3 API's host:port; empty means AWS S3 (s3.amazonaws.com).
	Endpoint string
	// Bucket holds the objects.
	Bucket string
	// Prefix is prepended to every object name ("lifeboat/site-a" stores "data/x" as
	// "lifeboat/site-a/data/x"); empty stores at the bucket's root.
	Prefix string
	// Region of the bucket; empty asks the server.
	Region string
	// AccessKey and SecretKey are the credentials. They never appear in Location or
	// in errors.
	AccessKey, SecretKey string
	// UseTLS talks HTTPS to the endpoint.
	UseTLS bool
	// InsecureSkipVerify accepts any certificate (a test server); CAFile instead adds
	// the PEM certificates in that file to the trusted roots.
	InsecureSkipVerify bool
	CAFile             string
	// CreateBucket creates the bucket when it does not exist, with Object Lock enabled
	// when ObjectLock is set. Without it, a missing bucket is an error.
	CreateBucket bool
	// ObjectLock requires the bucket to have S3 Object Lock: Open fails on a bucket
	// without it rather than silently keeping PITs unprotected.
	ObjectLock bool
	// MaxAttempts bounds the tries of an operation that fails with ErrUnavailable; 0
	// means 4 (about 0.7 s of backoff in all).
	MaxAttempts int
	// Logger receives retries and warnings (nil: discard).
	Logger *slog.Logger
}

// Backend is an S3 bucket (or a prefix of one) holding the staging store's objects.
type Backend struct {
	client    *minio.Client
	core      minio.Core
	transport *http.Transport
	bucket    string
	prefix    string // "" or ending in "/"
	location  string
	retention bool
	versioned bool
	attempts  int
	log       *slog.Logger
}

// Backoff of retries: base·2^(attempt-1), capped, with jitter.
const (
	backoffBase = 100 * time.Millisecond
	backoffCap  = 2 * time.Second
	// maxSinglePut is the largest object S3 accepts in one PUT.
	maxSinglePut = 5 << 30
)

// Open connects to the bucket, checks the credentials, and detects Object Lock and
// versioning. Errors are *backend.Error with Op "open" (ErrAccess for refused
// credentials, ErrUnavailable for an unreachable endpoint).
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("S3 bucket name %q: %w", cfg.Bucket, err)
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := backend.ValidName(prefix); err != nil {
			return nil, fmt.Errorf("S3 prefix %q (use lowercase letters, digits, '-', '_', '.' and '/'): %w", cfg.Prefix, err)
		}
		prefix += "/"
	}
	if cfg.AccessKey == "" || cfg.SecretKey == "" {
		return nil, errors.New("S3 credentials are missing: set an access key and a secret key " +
			"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or LIFEBOAT_S3_ACCESS_KEY and LIFEBOAT_S3_SECRET_KEY)")
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
		cfg.UseTLS = true
	}
	if strings.ContainsAny(endpoint, "/?#@ ") {
		return nil, fmt.Errorf("S3 endpoint %q: want host or host:port, without a scheme or path", cfg.Endpoint)
	}
	transport, err := newTransport(cfg)
	if err != nil {
		return nil, err
	}
	client, err := minio.New(endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:    cfg.UseTLS,
		Transport: transport,
		Region:    cfg.Region,
		// Retries are ours: bounded, logged and classified (see do).
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("S3 endpoint %q: %w", endpoint, err)
	}
	b := &Backend{
		client:    client,
		core:      minio.Core{Client: client},
		transport: transport,
		bucket:    cfg.Bucket,
		prefix:    prefix,
		location:  location(cfg, endpoint, prefix),
		attempts:  cfg.MaxAttempts,
		log:       cfg.Logger,
	}
	if b.attempts <= 0 {
		b.attempts = 4
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if err := b.setUp(ctx, cfg); err != nil {
		transport.CloseIdleConnections()
		return nil, err
	}
	return b, nil
}

func newTransport(cfg Config) (*http.Transport, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read the S3 endpoint's CA bundle: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the S3 CA bundle %s holds no PEM certificate", cfg.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		ExpectContinueTimeout: time.Second,
		// A replicator of many servers makes hundreds of requests at once (heads opened
		// when servers move to it): beyond this many connections they wait for one
		// rather than each dialing (and closing) its own.
		MaxConnsPerHost:     128,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
	}, nil
}

// location is the backend's URL in the form backendurl parses (its parameters in the
// order backendurl writes them: endpoint, region, tls, object-lock), without
// credentials.
func location(cfg Config, endpoint, prefix string) string {
	params := []string{"endpoint=" + url.QueryEscape(endpoint)}
	if cfg.Region != "" {
		params = append(params, "region="+url.QueryEscape(cfg.Region))
	}
	if !cfg.UseTLS {
		params = append(params, "tls=false")
	}
	if cfg.ObjectLock {
		params = append(params, "object-lock=true")
	}
	// ':' needs no escaping in a query; host:port reads better without.
	query := strings.ReplaceAll(strings.Join(params, "&"), "%3A", ":")
	where := "s3://" + cfg.Bucket
	if prefix != "" {
		where += "/" + strings.TrimSuffix(prefix, "/")
	}
	return where + "?" + query
}

func (b *Backend) setUp(ctx context.Context, cfg Config) error {
	fail := func(err error) error {
		if be, ok := err.(*backend.Error); ok {
			be.Op, be.Name = "open", b.location
			return be
		}
		return &backend.Error{Op: "open", Name: b.location, Err: err}
	}
	var exists bool
	err := b.do(ctx, "open", b.location, func(ctx context.Context) (err error) {
		exists, err = b.client.BucketExists(ctx, b.bucket)
		return err
	})
	if err != nil {
		return fail(err)
	}
	if !exists {
		// A HEAD answer has no body: some servers answer 404 to an unknown access
		// key (versitygw). A GET tells a missing bucket from refused credentials.
		err := b.do(ctx, "open", b.location, func(ctx context.Context) error {
			_, err := b.client.GetBucketVersioning(ctx, b.bucket)
			if minio.ToErrorResponse(err).Code == "NoSuchBucket" {
				return nil
			}
			if err == nil {
				exists = true
			}
			return err
		})
		if err != nil {
			return fail(err)
		}
	}
	if !exists {
		if !cfg.CreateBucket {
			return fail(fmt.Errorf("bucket %q does not exist: create it (with Object Lock enabled, to protect PITs "+
				"against deletion) or let Lifeboat create it (create-bucket=true)", b.bucket))
		}
		err := b.do(ctx, "open", b.location, func(ctx context.Context) error {
			err := b.client.MakeBucket(ctx, b.bucket, minio.MakeBucketOptions{Region: cfg.Region, ObjectLocking: cfg.ObjectLock})
			if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" {
				return nil // a retry after a lost answer, or a concurrent Open
			}
			return err
		})
		if err != nil {
			return fail(fmt.Errorf("create bucket %q: %w", b.bucket, err))
		}
		b.log.Info("created the staging bucket", "bucket", b.bucket, "object_lock", cfg.ObjectLock, "location", b.location)
	}

	err = b.do(ctx, "open", b.location, func(ctx context.Context) error {
		enabled, mode, validity, unit, err := b.client.GetObjectLockConfig(ctx, b.bucket)
		if code := minio.ToErrorResponse(err).Code; code == "ObjectLockConfigurationNotFoundError" ||
			code == "ObjectLockConfigurationNotFound" {
			b.retention = false
			return nil
		}
		if err != nil {
			return err
		}
		b.retention = enabled == "Enabled"
		if b.retention && mode != nil && validity != nil && unit != nil {
			b.log.Warn("the staging bucket has a default retention: every object is locked that long, "+
				"so expired PITs free no space before it ends", "bucket", b.bucket, "mode", *mode, "validity", *validity, "unit", *unit)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, backend.ErrAccess) && !cfg.ObjectLock {
			// A narrow IAM policy may not allow reading the lock configuration.
			b.log.Warn("cannot read the bucket's Object Lock configuration; assuming none", "bucket", b.bucket, "err", err)
		} else {
			return fail(fmt.Errorf("read the Object Lock configuration of bucket %q: %w", b.bucket, err))
		}
	}
	if cfg.ObjectLock && !b.retention {
		return fail(fmt.Errorf("bucket %q does not have S3 Object Lock enabled, which object-lock=true requires; "+
			"Object Lock can only be enabled when a bucket is created: use a new bucket created with it", b.bucket))
	}

	err = b.do(ctx, "open", b.location, func(ctx context.Context) error {
		v, err := b.client.GetBucketVersioning(ctx, b.bucket)
		if err != nil {
			return err
		}
		b.versioned = v.Status == "Enabled" || v.Status == "Suspended"
		return nil
	})
	if err != nil {
		if !errors.Is(err, backend.ErrAccess) {
			return fail(fmt.Errorf("read the versioning state of bucket %q: %w", b.bucket, err))
		}
		// Without the permission, assume versioning when the bucket has Object Lock,
		// which implies it on AWS.
		b.versioned = b.retention
		b.log.Warn("cannot read the bucket's versioning state", "bucket", b.bucket, "assumed_versioned", b.versioned, "err", err)
	}
	b.log.Debug("opened the staging bucket", "location", b.location, "retention", b.retention, "versioned", b.versioned)
	return nil
}

// Location implements backend.Backend. It holds no credentials.
func (b *Backend) Location() string { return b.location }

// Capabilities implements backend.Backend.
func (b *Backend) Capabilities() backend.Capabilities {
	return backend.Capabilities{Retention: b.retention}
}

// Close implements backend.Backend.
func (b *Backend) Close() error {
	b.transport.CloseIdleConnections()
	return nil
}

func (b *Backend) key(name string) string { return b.prefix + name }

// begin checks an operation's name and context.
func begin(ctx context.Context, op, name string) error {
	if err := backend.ValidName(name); err != nil {
		return &backend.Error{Op: op, Name: name, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return &backend.Error{Op: op, Name: name, Err: err}
	}
	return nil
}

// fnError carries an error of List's fn through do untouched.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// do runs an idempotent request, retrying it while it fails with ErrUnavailable, at
// most b.attempts times in all, with backoff, as long as ctx allows. It returns a
// *backend.Error naming the object, or nil.
func (b *Backend) do(ctx context.Context, op, name string, fn func(ctx context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if fe, ok := err.(fnError); ok {
			return fe.err
		}
		if be, ok := err.(*backend.Error); ok {
			return be
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return &backend.Error{Op: op, Name: name, Err: fmt.Errorf("%w (last error: %w)", ctxErr, err)}
		}
		kind := kindOf(err)
		if kind != backend.ErrUnavailable || attempt >= b.attempts {
			if kind == backend.ErrUnavailable {
				err = fmt.Errorf("%d attempts: %w", attempt, err)
			}
			if certError(err) {
				err = fmt.Errorf("the endpoint's TLS certificate is not trusted: give its CA (ca=/path/ca.pem): %w", err)
			}
			if name != b.location {
				err = fmt.Errorf("%s: %w", b.location, err)
			}
			return &backend.Error{Op: op, Name: name, Kind: kind, Err: err}
		}
		delay := min(backoffCap, backoffBase<<(attempt-1))
		delay = delay/2 + rand.N(delay/2+1)
		b.log.Warn("staging storage did not answer; retrying", "op", op, "object", name,
			"attempt", attempt, "max_attempts", b.attempts, "delay", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return &backend.Error{Op: op, Name: name, Err: fmt.Errorf("%w (last error: %w)", ctx.Err(), err)}
		}
	}
}

// kindOf maps an S3 or transport error to the backend's error kinds.
func kindOf(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code != "" || er.StatusCode != 0) {
		switch er.Code {
		case "NoSuchKey", "NoSuchVersion":
			return backend.ErrNotFound
		case "InvalidRange":
			return backend.ErrOutOfRange
		case "ObjectLocked":
			return backend.ErrLocked
		case "QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "EntityTooLarge",
			"InsufficientStorage", "StorageFull":
			return backend.ErrFull
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
			"AllAccessDisabled", "AccountProblem", "InvalidObjectState",
			"XAdminUserNotFound": // versitygw's answer (a 404) to an unknown access key
			if lockDenial(er) {
				return backend.ErrLocked
			}
			return backend.ErrAccess
		case "InvalidRequest":
			if lockDenial(er) {
				return backend.ErrLocked
			}
		case "SlowDown", "SlowDownRead", "SlowDownWrite", "RequestTimeout", "InternalError", "ServiceUnavailable",
			"Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestThrottled",
			"XMinioServerNotInitialized", "OperationAborted":
			return backend.ErrUnavailable
		case "NoSuchBucket":
			return nil // misconfigured or deleted under us: retrying will not help
		}
		switch {
		case er.StatusCode == http.StatusRequestedRangeNotSatisfiable:
			return backend.ErrOutOfRange
		case er.StatusCode == http.StatusInsufficientStorage:
			return backend.ErrFull
		case er.StatusCode == http.StatusNotFound:
			return backend.ErrNotFound
		case er.StatusCode == http.StatusForbidden || er.StatusCode == http.StatusUnauthorized:
			return backend.ErrAccess
		case er.StatusCode >= 500, er.StatusCode == http.StatusRequestTimeout, er.StatusCode == http.StatusTooManyRequests:
			return backend.ErrUnavailable
		}
		return nil
	}
	// A certificate the client refuses is a configuration error, not an outage.
	if certError(err) {
		return nil
	}
	var netErr net.Error
	var urlErr *url.Error
	if errors.As(err, &netErr) || errors.As(err, &urlErr) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return backend.ErrUnavailable
	}
	return nil
}

// certError reports whether err is a refusal of the endpoint's certificate.
func certError(err error) bool {
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certErr *tls.CertificateVerificationError
	return errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &certErr)
}

// lockDenial tells a refusal because of Object Lock (AWS: AccessDenied "because object
// protected by object lock"; MinIO: "Object is WORM protected") from one of the
// credentials.
func lockDenial(er minio.ErrorResponse) bool {
	msg := strings.ToLower(er.Message)
	return strings.Contains(msg, "object lock") || strings.Contains(msg, "worm") || strings.Contains(msg, "retention")
}

// retainedUntil is the retention a HEAD response reports, zero for none.
func retainedUntil(info minio.ObjectInfo) time.Time {
	v := info.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date")
	if v == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		// Unparseable: take it as in force rather than risk replacing a locked object.
		return time.Now().Add(time.Hour)
	}
	return t
}

// roundUp rounds a retention time up to the second, S3's resolution: never shorter.
func roundUp(t time.Time) time.Time {
	r := t.UTC().Truncate(time.Second)
	if r.Before(t) {
		r = r.Add(time.Second)
	}
	return r
}

// Put implements backend.Backend: one PUT with a CRC32C checksum.
func (b *Backend) Put(ctx context.Context, name string, data []byte, opts backend.PutOptions) error {
	if err := begin(ctx, "put", name); err != nil {
		return err
	}
	key := b.key(name)
	var prevVersion string
	if b.versioned {
		// On a versioned bucket a PUT adds a version beside a retained one instead
		// of being refused: refuse here, and remember what to remove once replaced.
		var info minio.ObjectInfo
		err := b.do(ctx, "put", name, func(ctx context.Context) (err error) {
			info, err = b.client.StatObject(ctx, b.bucket, key, minio.StatObjectOptions{})
			return err
		})
		switch {
		case err == nil:
			if until := retainedUntil(info); until.After(time.Now()) {
				return &backend.Error{Op: "put", Name: name, Kind: backend.ErrLocked,
					Err: fmt.Errorf("retained until %s", until.Format(time.RFC3339))}
			}
			prevVersion = info.VersionID
		case !errors.Is(err, backend.ErrNotFound):
			return err
		}
	}
	popts := minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		DisableMultipart: len(data) <= maxSinglePut,
		// Content-MD5: every S3 server checks it, and AWS requires it (or a
		// checksum) on a PUT with Object Lock retention.
		SendContentMd5: true,
	}
	if b.retention && opts.RetainUntil.After(time.Now()) {
		popts.Mode = minio.Compliance
		popts.RetainUntilDate = roundUp(opts.RetainUntil)
	}
	var up minio.UploadInfo
	err := b.do(ctx, "put", name, func(ctx context.Context) (err error) {
		up, err = b.client.PutObject(ctx, b.bucket, key, bytes.NewReader(data), int64(len(data)), popts)
		return err
	})
	if err != nil {
		return err
	}
	if prevVersion == "" || prevVersion == "null" || prevVersion == up.VersionID {
		return nil
	}
	// The replaced version would take space forever: remove it, even if the caller
	// gives up now (the new object is in place already).
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	err = b.removeVersion(cctx, "put", name, prevVersion)
	if errors.Is(err, backend.ErrLocked) {
		// Retained between our look and our PUT: put the old version back on top.
		if undo := b.removeVersion(cctx, "put", name, up.VersionID); undo != nil {
			b.log.Error("a replaced object's retained version is no longer the current one", "object", name, "err", undo)
		}
		return err
	}
	if err != nil {
		b.log.Warn("could not remove the version an object replaced; it takes space until the object is deleted",
			"object", name, "version", prevVersion, "err", err)
	}
	return nil
}

func (b *Backend) removeVersion(ctx context.Context, op, name, version string) error {
	err := b.do(ctx, op, name, func(ctx context.Context) error {
		return b.client.RemoveObject(ctx, b.bucket, b.key(name), minio.RemoveObjectOptions{VersionID: version})
	})
	if errors.Is(err, backend.ErrNotFound) {
		return nil // removed already, by a retry or a concurrent Delete
	}
	return err
}

// Get implements backend.Backend.
func (b *Backend) Get(ctx context.Context, name string) ([]byte, error) {
	if err := begin(ctx, "get", name); err != nil {
		return nil, err
	}
	var data []byte
	err := b.do(ctx, "get", name, func(ctx context.Context) error {
		rc, info, _, err := b.core.GetObject(ctx, b.bucket, b.key(name), minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer rc.Close()
		data, err = readAll(rc, info.Size)
		return err
	})
	return data, err
}

// readAll reads a response body of size bytes (-1: unknown).
func readAll(r io.Reader, size int64) ([]byte, error) {
	if size < 0 {
		return io.ReadAll(r)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read %d bytes: %w", size, err)
	}
	return buf, nil
}

// ReadAt implements backend.Backend with one ranged GET.
func (b *Backend) ReadAt(ctx context.Context, name string, off, length int64) ([]byte, error) {
	if err := begin(ctx, "read", name); err != nil {
		return nil, err
	}
	outOfRange := func(detail string) error {
		return &backend.Error{Op: "read", Name: name, Kind: backend.ErrOutOfRange,
			Err: fmt.Errorf("%d bytes at offset %d: %s", length, off, detail)}
	}
	if off < 0 || length < 0 || length > math.MaxInt64-off {
		return nil, outOfRange("not a range")
	}
	if length == 0 {
		info, err := b.stat(ctx, "read", name)
		if err != nil {
			return nil, err
		}
		if off > info.Size {
			return nil, outOfRange(fmt.Sprintf("the object has %d", info.Size))
		}
		return []byte{}, nil
	}
	var data []byte
	err := b.do(ctx, "read", name, func(ctx context.Context) error {
		opts := minio.GetObjectOptions{}
		if err := opts.SetRange(off, off+length-1); err != nil {
			return err
		}
		rc, info, _, err := b.core.GetObject(ctx, b.bucket, b.key(name), opts)
		if err != nil {
			return err
		}
		defer rc.Close()
		if info.Size > length {
			return fmt.Errorf("asked for %d bytes at %d, the server sent %d: it does not honour ranges", length, off, info.Size)
		}
		data, err = readAll(rc, info.Size)
		return err
	})
	if err != nil {
		return nil, err
	}
	if int64(len(data)) < length {
		return nil, outOfRange(fmt.Sprintf("only %d there", len(data)))
	}
	return data, nil
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	if err := begin(ctx, "stat", name); err != nil {
		return backend.ObjectInfo{}, err
	}
	return b.stat(ctx, "stat", name)
}

func (b *Backend) stat(ctx context.Context, op, name string) (backend.ObjectInfo, error) {
	var info minio.ObjectInfo
	err := b.do(ctx, op, name, func(ctx context.Context) (err error) {
		info, err = b.client.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	return backend.ObjectInfo{Name: name, Size: info.Size, ModTime: info.LastModified}, nil
}

// List implements backend.Backend. A listing that fails midway is resumed after the
// last object listed, so fn sees each object once.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	if err := backend.ValidPrefix(prefix); err != nil {
		return &backend.Error{Op: "list", Name: prefix, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return &backend.Error{Op: "list", Name: prefix, Err: err}
	}
	after := ""
	return b.do(ctx, "list", prefix, func(ctx context.Context) error {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		opts := minio.ListObjectsOptions{Prefix: b.prefix + prefix, Recursive: true, StartAfter: after}
		for obj := range b.client.ListObjectsIter(lctx, b.bucket, opts) {
			if obj.Err != nil {
				return obj.Err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			after = obj.Key
			name := strings.TrimPrefix(obj.Key, b.prefix)
			if backend.ValidName(name) != nil {
				// Not ours: a "directory" marker or a file someone else put there.
				b.log.Debug("skipping a key that is no object name", "key", obj.Key)
				continue
			}
			if err := fn(backend.ObjectInfo{Name: name, Size: obj.Size, ModTime: obj.LastModified}); err != nil {
				return fnError{err}
			}
		}
		return ctx.Err()
	})
}

// Delete implements backend.Backend. On a versioned bucket every version of the object
// goes, oldest first, so a retained version stops the delete before the current one
// is touched.
func (b *Backend) Delete(ctx context.Context, name string) error {
	if err := begin(ctx, "delete", name); err != nil {
		return err
	}
	key := b.key(name)
	if !b.versioned {
		err := b.do(ctx, "delete", name, func(ctx context.Context) error {
			return b.client.RemoveObject(ctx, b.bucket, key, minio.RemoveObjectOptions{})
		})
		if errors.Is(err, backend.ErrNotFound) {
			return nil
		}
		return err
	}
	var versions []minio.ObjectInfo
	err := b.do(ctx, "delete", name, func(ctx context.Context) error {
		versions = versions[:0]
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for obj := range b.client.ListObjectsIter(lctx, b.bucket, minio.ListObjectsOptions{Prefix: key, WithVersions: true}) {
			if obj.Err != nil {
				return obj.Err
			}
			if obj.Key == key {
				versions = append(versions, obj)
			}
		}
		return ctx.Err()
	})
	if err != nil {
		return err
	}
	slices.SortStableFunc(versions, func(x, y minio.ObjectInfo) int {
		if x.IsLatest != y.IsLatest {
			if x.IsLatest {
				return 1
			}
			return -1
		}
		return x.LastModified.Compare(y.LastModified)
	})
	for _, v := range versions {
		if err := b.removeVersion(ctx, "delete", name, v.VersionID); err != nil {
			return err
		}
	}
	return nil
}

// Retain implements backend.Backend: a COMPLIANCE-mode retention on the object's
// current version, extended only, never shortened.
func (b *Backend) Retain(ctx context.Context, name string, until time.Time) error {
	if err := begin(ctx, "retain", name); err != nil {
		return err
	}
	if !b.retention {
		return &backend.Error{Op: "retain", Name: name, Kind: backend.ErrRetentionUnsupported,
			Err: fmt.Errorf("bucket %q has no S3 Object Lock", b.bucket)}
	}
	key := b.key(name)
	// HEAD says whether the object exists and its retention in one request, on every
	// server (versitygw's GetObjectRetention answer is not the XML AWS documents).
	var info minio.ObjectInfo
	err := b.do(ctx, "retain", name, func(ctx context.Context) (err error) {
		info, err = b.client.StatObject(ctx, b.bucket, key, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return err
	}
	current := retainedUntil(info)
	until = roundUp(until)
	if !until.After(current) || !until.After(time.Now()) {
		return nil
	}
	mode := minio.Compliance
	return b.do(ctx, "retain", name, func(ctx context.Context) error {
		return b.client.PutObjectRetention(ctx, b.bucket, key, minio.PutObjectRetentionOptions{
			Mode: &mode, RetainUntilDate: &until,
		})
	})
}
