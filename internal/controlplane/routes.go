package controlplane

import (
	"net/http"
	"slices"
	"strings"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// route is one API operation. The route table is the single source of the mux, the
// authorization rules and the OpenAPI document.
type route struct {
	method, path string
	summary      string
	access       access
	status       int // success status: 200, 201 or 204
	query        []queryParam
	// stream: the answer may take longer than Limits.WriteTimeout (a long-poll, an event
	// stream, a download). It counts against its caller instead of its account, and
	// gives each of its writes a deadline of its own (call.extendWrite).
	stream bool
	endpoint
}

type queryParam struct{ name, typ, doc string }

// Access rules used by many routes.
var (
	viewer    = access{role: api.RoleViewer}
	admin     = access{role: api.RoleAdmin}
	operator  = access{role: api.RoleOperator}
	sysAdmin  = access{role: api.RoleAdmin, system: true}
	pagingQry = []queryParam{{"limit", "integer", "page size, 1 to 10000 (default 100)"}, {"page_token", "string", "nextPageToken of the previous page"}}
	// snapshotQry narrows a listing of PITs (db.SnapshotFilter); give the same with each page.
	snapshotQry = append([]queryParam{
		{"after", "string", "only PITs taken at or after this RFC 3339 time (inclusive)"},
		{"before", "string", "only PITs taken before this RFC 3339 time (exclusive)"},
		{"level", "string", "only PITs of this consistency level: filesystem, crash or none"},
	}, pagingQry...)
)

// routeTable is every route of the API, by resource.
func (cp *ControlPlane) routeTable() []*route {
	return slices.Concat(cp.publicRoutes(), accountRoutes(), sourceServerRoutes(), replicatorRoutes(), recoveryRoutes(), groupRoutes(), planRoutes(), auditRoutes(), metricsRoutes())
}

// publicRoutes are the routes anyone may call, and whoami.
func (cp *ControlPlane) publicRoutes() []*route {
	return []*route{
		{method: "GET", path: "/api/openapi.json", summary: "This API's OpenAPI 3.1 document", access: access{public: true},
			endpoint: noBodyEndpoint(cp.openAPI)},
		{method: "GET", path: "/api/v1/health", summary: "Health of the control plane and its database", access: access{public: true},
			endpoint: noBodyEndpoint(cp.health)},
		{method: "GET", path: "/api/v1/ca", summary: "The control plane's CA certificate (it signs only the control plane's own)", access: access{public: true},
			endpoint: noBodyEndpoint(cp.caCert)},
		{method: "GET", path: "/api/v1/whoami", summary: "Who the caller is",
			access:   access{role: api.RoleViewer, install: "*", agent: true, replicator: true},
			endpoint: noBodyEndpoint(whoami)},
	}
}

// accountRoutes are the routes of accounts, sites and tokens.
func accountRoutes() []*route {
	return []*route{
		{method: "GET", path: "/api/v1/account", summary: "The caller's account", access: viewer,
			endpoint: noBodyEndpoint((*call).getAccount)},
		{method: "GET", path: "/api/v1/accounts", summary: "List all accounts", access: sysAdmin,
			endpoint: noBodyEndpoint((*call).listAccounts)},
		{method: "POST", path: "/api/v1/accounts", summary: "Create an account and its first admin token", access: sysAdmin, status: 201,
			endpoint: withBody((*call).createAccount)},
		{method: "PATCH", path: "/api/v1/accounts/{id}", summary: "Change an account's quota or give it a staging store", access: sysAdmin,
			endpoint: withBody((*call).updateAccount)},

		{method: "GET", path: "/api/v1/sites", summary: "List sites", access: viewer,
			endpoint: noBodyEndpoint((*call).listSites)},
		{method: "GET", path: "/api/v1/sites/{id}", summary: "Describe a site (whether it has credentials, never them)", access: viewer,
			endpoint: noBodyEndpoint((*call).describeSite)},
		{method: "POST", path: "/api/v1/sites", summary: "Create a site", access: admin, status: 201,
			endpoint: withBody((*call).createSite)},
		{method: "DELETE", path: "/api/v1/sites/{id}", summary: "Delete an unused site", access: admin, status: 204,
			endpoint: noBodyEndpoint((*call).deleteSite)},

		{method: "GET", path: "/api/v1/tokens", summary: "List tokens (never their secrets)", access: admin,
			endpoint: noBodyEndpoint((*call).listTokens)},
		{method: "POST", path: "/api/v1/tokens", summary: "Create an API or install token", access: admin, status: 201,
			endpoint: withBody(func(c *call, req *api.CreateTokenRequest) (api.CreateTokenResponse, error) {
				return c.createToken(*req)
			})},
		{method: "DELETE", path: "/api/v1/tokens/{id}", summary: "Revoke a token", access: admin, status: 204,
			endpoint: noBodyEndpoint((*call).revokeToken)},
	}
}

// sourceServerRoutes are the routes of source servers, their settings and their
// recovery snapshots (PITs).
func sourceServerRoutes() []*route {
	serverSelf := access{role: api.RoleViewer, agent: true, replicator: true, target: targetSourceServer}
	return []*route{
		{method: "POST", path: "/api/v1/failback-clients/register", summary: "Register a failback client (rescue media) with an install token of scope failback",
			access: access{install: api.ScopeFailback}, status: 201, endpoint: withBody((*call).registerFailbackClient)},
		{method: "GET", path: "/api/v1/failback-clients/self", summary: "A failback client's own record and assignment (its secret in the " + api.FailbackClientHeader + " header)",
			access: access{public: true}, endpoint: noBodyEndpoint((*call).failbackClientSelf)},
		{method: "POST", path: "/api/v1/failback-clients/self/progress", summary: "A failback client reports its write",
			access: access{public: true}, status: 204, endpoint: withBody((*call).failbackClientProgress)},
		{method: "POST", path: "/api/v1/failback-clients/self/diff", summary: "A failback client's block hashes, answered with the blocks that differ",
			access: access{public: true}, stream: true, endpoint: withBodyStream(api.DiffContentType, (*call).failbackClientDiff)},
		{method: "GET", path: "/api/v1/failback-clients", summary: "List failback clients", access: viewer,
			endpoint: noBodyEndpoint((*call).listFailbackClients)},
		{method: "POST", path: "/api/v1/source-servers/register-reversed", summary: "A recovery instance's agent gets its reversed source server's identity, proven by the instance's reverse key",
			access: access{public: true}, endpoint: withBody((*call).registerReversed)},
		{method: "POST", path: "/api/v1/source-servers/register", summary: "Register a source server (agent install); replace needs an admin or an install token made with allowReplace",
			access: access{install: api.ScopeSourceServer, role: api.RoleAdmin}, status: 201, endpoint: withBody((*call).registerSourceServer)},
		{method: "GET", path: "/api/v1/source-servers", summary: "List source servers, ready for recovery first", access: viewer,
			query: append([]queryParam{
				{"state", "string", "data replication states, comma-separated"},
				{"hostname", "string", "hostname substring, case-insensitive"},
				{"replicator", "string", "assigned replicator id"},
				{"ready", "boolean", "only servers ready (true) or not ready (false) for recovery"},
				{"tag", "string", "KEY=VALUE: only servers carrying this tag (repeatable: all of them)"},
				{"view", "string", "summary (default: no volumes or initiation steps) or full"},
			}, pagingQry...),
			endpoint: documentedAs[api.SourceServerList]((*call).listSourceServers)},
		{method: "GET", path: "/api/v1/source-servers/{id}", summary: "Describe a source server", access: serverSelf,
			endpoint: noBodyEndpoint((*call).getSourceServer)},
		{method: "POST", path: "/api/v1/source-servers/{id}/tags", summary: "Set and remove a source server's tags (recovery plans select servers by them)",
			access: access{role: api.RoleOperator, target: targetSourceServer}, endpoint: withBody((*call).updateSourceServerTags)},
		{method: "DELETE", path: "/api/v1/source-servers/{id}", summary: "Delete a source server record", access: admin, status: 204,
			query:    []queryParam{{"force", "boolean", "delete even though recovery snapshots are recorded (their staging data is kept)"}},
			endpoint: noBodyEndpoint((*call).deleteSourceServer)},
		{method: "POST", path: "/api/v1/source-servers/{id}/disconnect", summary: "Disconnect a source server: stop replication, revoke its agent's certificate (DRS: Disconnect from AWS)", access: admin,
			query: []queryParam{{"force", "boolean", "even though a recovery (not a drill) or a failback depends on it"},
				{"delete_data", "boolean", "delete its unlocked recovery snapshots now, from the record and the staging store"}},
			endpoint: noBodyEndpoint((*call).disconnectSourceServer)},
		{method: "POST", path: "/api/v1/source-servers/{id}/certificate", summary: "Renew the agent's certificate",
			access: access{agent: true, target: targetSourceServer}, endpoint: withBody((*call).renewSourceCertificate)},
		{method: "PUT", path: "/api/v1/source-servers/{id}/volumes", summary: "Report the source server's volumes",
			access: access{agent: true, target: targetSourceServer}, endpoint: withBody((*call).setVolumes)},
		{method: "PATCH", path: "/api/v1/source-servers/{id}/replication-state", summary: "Report replication state and progress",
			access:   access{agent: true, replicator: true, target: targetSourceServer},
			endpoint: withBody((*call).updateReplicationState)},
		{method: "GET", path: "/api/v1/source-servers/{id}/replication-config", summary: "Effective settings and assigned replicator, for the agent",
			access: access{role: api.RoleViewer, agent: true, target: targetSourceServer}, stream: true, endpoint: noBodyEndpoint((*call).replicationConfig)},
		{method: "POST", path: "/api/v1/source-servers/{id}/replication/{action}", summary: "Start, stop, pause, resume or retry replication",
			access: access{role: api.RoleOperator, target: targetSourceServer}, endpoint: noBodyEndpoint((*call).replicationAction)},
		{method: "POST", path: "/api/v1/source-servers/{id}/recovery-snapshots/request", summary: "Ask the agent for a consistency point (a PIT) now",
			access: access{role: api.RoleOperator, target: targetSourceServer}, status: 201, endpoint: noBodyEndpoint((*call).requestSnapshot)},
		{method: "POST", path: "/api/v1/source-servers/{id}/group-points/{point}", summary: "An agent's report of a phase of a consistency-group point; answers, once every member reached it, what to do next",
			access: access{agent: true, target: targetSourceServer}, endpoint: withBody((*call).reportGroupPoint)},
		{method: "GET", path: "/api/v1/source-servers/{id}/replication-settings", summary: "A source server's overrides and effective settings",
			access: serverSelf, endpoint: noBodyEndpoint((*call).getServerSettings)},
		{method: "PUT", path: "/api/v1/source-servers/{id}/replication-settings", summary: "Replace a source server's overrides",
			access: access{role: api.RoleAdmin, target: targetSourceServer}, endpoint: withBody((*call).putServerSettings)},
		{method: "GET", path: "/api/v1/source-servers/{id}/launch-settings", summary: "A source server's launch settings",
			access: access{role: api.RoleViewer, target: targetSourceServer}, endpoint: noBodyEndpoint((*call).getLaunchSettings)},
		{method: "PUT", path: "/api/v1/source-servers/{id}/launch-settings", summary: "Replace a source server's launch settings",
			access: access{role: api.RoleAdmin, target: targetSourceServer}, endpoint: withBody((*call).putLaunchSettings)},
		{method: "GET", path: "/api/v1/source-servers/{id}/recovery-snapshots", summary: "List a source server's recovery snapshots, newest first",
			access: access{role: api.RoleViewer, replicator: true, target: targetSourceServer}, query: snapshotQry,
			endpoint: noBodyEndpoint((*call).listSnapshots)},
		{method: "POST", path: "/api/v1/source-servers/{id}/recovery-snapshots", summary: "Record a recovery snapshot the replicator sealed",
			access: access{replicator: true, target: targetSourceServer}, status: 201, endpoint: withBody((*call).createSnapshot)},
		{method: "POST", path: "/api/v1/source-servers/{id}/recovery-snapshots/delete", summary: "Delete expired recovery snapshots",
			access: access{replicator: true, target: targetSourceServer}, endpoint: withBody((*call).deleteSnapshots)},
		{method: "GET", path: "/api/v1/recovery-snapshots/{id}", summary: "Describe a recovery snapshot",
			access: access{role: api.RoleViewer, replicator: true, target: targetSnapshot}, endpoint: noBodyEndpoint((*call).getSnapshot)},
		{method: "PUT", path: "/api/v1/recovery-snapshots/{id}/lock", summary: "Lock a recovery snapshot against deletion until a time",
			access: access{role: api.RoleAdmin, target: targetSnapshot}, endpoint: withBody((*call).protectSnapshot)},
		{method: "DELETE", path: "/api/v1/recovery-snapshots/{id}", summary: "Delete a recovery snapshot that is not locked",
			access: access{role: api.RoleAdmin, replicator: true, target: targetSnapshot}, status: 204,
			endpoint: noBodyEndpoint((*call).deleteSnapshot)},
		{method: "GET", path: "/api/v1/recovery-snapshots/{id}/volumes/{name}", summary: "Export a volume of a recovery snapshot: its non-zero extents (docs/recovery.md)",
			access: operator, stream: true, endpoint: streamEndpoint(api.ExtentContentType, (*call).exportVolume)},
	}
}

// replicatorRoutes are the routes of the account's settings template and replicators.
func replicatorRoutes() []*route {
	return []*route{
		{method: "GET", path: "/api/v1/settings/replication", summary: "The account's replication settings template", access: viewer,
			endpoint: noBodyEndpoint((*call).getTemplate)},
		{method: "PUT", path: "/api/v1/settings/replication", summary: "Replace the account's replication settings template", access: admin,
			endpoint: withBody((*call).putTemplate)},

		{method: "POST", path: "/api/v1/replicators/register", summary: "Register a replicator; replace needs an admin or an install token made with allowReplace",
			access: access{install: api.ScopeReplicator, role: api.RoleAdmin}, status: 201, endpoint: withBody((*call).registerReplicator)},
		{method: "GET", path: "/api/v1/replicators", summary: "List replicators", access: viewer,
			endpoint: noBodyEndpoint((*call).listReplicators)},
		{method: "GET", path: "/api/v1/replicators/{id}", summary: "Describe a replicator",
			access: access{role: api.RoleViewer, replicator: true, target: targetReplicator}, endpoint: noBodyEndpoint((*call).getReplicator)},
		{method: "DELETE", path: "/api/v1/replicators/{id}", summary: "Delete a replicator; its servers are reassigned",
			access: access{role: api.RoleAdmin, target: targetReplicator}, status: 204, endpoint: noBodyEndpoint((*call).deleteReplicator)},
		{method: "POST", path: "/api/v1/replicators/{id}/drain", summary: "Drain a replicator for maintenance (its servers move to the site's other live replicators), or put it back in service",
			access: access{role: api.RoleAdmin, target: targetReplicator}, endpoint: withBody((*call).drainReplicator)},
		{method: "POST", path: "/api/v1/replicators/{id}/heartbeat", summary: "Replicator heartbeat with metrics",
			access: access{replicator: true, target: targetReplicator}, endpoint: withBody((*call).heartbeat)},
		{method: "GET", path: "/api/v1/replicators/{id}/source-servers", summary: "Source servers assigned to a replicator, with their effective settings",
			access: access{role: api.RoleViewer, replicator: true, target: targetReplicator},
			query: []queryParam{{"source_server", "string", "only this source server (empty list when it is not assigned here)"},
				{"known", "string", "fingerprint of the list the caller has: wait for a different one"},
				{"wait", "integer", "seconds to wait for a change of the list (with known), 0 to 25"}},
			stream: true, endpoint: noBodyEndpoint((*call).assignedServers)},
		{method: "POST", path: "/api/v1/replicators/{id}/certificate", summary: "Renew the replicator's certificate",
			access: access{replicator: true, target: targetReplicator}, endpoint: withBody((*call).renewReplicatorCertificate)},
		{method: "POST", path: "/api/v1/replicators/{id}/store-key", summary: "The key of a staging store of the replicator's account",
			access: access{replicator: true, target: targetReplicator}, endpoint: withBody((*call).stagingStoreKey)},
	}
}

// recoveryRoutes are the routes of drills, recoveries and terminations (jobs), recovery
// instances, and existing instances to launch into (jobs.go, recovery_instances.go,
// instances.go).
func recoveryRoutes() []*route {
	return []*route{
		{method: "POST", path: "/api/v1/jobs/recovery", summary: "Start a drill or a recovery of source servers from PITs",
			access: operator, status: 201, endpoint: withBody((*call).startRecovery)},
		{method: "POST", path: "/api/v1/jobs/terminate", summary: "Start a job that terminates recovery instances",
			access: operator, status: 201, endpoint: withBody((*call).terminateRecoveryInstances)},
		{method: "GET", path: "/api/v1/jobs", summary: "List jobs, newest first", access: viewer, query: pagingQry,
			endpoint: noBodyEndpoint((*call).listJobs)},
		{method: "GET", path: "/api/v1/jobs/{id}", summary: "Describe a job: status, servers, measured RTO", access: viewer,
			endpoint: noBodyEndpoint((*call).getJob)},
		{method: "GET", path: "/api/v1/jobs/{id}/log", summary: "A job's log, oldest first (follow with page_token)", access: viewer,
			query:    []queryParam{{"limit", "integer", "entries, 1 to 10000 (default 1000)"}, {"page_token", "string", "nextPageToken of the previous page"}},
			endpoint: noBodyEndpoint((*call).jobLog)},
		{method: "GET", path: "/api/v1/recovery-instances", summary: "List recovery instances, newest first", access: viewer,
			query: append([]queryParam{{"source_server", "string", "only this source server's"},
				{"drill", "boolean", "only drills (true) or only recoveries (false)"},
				{"all", "boolean", "include ended (terminated or failed) ones"}}, pagingQry...),
			endpoint: noBodyEndpoint((*call).listRecoveryInstances)},
		{method: "GET", path: "/api/v1/recovery-instances/{id}", summary: "Describe a recovery instance", access: viewer,
			endpoint: noBodyEndpoint((*call).getRecoveryInstance)},
		{method: "PUT", path: "/api/v1/recovery-instances/{id}/termination-protection", summary: "Turn termination protection on or off",
			access: operator, endpoint: withBody((*call).setTerminationProtection)},
		{method: "POST", path: "/api/v1/recovery-instances/{id}/start", summary: "Start a recovery instance launched stopped",
			access: operator, endpoint: noBodyEndpoint((*call).startRecoveryInstance)},
		{method: "POST", path: "/api/v1/recovery-instances/{id}/failback", summary: "Fail back: the recovery instance's final consistency point written onto the origin's machine (a FAILBACK job)",
			access: operator, status: 201, endpoint: withBody((*call).startFailback)},
		{method: "POST", path: "/api/v1/recovery-instances/{id}/failback-complete", summary: "Complete a failback: delete the reversed source server, terminate the recovery instance (a TERMINATE job)",
			access: operator, status: 201, endpoint: noBodyEndpoint((*call).completeFailback)},
		{method: "POST", path: "/api/v1/recovery-instances/{id}/reverse-replication", summary: "Start reversed replication: the recovery instance replicates back to its origin as a new source server",
			access: operator, status: 201, endpoint: noBodyEndpoint((*call).startReverseReplication)},
		{method: "GET", path: "/api/v1/instances", summary: "List instances that recoveries may launch into", access: viewer,
			endpoint: noBodyEndpoint((*call).listInstances)},
		{method: "POST", path: "/api/v1/instances", summary: "Register an instance (its disks on the control plane's host)",
			access: admin, status: 201, endpoint: withBody((*call).createInstance)},
		{method: "GET", path: "/api/v1/instances/{id}", summary: "Describe an instance", access: viewer,
			endpoint: noBodyEndpoint((*call).getInstance)},
		{method: "DELETE", path: "/api/v1/instances/{id}", summary: "Remove an instance's registration (its disks stay)",
			access: admin, status: 204, endpoint: noBodyEndpoint((*call).deleteInstance)},
		{method: "PATCH", path: "/api/v1/instances/{id}/tags", summary: "Set and remove an instance's tags", access: admin,
			endpoint: withBody((*call).updateInstanceTags)},
		{method: "POST", path: "/api/v1/instances/{id}/start", summary: "Start an instance's VM", access: admin,
			endpoint: noBodyEndpoint((*call).startInstance)},
		{method: "POST", path: "/api/v1/instances/{id}/stop", summary: "Stop an instance's VM", access: admin,
			endpoint: noBodyEndpoint((*call).stopInstance)},
	}
}

// groupRoutes are the routes of consistency groups and their group points (groups.go).
// A group is named by its id or its name.
func groupRoutes() []*route {
	return []*route{
		{method: "POST", path: "/api/v1/consistency-groups", summary: "Create a consistency group: source servers whose PITs are taken at one instant",
			access: operator, status: 201, endpoint: withBody((*call).createGroup)},
		{method: "GET", path: "/api/v1/consistency-groups", summary: "List consistency groups, by name", access: viewer, query: pagingQry,
			endpoint: noBodyEndpoint((*call).listGroups)},
		{method: "GET", path: "/api/v1/consistency-groups/{id}", summary: "Describe a consistency group (by id or name)", access: viewer,
			endpoint: noBodyEndpoint((*call).getGroup)},
		{method: "DELETE", path: "/api/v1/consistency-groups/{id}", summary: "Delete a consistency group and its group points (its members' PITs stay)",
			access: operator, status: 204, endpoint: noBodyEndpoint((*call).deleteGroup)},
		{method: "POST", path: "/api/v1/consistency-groups/{id}/members", summary: "Add source servers to a consistency group",
			access: operator, endpoint: withBody((*call).addGroupMembers)},
		{method: "POST", path: "/api/v1/consistency-groups/{id}/members/remove", summary: "Remove source servers from a consistency group",
			access: operator, endpoint: withBody((*call).removeGroupMembers)},
		{method: "GET", path: "/api/v1/consistency-groups/{id}/points", summary: "List a consistency group's points, newest first", access: viewer,
			query:    append([]queryParam{{"complete", "boolean", "only complete group points"}}, pagingQry...),
			endpoint: noBodyEndpoint((*call).listGroupPoints)},
	}
}

// auditRoutes are the routes of the audit log and the event stream.
func auditRoutes() []*route {
	return []*route{
		{method: "GET", path: "/api/v1/audit", summary: "The audit log, newest first", access: admin,
			query:    append([]queryParam{{"target", "string", "target id"}, {"action", "string", "action, e.g. source-server.register"}}, pagingQry...),
			endpoint: noBodyEndpoint((*call).listAudit)},
		{method: "GET", path: "/api/v1/events", summary: "Server-sent events: one per change (resume with Last-Event-ID)", access: viewer,
			stream: true, endpoint: rawEndpoint((*call).streamEvents)},
	}
}

// buildHandler builds the mux from the route table, plus the console (console.go), and
// answers unknown paths and methods with the API's error shape.
func (cp *ControlPlane) buildHandler() (http.Handler, error) {
	mux := http.NewServeMux()
	for _, rt := range cp.routes {
		mux.Handle(rt.method+" "+rt.path, cp.serveRoute(rt))
	}
	if err := cp.mountConsole(mux); err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if _, pattern := mux.Handler(r); pattern == "" {
			rec := &statusRecorder{header: http.Header{}}
			h, _ := mux.Handler(r)
			h.ServeHTTP(rec, r)
			if rec.status == http.StatusMethodNotAllowed {
				w.Header().Set("Allow", rec.header.Get("Allow"))
				writeError(w, api.Errorf(http.StatusMethodNotAllowed, api.CodeMethodNotAllowed,
					"%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, rec.header.Get("Allow")))
				return
			}
			writeError(w, api.NotFound("there is no API endpoint %s %s: see /api/openapi.json", r.Method, r.URL.Path))
			return
		}
		mux.ServeHTTP(w, r)
	}), nil
}

// statusRecorder captures what the mux would answer for an unmatched request.
type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header         { return s.header }
func (s *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusRecorder) WriteHeader(code int)        { s.status = code }

func (cp *ControlPlane) serveRoute(rt *route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-cp.stopping:
			w.Header().Set("Connection", "close")
			writeError(w, api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable, "the control plane is shutting down: retry in a moment"))
			return
		default:
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes+1)
		c := &call{cp: cp, ctx: r.Context(), r: r}
		release, err := cp.admit(c, rt)
		if err != nil {
			writeError(w, cp.apiError(r, err))
			return
		}
		defer release()
		resp, err := rt.serve(c, w)
		if rt.stream {
			c.extendWrite(w)
		}
		if err != nil {
			writeError(w, cp.apiError(r, err))
			return
		}
		if rt.raw {
			return // the endpoint wrote its own answer
		}
		status := rt.status
		if status == 0 {
			status = http.StatusOK
		}
		if status == http.StatusNoContent {
			w.WriteHeader(status)
			return
		}
		writeJSON(w, status, resp)
	})
}

// pathParams lists the {name} parameters of a route path.
func pathParams(path string) []string {
	var out []string
	for _, seg := range strings.Split(path, "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			out = append(out, strings.Trim(seg, "{}"))
		}
	}
	return out
}
