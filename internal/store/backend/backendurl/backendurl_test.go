package backendurl_test

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/file"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/s3"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/minio/minio-go/v7"
)

func TestParse(t *testing.T) {
	wd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		url  string
		want backendurl.Target
	}{
		{"file:///var/lib/lifeboat/staging", backendurl.Target{Scheme: "file", Dir: "/var/lib/lifeboat/staging"}},
		{"file://localhost/srv/x/", backendurl.Target{Scheme: "file", Dir: "/srv/x"}},
		{"/srv/staging", backendurl.Target{Scheme: "file", Dir: "/srv/staging"}},
		{"staging", backendurl.Target{Scheme: "file", Dir: filepath.Join(wd, "staging")}},
		{"s3://my-bucket", backendurl.Target{Scheme: "s3", S3: s3.Config{Bucket: "my-bucket", UseTLS: true}}},
		{"s3://my-bucket/site-a/pits/", backendurl.Target{Scheme: "s3", S3: s3.Config{Bucket: "my-bucket", Prefix: "site-a/pits", UseTLS: true}}},
		{"s3://b01/p?endpoint=127.0.0.1:9000&region=eu-west-1&tls=false&object-lock=true",
			backendurl.Target{Scheme: "s3", S3: s3.Config{Bucket: "b01", Prefix: "p", Endpoint: "127.0.0.1:9000",
				Region: "eu-west-1", ObjectLock: true}}},
		{"S3://b01?create-bucket=1&ca=/etc/ssl/s3.pem&insecure-skip-verify=false",
			backendurl.Target{Scheme: "s3", S3: s3.Config{Bucket: "b01", UseTLS: true, CreateBucket: true, CAFile: "/etc/ssl/s3.pem"}}},
	} {
		got, err := backendurl.Parse(tc.url)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.url, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.url, got, tc.want)
		}
		back, err := backendurl.Parse(got.String())
		if err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("Parse(%q).String() = %q, which parses to %+v, %v", tc.url, got.String(), back, err)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, tc := range []struct{ url, why string }{
		{"", "empty"},
		{"   ", "empty"},
		{"file://host/dir", "host"},
		{"file:relative", "scheme"},
		{"s3:bucket/p", "scheme"},
		{"file:///dir?x=1", "no parameters"},
		{"ftp://bucket/x", "scheme"},
		{"s3://AKIA:secret@bucket/p", "credentials"},
		{"s3://Bad_Bucket/p", "bucket"},
		{"s3://bucket:9000/p", "bucket"},
		{"s3:///p", "bucket"},
		{"s3://bucket/../p", "prefix"},
		{"s3://bucket/P", "prefix"},
		{"s3://bucket/p?endpont=x:1", "unknown parameter"},
		{"s3://bucket/p?tls=maybe", "true or false"},
		{"s3://bucket/p?tls=true&tls=false", "2 times"},
		{"s3://bucket/p?endpoint=http://x:1", "host:port"},
		{"s3://bucket/p?endpoint=", "host:port"},
		{"s3://bucket/p?ca=ca.pem", "absolute"},
		{"s3://bucket/p#frag", "fragment"},
		{"/dir\x00x", "control"},
	} {
		_, err := backendurl.Parse(tc.url)
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want an error (%s)", tc.url, tc.why)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.why) || !strings.HasSuffix(msg, backendurl.Forms) {
			t.Errorf("Parse(%q) = %q, want it to say %q and end with the accepted forms", tc.url, msg, tc.why)
		}
		if strings.Contains(msg, "secret") && !strings.Contains(tc.url, "secret") {
			t.Errorf("message %q", msg)
		}
	}
	// The refused URL with credentials is not echoed with its secret either: the
	// message quotes the URL, so say so plainly.
	_, err := backendurl.Parse("s3://AKIA:hunter2@bucket/p")
	if err == nil || !strings.Contains(err.Error(), "never taken from the URL") {
		t.Fatalf("credentials in the URL: %v", err)
	}
}

func TestCredentials(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tc := range []struct {
		env            map[string]string
		access, secret string
		err            string
	}{
		{map[string]string{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}, "a", "s", ""},
		{map[string]string{"LIFEBOAT_S3_ACCESS_KEY": "la", "LIFEBOAT_S3_SECRET_KEY": "ls",
			"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}, "la", "ls", ""},
		{map[string]string{"LIFEBOAT_S3_ACCESS_KEY": "la"}, "", "", "must both be set"},
		{map[string]string{}, "", "", "not set"},
	} {
		a, s, err := backendurl.Credentials(env(tc.env))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Credentials(%v) = %v, want an error saying %q", tc.env, err, tc.err)
			}
			continue
		}
		if err != nil || a != tc.access || s != tc.secret {
			t.Errorf("Credentials(%v) = %q, %q, %v", tc.env, a, s, err)
		}
	}
}

func TestOpenFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "staging")
	for _, u := range []string{"file://" + dir, dir} {
		b, err := backendurl.Open(t.Context(), u)
		if err != nil {
			t.Fatalf("open %s: %v", u, err)
		}
		fb, ok := b.(*file.Backend)
		if !ok || fb.Root() != dir || b.Location() != "file://"+dir {
			t.Fatalf("open %s = %T at %s", u, b, b.Location())
		}
		b.Close()
	}
	// An error is a nil Backend, not a typed nil.
	b, err := backendurl.Open(t.Context(), "ftp://x")
	if err == nil || b != nil {
		t.Fatalf("open ftp://x = %v, %v", b, err)
	}
}

// TestOpenS3 opens a versitygw bucket from a URL, with the credentials from the
// environment, and stores an object through it.
func TestOpenS3(t *testing.T) {
	srv := testutil.StartVersitygw(t)
	bucket := srv.Bucket(t, true)
	u := "s3://" + bucket + "/lifeboat?endpoint=" + srv.Endpoint + "&region=" + srv.Region + "&tls=false&object-lock=true"

	t.Setenv("LIFEBOAT_S3_ACCESS_KEY", "")
	t.Setenv("LIFEBOAT_S3_SECRET_KEY", "")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	if _, err := backendurl.Open(t.Context(), u); err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Fatalf("open without credentials: %v, want an error naming the variables", err)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	if _, err := backendurl.Open(t.Context(), u); !errors.Is(err, backend.ErrAccess) {
		t.Fatalf("open with a wrong secret: %v, want ErrAccess", err)
	}

	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b, err := backendurl.Open(ctx, u)
	if err != nil {
		t.Fatalf("open %s: %v", u, err)
	}
	defer b.Close()
	if !b.Capabilities().Retention {
		t.Fatal("object-lock=true on a locked bucket: no retention")
	}
	if b.Location() != u {
		t.Fatalf("location %q, want the URL it was opened with, %q", b.Location(), u)
	}
	if strings.Contains(b.Location(), srv.SecretKey) {
		t.Fatal("location shows the secret")
	}
	if err := b.Put(ctx, "data/x", []byte("through the URL"), backend.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client(t).StatObject(ctx, bucket, "lifeboat/data/x", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("the object is not under the URL's prefix: %v", err)
	}
	if err := b.Delete(ctx, "data/x"); err != nil {
		t.Fatal(err)
	}
}

// FuzzParse: any string either fails with the accepted forms, or parses to a target
// that is well formed and survives String and Parse again unchanged.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"file:///var/lib/lifeboat", "/srv/x", "rel/dir", "s3://b01/p?endpoint=127.0.0.1:9000&tls=false",
		"s3://bucket/a/b?region=eu&object-lock=true&create-bucket=true&ca=/x.pem&insecure-skip-verify=1",
		"s3://u:p@b/x", "file://h/x", "s3://b/%2e%2e/x", "s3://b?tls=", "://", "s3://b/p#f",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		tgt, err := backendurl.Parse(raw)
		if err != nil {
			if !strings.HasSuffix(err.Error(), backendurl.Forms) {
				t.Fatalf("Parse(%q) error %q does not end with the accepted forms", raw, err)
			}
			return
		}
		switch tgt.Scheme {
		case "file":
			if !filepath.IsAbs(tgt.Dir) || filepath.Clean(tgt.Dir) != tgt.Dir {
				t.Fatalf("Parse(%q): directory %q is not absolute and clean", raw, tgt.Dir)
			}
		case "s3":
			if tgt.S3.Prefix != "" && backend.ValidName(tgt.S3.Prefix) != nil {
				t.Fatalf("Parse(%q): prefix %q", raw, tgt.S3.Prefix)
			}
			if tgt.S3.AccessKey != "" || tgt.S3.SecretKey != "" {
				t.Fatalf("Parse(%q) took credentials from the URL", raw)
			}
		default:
			t.Fatalf("Parse(%q): scheme %q", raw, tgt.Scheme)
		}
		back, err := backendurl.Parse(tgt.String())
		if err != nil || !reflect.DeepEqual(back, tgt) {
			t.Fatalf("Parse(%q) = %+v; its String %q parses to %+v, %v", raw, tgt, tgt.String(), back, err)
		}
	})
}
