package controlplane

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/db"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// call is one API request being served: who asked, and the changes it made, whose events
// and wake-ups are sent once their transaction commits.
type call struct {
	cp      *ControlPlane
	ctx     context.Context
	r       *http.Request
	body    []byte // the request body, read by admit
	p       principal
	pending []pendingEvent
	wakes   []string // source server ids whose agents (and all replicators) to wake
}

type pendingEvent struct {
	account string
	ev      api.Event
}

// endpoint adapts a typed handler to the route table: it knows the request and response
// types (for decoding and the OpenAPI document) and how to serve.
type endpoint struct {
	req, resp   reflect.Type // nil: no body
	raw         bool         // serve writes the answer itself
	contentType string       // of a raw answer other than the event stream
	serve       func(c *call, w http.ResponseWriter) (any, error)
}

// noBody is the request type of endpoints that take no body.
type noBody struct{}

// withBody is an endpoint whose JSON body decodes into Req.
func withBody[Req, Resp any](fn func(*call, *Req) (Resp, error)) endpoint {
	return endpoint{
		req:  reflect.TypeFor[Req](),
		resp: respType[Resp](),
		serve: func(c *call, _ http.ResponseWriter) (any, error) {
			var req Req
			if err := DecodeRequest(c.body, &req); err != nil {
				return nil, err
			}
			return fn(c, &req)
		},
	}
}

// preEncoded is a JSON answer already encoded (large lists), written as is.
type preEncoded []byte

// documentedAs is an endpoint without a request body whose handler may answer with
// preEncoded JSON; Doc is the answer's type for the OpenAPI document.
func documentedAs[Doc any](fn func(*call) (any, error)) endpoint {
	e := noBodyEndpoint(fn)
	e.resp = reflect.TypeFor[Doc]()
	return e
}

// noBodyEndpoint is an endpoint without a request body (admit refuses one).
func noBodyEndpoint[Resp any](fn func(*call) (Resp, error)) endpoint {
	return endpoint{
		resp:  respType[Resp](),
		serve: func(c *call, _ http.ResponseWriter) (any, error) { return fn(c) },
	}
}

// rawEndpoint writes its own answer (the event stream).
func rawEndpoint(fn func(*call, http.ResponseWriter) error) endpoint {
	return endpoint{raw: true, serve: func(c *call, w http.ResponseWriter) (any, error) { return nil, fn(c, w) }}
}

// withBodyStream streams its own answer of contentType, after a JSON body that decodes
// into Req.
func withBodyStream[Req any](contentType string, fn func(*call, *Req, http.ResponseWriter) error) endpoint {
	return endpoint{req: reflect.TypeFor[Req](), raw: true, contentType: contentType,
		serve: func(c *call, w http.ResponseWriter) (any, error) {
			var req Req
			if err := DecodeRequest(c.body, &req); err != nil {
				return nil, err
			}
			return nil, fn(c, &req, w)
		}}
}

// streamEndpoint streams its own answer of contentType, after a request without a body
// (admit refuses one); an error before it wrote anything is answered as usual.
func streamEndpoint(contentType string, fn func(*call, http.ResponseWriter) error) endpoint {
	e := rawEndpoint(fn)
	e.contentType = contentType
	return e
}

func respType[Resp any]() reflect.Type {
	t := reflect.TypeFor[Resp]()
	if t == reflect.TypeFor[noBody]() {
		return nil
	}
	return t
}

// DecodeRequest is the API's request decoding: exactly one JSON value, no unknown
// fields, at most MaxBodyBytes, and the type's own validation when it has one. Every
// body the API accepts goes through it (and its fuzz target).
func DecodeRequest(data []byte, v any) error {
	if len(data) > MaxBodyBytes {
		return api.Errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "the request body is larger than %d bytes", MaxBodyBytes)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return api.Invalid("the request needs a JSON body")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return api.Invalid("the request body is not valid: %s", jsonErrorText(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return api.Invalid("the request body has data after its JSON value: send exactly one JSON object")
	}
	if val, ok := v.(interface{ Validate() error }); ok {
		return val.Validate()
	}
	return nil
}

func jsonErrorText(err error) string {
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) {
		return fmt.Sprintf("field %q must be a %s, not a JSON %s", ute.Field, jsonKind(ute.Type), ute.Value)
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if strings.HasPrefix(msg, "unknown field") {
		return msg + " (check the field name against /api/openapi.json)"
	}
	return msg
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Float64:
		return "number"
	case reflect.Bool:
		return "boolean"
	case reflect.String:
		return "string"
	case reflect.Slice:
		return "list"
	}
	if t.String() == "time.Time" {
		return "RFC 3339 time string"
	}
	return "JSON object"
}

// writeJSON writes v with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	if b, ok := v.(preEncoded); ok {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(status)
		_, _ = w.Write(b)
		return
	}
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

// writeError answers with the API error shape.
func writeError(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, e.Status, api.ErrorBody{Error: api.ErrorDetail{Code: e.Code, Message: e.Message}})
}

// apiError turns any handler error into an API error; unexpected ones become 500s that
// point at the log.
func (cp *ControlPlane) apiError(r *http.Request, err error) *api.Error {
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, db.ErrBadPageToken):
		return api.Invalid("%s", db.ErrBadPageToken)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable, "the request was cancelled or timed out: retry it")
	}
	cp.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	return api.Errorf(http.StatusInternalServerError, api.CodeInternal,
		"the control plane failed to serve this request; its log has the details (%s %s)", r.Method, r.URL.Path)
}

// update runs fn in a write transaction and, once it committed, publishes the events
// the change queued.
func (c *call) update(fn func(tx *db.Tx) error) error {
	c.pending, c.wakes = c.pending[:0], c.wakes[:0]
	if err := c.cp.db.Update(c.ctx, fn); err != nil {
		c.pending, c.wakes = nil, nil
		return err
	}
	for _, e := range c.pending {
		c.cp.events.publish(e.account, e.ev)
	}
	for _, id := range c.wakes {
		c.cp.wakeLocal(id)
	}
	if len(c.wakes) > 0 {
		c.cp.announce(c.wakes...) // in as few notifications as they fit
	}
	c.pending, c.wakes = nil, nil
	return nil
}

// wake queues a wake-up of the agent of source server id ("": of every agent) and of
// the replicators, sent once the transaction commits, so they read what it wrote.
func (c *call) wake(id string) { c.wakes = append(c.wakes, id) }

// view runs fn in a read-only transaction.
func (c *call) view(fn func(tx *db.Tx) error) error { return c.cp.db.View(c.ctx, fn) }

// read runs fn, which makes a single query, without a transaction.
func (c *call) read(fn func(tx *db.Tx) error) error { return c.cp.db.Read(c.ctx, fn) }

// record adds an audit entry for a change (inside its transaction) and queues its event.
func (c *call) record(tx *db.Tx, account, action, targetKind, targetID string, detail map[string]any, data any) error {
	kind, id := c.p.actor()
	e, err := tx.AddAudit(account, api.AuditEntry{Time: c.cp.cfg.Now(), ActorKind: kind, ActorID: id, Action: action,
		TargetKind: targetKind, TargetID: targetID, Detail: detail})
	if err != nil {
		return err
	}
	if data == nil && len(detail) > 0 {
		data = detail
	}
	c.emit(account, e.Action, targetKind, targetID, data)
	return nil
}

// emit queues an event that is not an audited change (progress reports, heartbeats).
func (c *call) emit(account, typ, targetKind, targetID string, data any) {
	c.pending = append(c.pending, pendingEvent{account: account, ev: api.Event{Type: typ, Time: c.cp.cfg.Now(),
		TargetKind: targetKind, TargetID: targetID, Data: data}})
}

// pathID returns the {id} path value.
func (c *call) pathID() string { return c.r.PathValue("id") }
