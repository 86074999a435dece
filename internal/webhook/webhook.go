// Package webhook posts events as signed JSON to HTTPS endpoints (recovery plans'
// webhook steps, docs/plans.md), and verifies such posts for their receivers.
//
// A post is an HTTPS POST of the event as JSON with these headers:
//
//	Content-Type: application/json
//	User-Agent: lifeboat
//	X-Lifeboat-Timestamp: 1767225600
//	X-Lifeboat-Signature: sha256=5d41402abc4b2a76b9719d911017c592…
//
// X-Lifeboat-Timestamp is when it was sent, in Unix seconds. X-Lifeboat-Signature is
// "sha256=" followed by the lowercase hex of HMAC-SHA256, keyed with the shared secret,
// of the timestamp, a ".", and the body exactly as received:
//
//	hex(HMAC-SHA256(secret, timestamp + "." + body))
//
// A receiver recomputes it over the raw body (before any JSON decoding), compares it in
// constant time, and refuses a timestamp older (or further ahead) than a few minutes,
// so that a captured post cannot be replayed later. Verify does all three.
//
// The sender refuses http:// URLs, follows no redirect (a 3xx answer is an error: give
// the final URL), reads at most MaxResponse bytes of an answer, and takes any answer
// but a 2xx as a failure. Errors name the endpoint's host only: webhook URLs often carry
// a secret in their path or query.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Headers of a post.
const (
	TimestampHeader = "X-Lifeboat-Timestamp"
	SignatureHeader = "X-Lifeboat-Signature"
	signaturePrefix = "sha256="
)

const (
	// DefaultTimeout bounds a post when Config.Timeout is zero.
	DefaultTimeout = 10 * time.Second
	// MaxResponse is how much of an answer's body is read.
	MaxResponse = 64 << 10
	// quoteBytes is how much of a refusal's body an error quotes.
	quoteBytes = 200
)

// Config says where and how to post.
type Config struct {
	URL    string // https://…
	Secret []byte // the HMAC key the receiver shares
	// CAPEM, when set, holds the PEM certificates the endpoint's certificate must chain
	// to, instead of the host's trusted roots.
	CAPEM   []byte
	Timeout time.Duration // the whole post, answer included (default 10s)
}

// Response is the endpoint's (2xx) answer.
type Response struct {
	StatusCode int
	Status     string // e.g. "200 OK"
	Body       []byte // its first MaxResponse bytes
}

// Post posts event as signed JSON to c.URL and returns the answer. An answer other than
// 2xx is an error quoting its status and the start of its body.
func Post(ctx context.Context, c Config, event any) (Response, error) {
	u, err := c.check()
	if err != nil {
		return Response{}, err
	}
	body, err := json.Marshal(event)
	if err != nil {
		return Response{}, fmt.Errorf("webhook to %s: the event cannot be written as JSON: %w", u.Host, err)
	}
	client, err := c.client()
	if err != nil {
		return Response{}, fmt.Errorf("webhook to %s: %w", u.Host, err)
	}
	defer client.CloseIdleConnections()
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return Response{}, fmt.Errorf("webhook to %s: %w", u.Host, err)
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "lifeboat")
	req.Header.Set(TimestampHeader, ts)
	req.Header.Set(SignatureHeader, Sign(c.Secret, ts, body))
	resp, err := client.Do(req)
	if err != nil {
		return Response{}, postError(ctx, u, c, timeout, err)
	}
	defer resp.Body.Close()
	out := Response{StatusCode: resp.StatusCode, Status: resp.Status}
	out.Body, err = io.ReadAll(io.LimitReader(resp.Body, MaxResponse))
	if err != nil {
		return out, fmt.Errorf("webhook to %s answered %s, then its body could not be read: %w", u.Host, resp.Status, unwrapURL(err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return out, refusal(u, resp, out.Body)
	}
	return out, nil
}

// check refuses a configuration that cannot be posted with.
func (c Config) check() (*url.URL, error) {
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return nil, errors.New("the webhook URL is not an https://host/path URL")
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("webhook to %s: only https:// URLs are allowed, not %s://: the event and its signature must not travel in clear", u.Host, u.Scheme)
	}
	if len(c.Secret) == 0 {
		return nil, fmt.Errorf("webhook to %s: a secret to sign with is needed", u.Host)
	}
	return u, nil
}

// client is an HTTPS client that trusts c.CAPEM (or the host's roots) and follows no
// redirect.
func (c Config) client() (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(c.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(c.CAPEM) {
			return nil, errors.New("the webhook's CA holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	return &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, TLSClientConfig: tc, DisableKeepAlives: true,
			ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// postError words a post that got no answer.
func postError(ctx context.Context, u *url.URL, c Config, timeout time.Duration, err error) error {
	err = unwrapURL(err)
	var unknown x509.UnknownAuthorityError
	var verify *tls.CertificateVerificationError
	roots := "the host's trusted roots"
	if len(c.CAPEM) > 0 {
		roots = "the webhook's CA"
	}
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("webhook to %s: its certificate is not signed by %s: %w", u.Host, roots, err)
	case errors.As(err, &verify):
		return fmt.Errorf("webhook to %s: its certificate could not be verified against %s: %w", u.Host, roots, err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("webhook to %s: no answer within %s", u.Host, timeout)
	}
	return fmt.Errorf("webhook to %s: %w", u.Host, err)
}

// unwrapURL drops *url.Error's wrapping: it repeats the whole URL, secrets included.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// refusal words a non-2xx answer.
func refusal(u *url.URL, resp *http.Response, body []byte) error {
	start := body
	if len(start) > quoteBytes {
		start = start[:quoteBytes]
	}
	msg := fmt.Sprintf("webhook to %s answered %s", u.Host, resp.Status)
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		msg += " (redirects are not followed: give the URL it redirects to)"
	}
	if len(start) > 0 {
		msg += fmt.Sprintf(": %q", start)
		if len(body) > len(start) {
			msg += "…"
		}
	}
	return errors.New(msg)
}

// Sign returns the X-Lifeboat-Signature value of a post of body at timestamp (Unix
// seconds, as in X-Lifeboat-Timestamp).
func Sign(secret []byte, timestamp string, body []byte) string {
	return signaturePrefix + hex.EncodeToString(mac(secret, timestamp, body))
}

func mac(secret []byte, timestamp string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks a received post: signature (X-Lifeboat-Signature) is body's signature
// under secret at timestamp (X-Lifeboat-Timestamp), and, when maxAge is above zero,
// timestamp is within maxAge of now (either way, for clocks a little apart).
func Verify(secret []byte, timestamp, signature string, body []byte, maxAge time.Duration, now time.Time) error {
	sec, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("the %s header %q is not Unix seconds", TimestampHeader, timestamp)
	}
	if maxAge > 0 {
		if age := now.Sub(time.Unix(sec, 0)); age > maxAge || age < -maxAge {
			return fmt.Errorf("the post was signed at %s, %s from now: more than %s apart (a replay, or clocks apart)",
				time.Unix(sec, 0).UTC().Format(time.RFC3339), age.Round(time.Second), maxAge)
		}
	}
	got, err := hex.DecodeString(strings.TrimPrefix(signature, signaturePrefix))
	if !strings.HasPrefix(signature, signaturePrefix) || err != nil {
		return fmt.Errorf("the %s header is not %s followed by hex", SignatureHeader, signaturePrefix)
	}
	if !hmac.Equal(got, mac(secret, timestamp, body)) {
		return fmt.Errorf("the %s header does not match the body: another secret, or a changed body", SignatureHeader)
	}
	return nil
}
