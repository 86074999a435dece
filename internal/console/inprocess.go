package console

import (
	"bytes"
	"io"
	"net/http"
	"strconv"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// apiBase is the URL the in-process API client is given: only its paths matter.
const apiBase = "https://control-plane.console.internal"

// inProcess is an http.RoundTripper that serves each request with the control plane's
// own handler, in this process: the console's calls go through the API's
// authentication, authorization, limits and audit exactly as a client's would.
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	in := req.Clone(req.Context())
	in.RemoteAddr, _ = req.Context().Value(remoteKey{}).(string)
	in.RequestURI = req.URL.RequestURI()
	in.Host = req.URL.Host
	if in.Body == nil {
		in.Body = http.NoBody
	}
	rec := &recorder{header: http.Header{}}
	t.h.ServeHTTP(rec, in)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return &http.Response{
		Status: strconv.Itoa(rec.status) + " " + http.StatusText(rec.status), StatusCode: rec.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rec.header, Body: io.NopCloser(bytes.NewReader(rec.body.Bytes())),
		ContentLength: int64(rec.body.Len()), Request: req,
	}, nil
}

// recorder keeps an in-process answer.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

// newClient is an API client that calls the control plane in-process with token.
func (c *Console) newClient(token string) (*api.Client, error) {
	return api.NewClient(api.ClientConfig{Server: apiBase, Token: token, Transport: inProcess{c.api}, UserAgent: "lifeboat-console"})
}
