package testutil

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// versitygwHint says how to get the S3 server the S3 backend's tests run against.
const versitygwHint = "versitygw is not installed (scripts/test builds it into .cache/bin; by hand: " +
	"GOBIN=$PWD/.cache/bin go install github.com/versity/versitygw/cmd/versitygw@v1.8.0, " +
	"or set LIFEBOAT_TEST_VERSITYGW to its path)"

// S3Server is a real S3 server (versitygw, posix backend on a directory) listening on
// 127.0.0.1 for one test. It is stopped by its pid when the test ends.
type S3Server struct {
	Endpoint  string // host:port, plain HTTP
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // where the buckets are kept
	Log       string // the server's output
	CAFile    string // with TLS: the PEM certificate to trust (self-signed, for 127.0.0.1)

	cmd     *exec.Cmd
	exited  chan struct{}
	buckets atomic.Int64
}

// VersitygwOptions configure StartVersitygwWith.
type VersitygwOptions struct {
	// Dir is the directory the buckets are kept in; empty: a new temporary directory.
	Dir string
	// Versioning gives the gateway a versioning directory, so buckets created with
	// object lock are versioned, as on AWS S3 (where Object Lock implies versioning).
	Versioning bool
	// TLS serves HTTPS with a new self-signed certificate for 127.0.0.1 (CAFile).
	TLS bool
}

// VersitygwBinary finds versitygw: $LIFEBOAT_TEST_VERSITYGW, else versitygw on PATH,
// else .cache/bin/versitygw of the repository. It needs it (testutil.Need) otherwise.
func VersitygwBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LIFEBOAT_TEST_VERSITYGW"); p != "" {
		_, err := os.Stat(p)
		Need(t, err == nil, fmt.Sprintf("LIFEBOAT_TEST_VERSITYGW=%s: %v; %s", p, err, versitygwHint))
		return p
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if root, err := repoRoot(); err == nil {
		p := filepath.Join(root, ".cache", "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	Need(t, false, versitygwHint)
	return ""
}

// repoRoot is the directory holding go.mod, found from the working directory (a
// package's directory under go test).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// StartVersitygw starts versitygw with a versioning directory (object-locked buckets
// are versioned, as on AWS) on a new temporary directory.
func StartVersitygw(t testing.TB) *S3Server {
	t.Helper()
	return StartVersitygwWith(t, VersitygwOptions{Versioning: true})
}

// StartVersitygwWith starts versitygw as opts say, on 127.0.0.1 and a free port.
func StartVersitygwWith(t testing.TB, opts VersitygwOptions) *S3Server {
	t.Helper()
	bin := VersitygwBinary(t)
	work := t.TempDir()
	dir := opts.Dir
	if dir == "" {
		dir = filepath.Join(work, "buckets")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatalf("versitygw directory: %v", err)
		}
	}
	s := &S3Server{
		AccessKey: "lifeboat-" + randomHex(t, 4),
		SecretKey: randomHex(t, 20),
		Region:    "us-east-1",
		Dir:       dir,
		Log:       filepath.Join(work, "versitygw.log"),
	}
	// The port was free a moment ago; another process may take it first: try again.
	var lastErr error
	var keyFile string
	for try := 0; try < 3; try++ {
		s.Endpoint = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		args := []string{"--port", s.Endpoint, "--region", s.Region, "--quiet"}
		if opts.TLS {
			if s.CAFile == "" {
				s.CAFile, keyFile = selfSigned(t, work)
			}
			args = append(args, "--cert", s.CAFile, "--key", keyFile)
		}
		args = append(args, "posix")
		if opts.Versioning {
			vdir := filepath.Join(work, fmt.Sprintf("versions-%d", try))
			if err := os.Mkdir(vdir, 0o700); err != nil {
				t.Fatalf("versitygw versioning directory: %v", err)
			}
			args = append(args, "--versioning-dir", vdir)
		}
		args = append(args, dir)
		if lastErr = s.start(t, bin, args); lastErr == nil {
			return s
		}
	}
	t.Fatalf("start versitygw: %v", lastErr)
	return nil
}

func (s *S3Server) start(t testing.TB, bin string, args []string) error {
	t.Helper()
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	// Only what it needs: no VGW_* setting of the environment running the tests, and
	// the root credentials off the command line.
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"ROOT_ACCESS_KEY_ID=" + s.AccessKey,
		"ROOT_SECRET_ACCESS_KEY=" + s.SecretKey,
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	t.Cleanup(func() { s.Stop(t) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited at start (%s): %s", cmd.ProcessState, s.tail())
		default:
		}
		c, err := net.DialTimeout("tcp", s.Endpoint, time.Second)
		if err == nil {
			c.Close()
			t.Logf("versitygw pid %d on %s (%s)", cmd.Process.Pid, s.Endpoint, s.Dir)
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop(t)
			return fmt.Errorf("versitygw did not listen on %s within 30s: %s", s.Endpoint, s.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tail is the end of the server's output, for messages.
func (s *S3Server) tail() string {
	b, _ := os.ReadFile(s.Log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// Stop kills the server by its pid and waits for it; stopping twice is harmless.
func (s *S3Server) Stop(t testing.TB) {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	t.Logf("stopped versitygw (pid %d)", s.cmd.Process.Pid)
}

// Client is an S3 client of the server with the root credentials, for tests to look
// at what a backend left (versions, retention) with their own eyes.
func (s *S3Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	opts := &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region: s.Region,
	}
	if s.CAFile != "" {
		caPEM, err := os.ReadFile(s.CAFile)
		if err != nil {
			t.Fatalf("read %s: %v", s.CAFile, err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		opts.Secure = true
		opts.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	c, err := minio.New(s.Endpoint, opts)
	if err != nil {
		t.Fatalf("S3 client for %s: %v", s.Endpoint, err)
	}
	return c
}

// Bucket creates a new bucket, with S3 Object Lock enabled when objectLock, and
// returns its name.
func (s *S3Server) Bucket(t testing.TB, objectLock bool) string {
	t.Helper()
	name := fmt.Sprintf("lifeboat-test-%d", s.buckets.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s.Region, ObjectLocking: objectLock})
	if err != nil {
		t.Fatalf("create bucket %s (object lock %v) on versitygw: %v", name, objectLock, err)
	}
	return name
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key into dir and
// returns their paths.
func selfSigned(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate a key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lifeboat test S3"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create a certificate: %v", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("marshal the key: %v", err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
