package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

type instancesData struct {
	Instances   []api.RecoveryInstance
	All         bool
	Next, First string
}

func (d instancesData) watch() string { return "recovery-instance" }

func (c *Console) instancesPage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := instancesData{All: q.Get("all") == "true"}
	list, err := s.client.RecoveryInstances(withRemote(r), api.RecoveryInstanceFilter{All: d.All, Limit: 50, PageToken: q.Get("page")})
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d.Instances = list.Items
	if list.NextPageToken != "" {
		d.Next = Prefix + "instances?all=" + strconv.FormatBool(d.All) + "&page=" + url.QueryEscape(list.NextPageToken)
	}
	if q.Get("page") != "" {
		d.First = Prefix + "instances?all=" + strconv.FormatBool(d.All)
	}
	c.render(w, r, s, http.StatusOK, "instances", "Recovery instances", d)
}

// instanceAction acts on a recovery instance: termination protection, start, terminate
// and the failback steps. Actions that start a job lead to the job's page.
func (c *Console) instanceAction(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, id, back := withRemote(r), r.PathValue("id"), Prefix+"instances"
	var job api.Job
	var err error
	msg := ""
	switch r.PathValue("action") {
	case "protect", "unprotect":
		on := r.PathValue("action") == "protect"
		_, err = s.client.SetTerminationProtection(ctx, id, on)
		msg = fmt.Sprintf("Termination protection of %s is %s.", id, map[bool]string{true: "on", false: "off"}[on])
	case "start":
		_, err = s.client.StartRecoveryInstance(ctx, id)
		msg = "Recovery instance " + id + " is starting."
	case "terminate":
		job, err = s.client.TerminateRecoveryInstances(ctx, api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: []string{id}})
		msg = "Terminating " + id + ": job " + job.ID + "."
	case "reverse-replication":
		var rr api.ReverseReplication
		rr, err = s.client.StartReverseReplication(ctx, id)
		msg = "Reversed replication of " + id + " started: job " + rr.JobID + "."
		job.ID = rr.JobID
	case "failback":
		job, err = s.client.StartFailback(ctx, id, api.FailbackRequest{Into: api.FailbackIntoNew})
		msg = "Failback of " + id + " started: job " + job.ID + "."
	case "failback-complete":
		job, err = s.client.CompleteFailback(ctx, id)
		msg = "Failback of " + id + " is being completed: job " + job.ID + "."
	default:
		c.fail(w, r, s, http.StatusNotFound, "there is no recovery instance action "+r.PathValue("action"))
		return
	}
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	if job.ID != "" {
		back = jobURL(job.ID)
	}
	done(w, r, s, back, msg)
}

type plansData struct{ Plans []api.Plan }

func (c *Console) plansPage(w http.ResponseWriter, r *http.Request, s *session) {
	list, err := s.client.ListPlans(withRemote(r))
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "plans", "Recovery plans", plansData{Plans: list.Items})
}

type planData struct {
	Plan api.Plan
	Runs []api.PlanRunSummary
}

func (c *Console) planPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, name := withRemote(r), r.PathValue("name")
	p, err := s.client.GetPlan(ctx, name)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	runs, err := s.client.PlanRuns(ctx, name, 50, "")
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "plan", "Plan "+p.Name, planData{Plan: p, Runs: runs.Items})
}

func (c *Console) planDrill(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("name")
	run, err := s.client.StartPlanRun(withRemote(r), name, api.StartPlanRunRequest{Mode: api.PlanDrill, DryRun: r.PostForm.Get("dryRun") == "on"})
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	if run.DryRun {
		c.render(w, r, s, http.StatusOK, "plan-run", "Dry run of "+name, planRunData{Run: run})
		return
	}
	done(w, r, s, Prefix+"plan-runs/"+url.PathEscape(run.ID), "Drill of plan "+name+" started: run "+run.ID+".")
}

type planRunData struct{ Run api.PlanRun }

func (d planRunData) watch() string { return d.Run.ID }

func (c *Console) planRunPage(w http.ResponseWriter, r *http.Request, s *session) {
	run, err := s.client.PlanRun(withRemote(r), r.PathValue("id"))
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "plan-run", "Plan run "+run.ID, planRunData{Run: run})
}

// planRunReport shows the API's HTML report of a run as it is, under the API's own
// policy for it (no scripts at all).
func (c *Console) planRunReport(w http.ResponseWriter, r *http.Request, s *session) {
	req, err := http.NewRequestWithContext(withRemote(r), http.MethodGet, apiBase+"/api/v1/plan-runs/"+url.PathEscape(r.PathValue("id"))+"/report.html", nil)
	if err != nil {
		c.fail(w, r, s, http.StatusBadRequest, err.Error())
		return
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := inProcess{c.api}.RoundTrip(req)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e api.ErrorBody
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(body, &e) != nil || e.Error.Message == "" {
			e.Error.Message = "the API answered " + resp.Status
		}
		c.apiFailed(w, r, s, &api.Error{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message})
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = io.Copy(w, resp.Body)
}

type groupsData struct {
	Groups      []api.ConsistencyGroup
	Next, First string
}

func (c *Console) groupsPage(w http.ResponseWriter, r *http.Request, s *session) {
	page := r.URL.Query().Get("page")
	list, err := s.client.ListConsistencyGroups(withRemote(r), 100, page)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d := groupsData{Groups: list.Items}
	if list.NextPageToken != "" {
		d.Next = Prefix + "groups?page=" + url.QueryEscape(list.NextPageToken)
	}
	if page != "" {
		d.First = Prefix + "groups"
	}
	c.render(w, r, s, http.StatusOK, "groups", "Consistency groups", d)
}

type groupData struct {
	Group  api.ConsistencyGroup
	Points []api.GroupPoint
}

func (c *Console) groupPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, id := withRemote(r), r.PathValue("id")
	g, err := s.client.GetConsistencyGroup(ctx, id)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	pts, err := s.client.ListGroupPoints(ctx, g.ID, 50, "", false)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "group", "Group "+g.Name, groupData{Group: g, Points: pts.Items})
}

type replicatorsData struct{ Replicators []api.Replicator }

func (d replicatorsData) watch() string { return "replicator" }

func (c *Console) replicatorsPage(w http.ResponseWriter, r *http.Request, s *session) {
	list, err := s.client.Replicators(withRemote(r))
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "replicators", "Replicators", replicatorsData{Replicators: list.Items})
}

type tokensData struct {
	Tokens  []api.Token
	Created *api.CreateTokenResponse // shown once, right after creation
}

// tokensPage lists the account's tokens (admins: the API refuses others).
func (c *Console) tokensPage(w http.ResponseWriter, r *http.Request, s *session) {
	c.showTokens(w, r, s, nil)
}

func (c *Console) showTokens(w http.ResponseWriter, r *http.Request, s *session, created *api.CreateTokenResponse) {
	list, err := s.client.Tokens(withRemote(r))
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	c.render(w, r, s, http.StatusOK, "tokens", "Tokens", tokensData{Tokens: list.Items, Created: created})
}

// createToken creates an API token and shows its secret once, on the page answering
// the form (never in a redirect or the session).
func (c *Console) createToken(w http.ResponseWriter, r *http.Request, s *session) {
	req := api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.Role(r.PostForm.Get("role")),
		Description: strings.TrimSpace(r.PostForm.Get("description"))}
	if days, err := formInt(r, "ttlDays"); err != nil {
		c.fail(w, r, s, http.StatusBadRequest, err.Error())
		return
	} else if days != nil && *days > 0 {
		req.TTLSeconds = int64(time.Duration(*days) * 24 * time.Hour / time.Second)
	}
	out, err := s.client.CreateToken(withRemote(r), req)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	c.showTokens(w, r, s, &out)
}

func (c *Console) revokeToken(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if err := s.client.RevokeToken(withRemote(r), id); err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	done(w, r, s, Prefix+"tokens", "Token "+id+" was revoked.")
}

type auditData struct {
	Entries        []api.AuditEntry
	Action, Target string
	Next, First    string
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := auditData{Action: strings.TrimSpace(q.Get("action")), Target: strings.TrimSpace(q.Get("target"))}
	list, err := s.client.Audit(withRemote(r), api.AuditFilter{Action: d.Action, TargetID: d.Target, Limit: 100, PageToken: q.Get("page")})
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d.Entries = list.Items
	base := url.Values{}
	if d.Action != "" {
		base.Set("action", d.Action)
	}
	if d.Target != "" {
		base.Set("target", d.Target)
	}
	if list.NextPageToken != "" {
		nq := url.Values{"page": {list.NextPageToken}}
		for k, v := range base {
			nq[k] = v
		}
		d.Next = Prefix + "audit?" + nq.Encode()
	}
	if q.Get("page") != "" {
		d.First = Prefix + "audit?" + base.Encode()
	}
	c.render(w, r, s, http.StatusOK, "audit", "Audit log", d)
}

// events relays the API's event stream (/api/v1/events) of the session's account to
// the page, which uses it to refresh its live parts. The API serves it in-process
// under the session's token, with its own caps.
func (c *Console) events(w http.ResponseWriter, r *http.Request, s *session) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "/api/v1/events", nil)
	if err != nil {
		c.fail(w, r, s, http.StatusInternalServerError, err.Error())
		return
	}
	req.RemoteAddr, req.Host, req.RequestURI = r.RemoteAddr, r.Host, "/api/v1/events"
	req.Header.Set("Authorization", "Bearer "+s.token)
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		req.Header.Set("Last-Event-ID", id)
	}
	c.api.ServeHTTP(&unnamedEvents{ResponseWriter: w}, req)
}

// unnamedEvents passes an event stream on without its "event:" lines, so that the
// page's EventSource gets every event as a message (the type is in the data too).
type unnamedEvents struct {
	http.ResponseWriter
	partial []byte
}

func (u *unnamedEvents) Write(b []byte) (int, error) {
	u.partial = append(u.partial, b...)
	var out []byte
	for {
		i := bytes.IndexByte(u.partial, '\n')
		if i < 0 {
			break
		}
		if line := u.partial[:i+1]; !bytes.HasPrefix(line, []byte("event:")) {
			out = append(out, line...)
		}
		u.partial = u.partial[i+1:]
	}
	u.partial = append([]byte(nil), u.partial...)
	if len(out) > 0 {
		if _, err := u.ResponseWriter.Write(out); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// Flush flushes the stream to the browser.
func (u *unnamedEvents) Flush() {
	if f, ok := u.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets the API set the stream's write deadlines on the connection.
func (u *unnamedEvents) Unwrap() http.ResponseWriter { return u.ResponseWriter }
