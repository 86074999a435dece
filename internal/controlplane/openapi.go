package controlplane

import (
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// OpenAPI is the API's OpenAPI 3.1 document, generated from the route table (the same
// one the mux and the authorization are built from) and the Go types of each route.
type OpenAPI = map[string]any

func (cp *ControlPlane) openAPI(*call) (OpenAPI, error) { return cp.OpenAPIDocument(), nil }

// OpenAPIDocument builds the document.
func (cp *ControlPlane) OpenAPIDocument() OpenAPI {
	g := &schemaGen{schemas: map[string]any{}}
	errRef := g.schema(reflect.TypeFor[api.ErrorBody]())
	paths := map[string]any{}
	for _, rt := range cp.routes {
		op := map[string]any{
			"summary":     rt.summary,
			"operationId": operationID(rt),
			"description": "Who may call: " + rt.access.describe() + ".",
			"x-lifeboat-access": map[string]any{
				"public": rt.access.public, "minRole": string(rt.access.role), "systemAccount": rt.access.system,
				"installScope": rt.access.install, "agent": rt.access.agent, "replicator": rt.access.replicator,
			},
		}
		if rt.access.public {
			op["security"] = []any{}
		}
		var params []any
		for _, p := range pathParams(rt.path) {
			params = append(params, map[string]any{"name": p, "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		for _, q := range rt.query {
			params = append(params, map[string]any{"name": q.name, "in": "query", "description": q.doc, "schema": map[string]any{"type": q.typ}})
		}
		if params != nil {
			op["parameters"] = params
		}
		if rt.req != nil {
			op["requestBody"] = map[string]any{"required": true,
				"content": map[string]any{"application/json": map[string]any{"schema": g.schema(rt.req)}}}
		}
		status := rt.status
		if status == 0 {
			status = http.StatusOK
		}
		ok := map[string]any{"description": http.StatusText(status)}
		switch {
		case rt.raw && rt.contentType != "":
			ok["content"] = map[string]any{rt.contentType: map[string]any{"schema": map[string]any{"type": "string", "format": "binary"}}}
		case rt.raw:
			ok["content"] = map[string]any{"text/event-stream": map[string]any{"schema": g.schema(reflect.TypeFor[api.Event]())}}
		case rt.resp != nil && status != http.StatusNoContent:
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": g.schema(rt.resp)}}
		}
		op["responses"] = map[string]any{
			strconv.Itoa(status): ok,
			"default": map[string]any{"description": "An error: 400, 401, 403, 404, 409, 413, 429 or 503, with a message saying what to do",
				"content": map[string]any{"application/json": map[string]any{"schema": errRef}}},
		}
		item, _ := paths[rt.path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[rt.path] = item
		}
		item[strings.ToLower(rt.method)] = op
	}
	return OpenAPI{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "Lifeboat control plane API", "version": cp.cfg.Version,
			"description": "Self-hosted elastic disaster recovery. Errors are {\"error\":{\"code\",\"message\"}}; lists page with limit and page_token."},
		"servers": []any{map[string]any{"url": cp.URL()}},
		"paths":   paths,
		"components": map[string]any{
			"schemas": g.schemas,
			"securitySchemes": map[string]any{
				"bearer":    map[string]any{"type": "http", "scheme": "bearer", "description": "API token lbt_… or install token lbi_…"},
				"mutualTLS": map[string]any{"type": "mutualTLS", "description": "client certificate issued by the control plane's CA (agents, replicators)"},
			},
		},
		"security": []any{map[string]any{"bearer": []any{}}, map[string]any{"mutualTLS": []any{}}},
	}
}

func operationID(rt *route) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(rt.method))
	for _, seg := range strings.Split(strings.TrimPrefix(rt.path, "/api/"), "/") {
		seg = strings.Trim(seg, "{}")
		for _, part := range strings.FieldsFunc(seg, func(r rune) bool { return r == '-' || r == '.' || r == '_' }) {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}

// schemaGen turns Go types into JSON Schema, naming struct types as components.
type schemaGen struct{ schemas map[string]any }

var timeType = reflect.TypeFor[time.Time]()

func (g *schemaGen) schema(t reflect.Type) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t.Kind() == reflect.Pointer:
		return g.schema(t.Elem())
	}
	switch t.Kind() {
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int64, reflect.Int32:
		return map[string]any{"type": "integer", "format": "int64"}
	case reflect.Float64, reflect.Float32:
		return map[string]any{"type": "number"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": g.schema(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.schema(t.Elem())}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		name := t.Name()
		if name == "" {
			return g.object(t)
		}
		if _, done := g.schemas[name]; !done {
			g.schemas[name] = map[string]any{} // placeholder for recursive types
			g.schemas[name] = g.object(t)
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return map[string]any{}
}

func (g *schemaGen) object(t reflect.Type) map[string]any {
	props := map[string]any{}
	var required []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		props[name] = g.schema(f.Type)
		if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
			required = append(required, name)
		}
	}
	s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		s["required"] = required
	}
	return s
}
