// Package backendurl opens a staging store backend from the URL an operator gives:
// file:///abs/dir, a plain directory path, or
// s3://bucket/prefix?endpoint=host:port&region=r&tls=false&object-lock=true.
//
// Credentials never come from the URL (it is logged, shown and stored): the S3
// backend takes them from the environment, LIFEBOAT_S3_ACCESS_KEY and
// LIFEBOAT_S3_SECRET_KEY, else AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
package backendurl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/s3"
)

// Forms is the sentence that ends every parse error: the URLs that are accepted.
const Forms = "use file:///absolute/dir, a directory path, or " +
	"s3://bucket/prefix?endpoint=host:port&region=r&tls=false&object-lock=true " +
	"(also create-bucket=true, ca=/path/ca.pem, insecure-skip-verify=true), " +
	"with S3 credentials in LIFEBOAT_S3_ACCESS_KEY/LIFEBOAT_S3_SECRET_KEY or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"

// s3Params are the query parameters of an s3:// URL, in the order String writes them.
func s3Params() []string {
	return []string{"endpoint", "region", "tls", "object-lock", "create-bucket", "ca", "insecure-skip-verify"}
}

// Target is a parsed staging store URL.
type Target struct {
	// Scheme is "file" or "s3".
	Scheme string
	// Dir is the file backend's absolute directory.
	Dir string
	// S3 is the S3 backend's configuration, without credentials.
	S3 s3.Config
}

// Parse parses a staging store URL. Relative directory paths are made absolute.
func Parse(rawURL string) (Target, error) {
	bad := func(format string, args ...any) (Target, error) {
		return Target{}, fmt.Errorf("staging store URL %q: %s; %s", rawURL, fmt.Sprintf(format, args...), Forms)
	}
	if strings.TrimSpace(rawURL) == "" {
		return bad("it is empty")
	}
	if strings.ContainsAny(rawURL, "\x00\n\r") {
		return bad("it has a control character")
	}
	scheme, _, hasScheme := strings.Cut(rawURL, "://")
	if !hasScheme {
		if s, _, ok := strings.Cut(rawURL, ":"); ok && isScheme(s) {
			return bad("scheme %q needs \"://\" (or write a directory as ./%s)", s, rawURL)
		}
		// A plain path.
		dir, err := filepath.Abs(rawURL)
		if err != nil {
			return bad("%v", err)
		}
		return Target{Scheme: "file", Dir: dir}, nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return bad("%v", errors.Unwrap(err))
	}
	if u.User != nil {
		return bad("credentials are never taken from the URL, which is logged and shown; set them in the environment")
	}
	if u.Fragment != "" || u.RawFragment != "" || strings.Contains(rawURL, "#") {
		return bad("it has a fragment (#…)")
	}
	switch strings.ToLower(scheme) {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return bad("a file URL names a local directory, not host %q (file:///dir has three slashes)", u.Host)
		}
		if u.RawQuery != "" || u.ForceQuery {
			return bad("a file URL takes no parameters")
		}
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return bad("a file URL needs an absolute directory")
		}
		return Target{Scheme: "file", Dir: filepath.Clean(u.Path)}, nil
	case "s3":
		return parseS3(u, bad)
	default:
		return bad("scheme %q is not one of file and s3", scheme)
	}
}

// isScheme reports whether s looks like a URL scheme (RFC 3986: a letter, then
// letters, digits, '+', '-' and '.').
func isScheme(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func parseS3(u *url.URL, bad func(string, ...any) (Target, error)) (Target, error) {
	cfg := s3.Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"), UseTLS: true}
	if u.Opaque != "" {
		return bad("an s3 URL is s3://bucket/prefix")
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return bad("bucket %q: %v", cfg.Bucket, err)
	}
	if cfg.Prefix != "" {
		if err := backend.ValidName(cfg.Prefix); err != nil {
			return bad("prefix %q: %v", cfg.Prefix, err)
		}
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("parameters: %v", err)
	}
	for k, vs := range q {
		if !slices.Contains(s3Params(), k) {
			return bad("unknown parameter %q", k)
		}
		if len(vs) != 1 {
			return bad("parameter %q is given %d times", k, len(vs))
		}
	}
	boolParam := func(name string, dst *bool) error {
		v, ok := q[name]
		if !ok {
			return nil
		}
		b, err := strconv.ParseBool(v[0])
		if err != nil {
			return fmt.Errorf("%s=%q is not true or false", name, v[0])
		}
		*dst = b
		return nil
	}
	for name, dst := range map[string]*bool{
		"tls":                  &cfg.UseTLS,
		"object-lock":          &cfg.ObjectLock,
		"create-bucket":        &cfg.CreateBucket,
		"insecure-skip-verify": &cfg.InsecureSkipVerify,
	} {
		if err := boolParam(name, dst); err != nil {
			return bad("%v", err)
		}
	}
	cfg.Endpoint = q.Get("endpoint")
	if q.Has("endpoint") && (cfg.Endpoint == "" || strings.ContainsAny(cfg.Endpoint, "/?#@ ") || strings.Contains(cfg.Endpoint, "://")) {
		return bad("endpoint=%q is not host:port", cfg.Endpoint)
	}
	cfg.Region = q.Get("region")
	if strings.ContainsAny(cfg.Region, "/?#@ ") {
		return bad("region=%q is not a region name", cfg.Region)
	}
	cfg.CAFile = q.Get("ca")
	if q.Has("ca") && !filepath.IsAbs(cfg.CAFile) {
		return bad("ca=%q is not an absolute path to a PEM file", cfg.CAFile)
	}
	return Target{Scheme: "s3", S3: cfg}, nil
}

// String is the canonical URL of the target (without credentials); Parse gives the
// same target back.
func (t Target) String() string {
	if t.Scheme == "file" {
		return (&url.URL{Scheme: "file", Path: t.Dir}).String()
	}
	c := t.S3
	var params []string
	add := func(k, v string) { params = append(params, k+"="+url.QueryEscape(v)) }
	for _, k := range s3Params() {
		switch k {
		case "endpoint":
			if c.Endpoint != "" {
				add(k, c.Endpoint)
			}
		case "region":
			if c.Region != "" {
				add(k, c.Region)
			}
		case "tls":
			if !c.UseTLS {
				add(k, "false")
			}
		case "object-lock":
			if c.ObjectLock {
				add(k, "true")
			}
		case "create-bucket":
			if c.CreateBucket {
				add(k, "true")
			}
		case "ca":
			if c.CAFile != "" {
				add(k, c.CAFile)
			}
		case "insecure-skip-verify":
			if c.InsecureSkipVerify {
				add(k, "true")
			}
		}
	}
	s := "s3://" + c.Bucket
	if c.Prefix != "" {
		s += "/" + c.Prefix
	}
	if len(params) > 0 {
		s += "?" + strings.ReplaceAll(strings.Join(params, "&"), "%3A", ":")
	}
	return s
}

// Credentials returns the S3 access key and secret key from the environment (lookup
// is os.LookupEnv outside tests): LIFEBOAT_S3_ACCESS_KEY and LIFEBOAT_S3_SECRET_KEY,
// else AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, each pair whole.
func Credentials(lookup func(string) (string, bool)) (access, secret string, err error) {
	for _, pair := range [][2]string{
		{"LIFEBOAT_S3_ACCESS_KEY", "LIFEBOAT_S3_SECRET_KEY"},
		{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
	} {
		a, aok := lookup(pair[0])
		s, sok := lookup(pair[1])
		if aok && sok && a != "" && s != "" {
			return a, s, nil
		}
		if (aok && a != "") != (sok && s != "") {
			return "", "", fmt.Errorf("S3 credentials: %s and %s must both be set", pair[0], pair[1])
		}
	}
	return "", "", errors.New("S3 credentials are not set: export LIFEBOAT_S3_ACCESS_KEY and LIFEBOAT_S3_SECRET_KEY " +
		"(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
}

// Option changes how Open opens a store.
type Option func(*options)

type options struct {
	access, secret string
	log            *slog.Logger
}

// WithCredentials gives an s3:// store this access key and secret key instead of the
// environment's (empty strings: the environment's). The control plane keeps per-store
// credentials and hands them to the replicators of the store's account with its key.
func WithCredentials(accessKey, secretKey string) Option {
	return func(o *options) { o.access, o.secret = accessKey, secretKey }
}

// WithLogger gives the backend a logger for its retries and warnings (default: none).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Open parses rawURL and opens its backend; an S3 backend takes its credentials from
// WithCredentials, else from the environment (see Credentials).
func Open(ctx context.Context, rawURL string, opts ...Option) (backend.Backend, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	t, err := Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if (o.access == "") != (o.secret == "") || (o.access != "" && t.Scheme != "s3") {
		return nil, fmt.Errorf("staging store %s: credentials are an access key and a secret key, for s3:// stores only", t)
	}
	if t.Scheme == "file" {
		b, err := file.Open(t.Dir)
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	cfg := t.S3
	cfg.Logger = o.log
	cfg.AccessKey, cfg.SecretKey = o.access, o.secret
	if cfg.AccessKey == "" {
		if cfg.AccessKey, cfg.SecretKey, err = Credentials(os.LookupEnv); err != nil {
			return nil, fmt.Errorf("staging store %s: %w", t, err)
		}
	}
	b, err := s3.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return b, nil
}
