package api

import (
	"fmt"
	"net/http"
)

// Error codes of the API. The HTTP status says the class of failure; the code says which
// failure; the message says, in one sentence, what was wrong and what to do.
const (
	CodeInvalid          = "invalid_request"    // 400: the request is malformed or a field is out of range
	CodeUnauthenticated  = "unauthenticated"    // 401: no credentials, or unknown ones
	CodeTokenExpired     = "token_expired"      // 401
	CodeTokenUsedUp      = "token_used_up"      // 401
	CodeTokenRevoked     = "token_revoked"      // 401
	CodeForbidden        = "forbidden"          // 403: authenticated, but not allowed to do this
	CodeNotFound         = "not_found"          // 404
	CodeMethodNotAllowed = "method_not_allowed" // 405
	CodeRequestTimeout   = "request_timeout"    // 408: the request did not arrive in time
	CodeConflict         = "conflict"           // 409: the state of the target refuses the change
	CodeQuotaExceeded    = "quota_exceeded"     // 409
	CodeDuplicateMachine = "duplicate_machine"  // 409
	CodeDuplicateName    = "duplicate_name"     // 409: a replicator of that name is registered
	CodeTooLarge         = "too_large"          // 413
	CodeTooManyRequests  = "too_many_requests"  // 429
	CodeInternal         = "internal"           // 500
	CodeUnavailable      = "unavailable"        // 503
)

// Error is an API error: returned by the client for every non-2xx answer, and used by
// the server to produce one. Error() is the message alone, so a CLI can print it as is.
type Error struct {
	Status  int    // HTTP status
	Code    string // one of the Code constants
	Message string // one sentence saying what was wrong and what to do
}

func (e *Error) Error() string { return e.Message }

// ErrorBody is the JSON shape of every error answer: {"error":{"code":…,"message":…}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Errorf returns an *Error with the given status and code and a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid returns a 400 invalid_request error with a formatted message.
func Invalid(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, CodeInvalid, format, args...)
}

// NotFound returns a 404 error with a formatted message.
func NotFound(format string, args ...any) *Error {
	return Errorf(http.StatusNotFound, CodeNotFound, format, args...)
}

// Conflict returns a 409 conflict error with a formatted message.
func Conflict(format string, args ...any) *Error {
	return Errorf(http.StatusConflict, CodeConflict, format, args...)
}

// Forbidden returns a 403 error with a formatted message.
func Forbidden(format string, args ...any) *Error {
	return Errorf(http.StatusForbidden, CodeForbidden, format, args...)
}

// Plural returns word for a count of n: as it is for one, with an s otherwise. Messages
// to the operator (API errors, job logs, the CLI's tables) count things with it.
func Plural(word string, n int) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
