package webhook

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// server starts an HTTPS server and returns it with a Config trusting its certificate.
func server(t *testing.T, h http.HandlerFunc) (*httptest.Server, Config) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return srv, Config{URL: srv.URL + "/hooks/T0/secret-path?token=xyz", Secret: []byte("s3cret"), CAPEM: ca, Timeout: 5 * time.Second}
}

type event struct {
	Plan string `json:"plan"`
	Step string `json:"step"`
}

// A post carries the event as JSON with headers a receiver verifies with the secret.
func TestPostSigned(t *testing.T) {
	type got struct {
		header http.Header
		body   []byte
	}
	gotc := make(chan got, 1)
	_, c := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotc <- got{r.Header.Clone(), b}
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	resp, err := Post(context.Background(), c, event{Plan: "lab", Step: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || string(resp.Body) != `{"ok":true}` {
		t.Fatalf("%+v", resp)
	}
	g := <-gotc
	var e event
	if err := json.Unmarshal(g.body, &e); err != nil || e != (event{"lab", "dns"}) {
		t.Fatalf("body %q: %v", g.body, err)
	}
	if g.header.Get("Content-Type") != "application/json" || g.header.Get("User-Agent") != "lifeboat" {
		t.Fatalf("headers %v", g.header)
	}
	ts, sig := g.header.Get(TimestampHeader), g.header.Get(SignatureHeader)
	if sec, err := strconv.ParseInt(ts, 10, 64); err != nil || time.Since(time.Unix(sec, 0)).Abs() > time.Minute {
		t.Fatalf("timestamp %q", ts)
	}
	if err := Verify(c.Secret, ts, sig, g.body, 5*time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"another secret": Verify([]byte("other"), ts, sig, g.body, 5*time.Minute, time.Now()),
		"changed body":   Verify(c.Secret, ts, sig, append(g.body, ' '), 5*time.Minute, time.Now()),
		"another time":   Verify(c.Secret, ts+"0", sig, g.body, 0, time.Now()),
		"too old":        Verify(c.Secret, ts, sig, g.body, 5*time.Minute, time.Now().Add(time.Hour)),
		"no prefix":      Verify(c.Secret, ts, strings.TrimPrefix(sig, "sha256="), g.body, 0, time.Now()),
		"not seconds":    Verify(c.Secret, "yesterday", sig, g.body, 0, time.Now()),
	} {
		if err == nil {
			t.Errorf("%s: verified", name)
		}
	}
}

// otherCA is a PEM certificate that signed nothing the test servers use.
func otherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// A certificate the configured CA (or the host's roots) did not sign is refused, and
// says so; errors never show the URL's path or query.
func TestPostWrongCA(t *testing.T) {
	_, c := server(t, func(http.ResponseWriter, *http.Request) { t.Error("the post reached the server") })
	for name, ca := range map[string][]byte{"the webhook's CA": otherCA(t), "the host's trusted roots": nil} {
		c.CAPEM = ca
		_, err := Post(context.Background(), c, event{})
		if err == nil || !strings.Contains(err.Error(), "not signed by "+name) {
			t.Errorf("%s: %v", name, err)
		} else if strings.Contains(err.Error(), "secret-path") || strings.Contains(err.Error(), "xyz") {
			t.Errorf("the error shows the URL: %v", err)
		}
	}
	c.CAPEM = []byte("not PEM")
	if _, err := Post(context.Background(), c, event{}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a CA without certificates: %v", err)
	}
}

// Answers other than 2xx are errors with their status and the start of their body; a
// redirect is not followed; the body read is bounded.
func TestPostAnswers(t *testing.T) {
	_, c := server(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("case") {
		case "500":
			http.Error(w, "database down "+strings.Repeat("x", 500), http.StatusInternalServerError)
		case "redirect":
			http.Redirect(w, r, "/elsewhere?case=500", http.StatusFound)
		case "big":
			_, _ = w.Write(make([]byte, 2*MaxResponse))
		}
	})
	base := c.URL
	c.URL = base + "&case=500"
	_, err := Post(context.Background(), c, event{})
	if err == nil || !strings.Contains(err.Error(), "500 Internal Server Error") || !strings.Contains(err.Error(), "database down") ||
		len(err.Error()) > 400 {
		t.Errorf("500: %v", err)
	}
	c.URL = base + "&case=redirect"
	if _, err := Post(context.Background(), c, event{}); err == nil || !strings.Contains(err.Error(), "302") || !strings.Contains(err.Error(), "redirects are not followed") {
		t.Errorf("redirect: %v", err)
	}
	c.URL = base + "&case=big"
	if resp, err := Post(context.Background(), c, event{}); err != nil || len(resp.Body) != MaxResponse {
		t.Errorf("big: %d bytes, %v", len(resp.Body), err)
	}
}

// http:// URLs, URLs without a host and posts without a secret are refused before
// anything is sent.
func TestPostRefused(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("a post was sent") }))
	defer plain.Close()
	for _, c := range []Config{
		{URL: plain.URL, Secret: []byte("k")},
		{URL: "https:///path", Secret: []byte("k")},
		{URL: "https://example.com/"},
	} {
		if _, err := Post(context.Background(), c, event{}); err == nil {
			t.Errorf("%+v: posted", c)
		}
	}
	_, err := Post(context.Background(), Config{URL: plain.URL, Secret: []byte("k")}, event{})
	if err == nil || !strings.Contains(err.Error(), "only https://") {
		t.Errorf("http: %v", err)
	}
}

// A post that gets no answer ends at its Timeout; one whose context ends, at once.
func TestPostTimeout(t *testing.T) {
	_, c := server(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // then the server sees the client leave
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	c.Timeout = 300 * time.Millisecond
	start := time.Now()
	_, err := Post(context.Background(), c, event{})
	if took := time.Since(start); err == nil || !strings.Contains(err.Error(), "no answer within 300ms") || took > 3*time.Second {
		t.Errorf("%v after %v", err, took)
	}
	c.Timeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := Post(ctx, c, event{}); err == nil || time.Since(start) > 3*time.Second {
		t.Errorf("%v after %v", err, time.Since(start))
	}
}
