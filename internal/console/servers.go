package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// pageSizes are the page sizes the source servers page offers.
var pageSizes = []int{25, 50, 100, 200}

type serversData struct {
	Servers     []api.SourceServer
	Replicators []api.Replicator
	RepNames    map[string]string
	Filter      serverFilter
	PageSizes   []int
	Next, First string // links to the next and first pages ("" when none)
	Error       string
	Took        string
}

// serverFilter is the list's filter as the form shows it.
type serverFilter struct {
	State, Ready, Tag, Replicator, Q, Page string
	Limit                                  int
}

func (f serverFilter) query(page string) string {
	q := url.Values{}
	for k, v := range map[string]string{"state": f.State, "ready": f.Ready, "tag": f.Tag, "replicator": f.Replicator, "q": f.Q, "page": page} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", strconv.Itoa(f.Limit))
	return Prefix + "servers?" + q.Encode()
}

// serversPage lists source servers a page at a time, filtered by the API (its paging
// keeps the page fast with any number of servers).
func (c *Console) serversPage(w http.ResponseWriter, r *http.Request, s *session) {
	start := time.Now()
	q := r.URL.Query()
	f := serverFilter{State: q.Get("state"), Ready: q.Get("ready"), Tag: strings.TrimSpace(q.Get("tag")),
		Replicator: q.Get("replicator"), Q: strings.TrimSpace(q.Get("q")), Page: q.Get("page"), Limit: 50}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && slices.Contains(pageSizes, n) {
		f.Limit = n
	}
	af := api.SourceServerFilter{Hostname: f.Q, ReplicatorID: f.Replicator, Limit: f.Limit, PageToken: f.Page}
	if f.State != "" {
		af.States = []string{f.State}
	}
	if f.Ready == "true" || f.Ready == "false" {
		b := f.Ready == "true"
		af.ReadyForRecovery = &b
	}
	data := serversData{Filter: f, PageSizes: pageSizes, RepNames: map[string]string{}}
	if f.Tag != "" {
		tags, err := api.ParseTagFilter(strings.Fields(f.Tag))
		if err != nil {
			data.Error = err.Error()
		}
		af.Tags = tags
	}
	ctx := withRemote(r)
	reps, err := s.client.Replicators(ctx)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	data.Replicators = reps.Items
	for _, rep := range reps.Items {
		data.RepNames[rep.ID] = rep.Name
	}
	status := http.StatusOK
	if data.Error == "" {
		list, err := s.client.ListSourceServers(ctx, af)
		var ae *api.Error
		switch {
		case errors.As(err, &ae) && ae.Status == http.StatusBadRequest:
			data.Error, status = ae.Message, ae.Status
		case err != nil:
			c.apiFailed(w, r, s, err)
			return
		}
		data.Servers = list.Items
		if list.NextPageToken != "" {
			data.Next = f.query(list.NextPageToken)
		}
	}
	if f.Page != "" {
		data.First = f.query("")
	}
	data.Took = time.Since(start).Round(time.Millisecond).String()
	c.render(w, r, s, status, "servers", "Source servers", data)
}

type serverData struct {
	S         api.SourceServer
	RepName   string
	PITs      []api.RecoverySnapshot
	MorePITs  bool
	Settings  api.ServerReplicationSettings
	Launch    api.LaunchSettings
	Instances []api.RecoveryInstance
	Sparks    []spark
	Now       time.Time
}

func (d serverData) watch() string { return d.S.ID }

// pitTimeline is how many of a server's newest PITs its page shows.
const pitTimeline = 100

// serverPage shows one source server: state, steps, volumes, PIT timeline, settings
// and actions.
func (c *Console) serverPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, id := withRemote(r), r.PathValue("id")
	var d serverData
	var err error
	if d.S, err = s.client.SourceServer(ctx, id); err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	pits, err := s.client.RecoverySnapshots(ctx, id, pitTimeline, "")
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d.PITs, d.MorePITs = pits.Items, pits.NextPageToken != ""
	if d.Settings, err = s.client.ServerReplicationSettings(ctx, id); err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	ls, err := s.client.LaunchSettings(ctx, id)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d.Launch = ls.Settings
	insts, err := s.client.RecoveryInstances(ctx, api.RecoveryInstanceFilter{SourceServerID: id, Limit: 20})
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	d.Instances = insts.Items
	if d.S.ReplicatorID != "" {
		if rep, err := s.client.Replicator(ctx, d.S.ReplicatorID); err == nil {
			d.RepName = rep.Name
		}
	}
	d.Sparks, d.Now = pitSparks(d.PITs), c.cfg.Now()
	c.render(w, r, s, http.StatusOK, "server", d.S.Hostname, d)
}

// pitSparks charts what the PIT records hold over time (the control plane keeps no
// other history of a server's replication): the interval between consecutive points,
// and the data each point added to the staging store.
func pitSparks(pits []api.RecoverySnapshot) []spark {
	var gaps, sizes []float64
	for i := len(pits) - 1; i >= 0; i-- { // oldest first
		sizes = append(sizes, float64(pits[i].SizeBytes))
		if i < len(pits)-1 {
			gaps = append(gaps, pits[i].Time.Sub(pits[i+1].Time).Seconds())
		}
	}
	secs := func(v float64) string { return fmtSecs(&v) }
	return []spark{
		newSpark("Interval between points", gaps, secs),
		newSpark("Data added per point", sizes, func(v float64) string { return fmtBytes(int64(v)) }),
	}
}

// replicationActions are the replication actions the server page offers.
var replicationActions = []string{"pause", "resume", "stop", "start", "retry"}

func (c *Console) replicationAction(w http.ResponseWriter, r *http.Request, s *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	if !slices.Contains(replicationActions, action) {
		c.fail(w, r, s, http.StatusNotFound, "there is no replication action "+action)
		return
	}
	if _, err := s.client.ReplicationAction(withRemote(r), id, action); err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	done(w, r, s, serverURL(id), "Replication: "+action+" sent to "+id+".")
}

func serverURL(id string) string { return Prefix + "servers/" + url.PathEscape(id) }

func (c *Console) snapshotNow(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	req, err := s.client.RequestSnapshot(withRemote(r), id)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	done(w, r, s, serverURL(id), "A consistency point was asked for at "+fmtTime(req.RequestedAt)+"; it appears in the timeline once sealed.")
}

// launch starts a drill or, confirmed, a recovery of the server from a PIT.
func (c *Console) launch(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	drill := r.PostForm.Get("mode") != "recovery"
	if !drill && r.PostForm.Get("confirm") != "yes" {
		c.fail(w, r, s, http.StatusBadRequest, "a recovery launches the server for real: tick the confirmation box to start one")
		return
	}
	req := api.StartRecoveryRequest{IsDrill: drill,
		SourceServers: []api.RecoveryServer{{SourceServerID: id, RecoverySnapshotID: r.PostForm.Get("pit")}}}
	job, err := s.client.StartRecovery(withRemote(r), req)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	what := "Drill"
	if !drill {
		what = "Recovery"
	}
	done(w, r, s, jobURL(job.ID), what+" started: job "+job.ID+".")
}

func (c *Console) disconnect(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if r.PostForm.Get("confirm") != "yes" {
		c.fail(w, r, s, http.StatusBadRequest, "disconnecting stops replication and revokes the agent's certificate: tick the confirmation box")
		return
	}
	if _, err := s.client.DisconnectSourceServer(withRemote(r), id, false, false); err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	done(w, r, s, serverURL(id), "Source server "+id+" was disconnected; its recovery snapshots are kept.")
}

// lockPIT locks one of the server's PITs against deletion for a number of days.
func (c *Console) lockPIT(w http.ResponseWriter, r *http.Request, s *session) {
	pit := r.PostForm.Get("pit")
	days, err := formInt(r, "days")
	if err != nil || days == nil || *days < 1 || *days > 3650 {
		c.fail(w, r, s, http.StatusBadRequest, "lock a point for 1 to 3650 days")
		return
	}
	until := c.cfg.Now().UTC().Add(time.Duration(*days) * 24 * time.Hour).Truncate(time.Second)
	snap, err := s.client.ProtectRecoverySnapshot(withRemote(r), pit, until)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	done(w, r, s, serverURL(snap.SourceServerID)+"#pits", "Point "+pit+" is locked until "+fmtTime(until)+".")
}

// formInt reads an optional whole number; "" is nil (the template's value is kept).
func formInt(r *http.Request, name string) (*int, error) {
	v := strings.TrimSpace(r.PostForm.Get(name))
	if v == "" {
		return nil, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return nil, fmt.Errorf("%s must be a whole number, not %q", name, v)
	}
	return &n, nil
}

// saveReplicationSettings changes the server's overrides that the form shows and keeps
// the others; an empty field takes the account template's value.
func (c *Console) saveReplicationSettings(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, id := withRemote(r), r.PathValue("id")
	cur, err := s.client.ServerReplicationSettings(ctx, id)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	o := cur.Overrides
	for name, dst := range map[string]**int{"bandwidthMbps": &o.BandwidthMbps,
		"consistencyPointIntervalSeconds": &o.ConsistencyPointIntervalSeconds, "freezeTimeoutMs": &o.FreezeTimeoutMs} {
		if *dst, err = formInt(r, name); err != nil {
			c.fail(w, r, s, http.StatusBadRequest, err.Error())
			return
		}
	}
	o.Compression = nil
	if v := r.PostForm.Get("compression"); v != "" {
		o.Compression = &v
	}
	if _, err := s.client.SetServerReplicationSettings(ctx, id, o); err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	done(w, r, s, serverURL(id)+"#settings", "Replication settings saved.")
}

// saveLaunchSettings changes the launch settings the form shows and keeps the others.
func (c *Console) saveLaunchSettings(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, id := withRemote(r), r.PathValue("id")
	cur, err := s.client.LaunchSettings(ctx, id)
	if err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	ls := cur.Settings
	f := r.PostForm
	ls.Provider, ls.BootMode, ls.Network.Mode = f.Get("provider"), f.Get("bootMode"), f.Get("network")
	ls.Hostname, ls.IP = strings.TrimSpace(f.Get("hostname")), strings.TrimSpace(f.Get("ip"))
	ls.StartAfterLaunch, ls.CopyTags = f.Get("startAfterLaunch") == "on", f.Get("copyTags") == "on"
	for name, dst := range map[string]*int{"cpus": &ls.CPUs, "memoryMiB": &ls.MemoryMiB} {
		n, err := formInt(r, name)
		if err != nil || n == nil {
			c.fail(w, r, s, http.StatusBadRequest, name+" must be a whole number")
			return
		}
		*dst = *n
	}
	if _, err := s.client.SetLaunchSettings(ctx, id, ls); err != nil {
		c.apiFailed(w, r, s, err)
		return
	}
	done(w, r, s, serverURL(id)+"#launch-settings", "Launch settings saved.")
}
