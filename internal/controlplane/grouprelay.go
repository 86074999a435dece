package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// A group point's barriers live in the coordinator's memory (grouppoints.go). An
// agent's report that reaches another control plane sharing the database is relayed
// to the coordinator on a PostgreSQL channel, and the coordinator's decision back, so
// that agents may reach either control plane (docs/architecture.md "Two control
// planes"). A report not answered in time is answered abort: the agent thaws and
// carries on, and the point is retried.

// relayChannel is the PostgreSQL notification channel of relayed reports.
const relayChannel = "lifeboat_group_relay"

// relayWithin bounds how long a relayed report waits for the coordinator's decision:
// longer than any barrier (the prepare deadline, the members' freeze bounds).
const relayWithin = 30 * time.Second

// relayMsg is a relayed report, or the coordinator's decision on one.
type relayMsg struct {
	Kind     string                 `json:"kind"` // "report" or "decision"
	ID       string                 `json:"id"`
	Origin   string                 `json:"origin"` // runner id of the control plane the agent reached
	Server   string                 `json:"server,omitempty"`
	Point    string                 `json:"point,omitempty"`
	Report   api.GroupPointReport   `json:"report"`
	Decision api.GroupPointDecision `json:"decision"`
	Err      *api.Error             `json:"err,omitempty"`
}

// groupRelay holds the relayed reports waiting for a decision.
type groupRelay struct {
	mu      sync.Mutex
	waiting map[string]chan relayMsg
}

// relayReport sends a member's report to the coordinator and waits for its decision.
func (cp *ControlPlane) relayReport(ctx context.Context, serverID, pointID string, r api.GroupPointReport) (api.GroupPointDecision, error) {
	r.Message = clip(r.Message, 1000)
	m := relayMsg{Kind: "report", ID: api.NewID("grr-"), Origin: cp.rec.runnerID, Server: serverID, Point: pointID, Report: r}
	ch := make(chan relayMsg, 1)
	cp.relay.mu.Lock()
	cp.relay.waiting[m.ID] = ch
	cp.relay.mu.Unlock()
	defer func() {
		cp.relay.mu.Lock()
		delete(cp.relay.waiting, m.ID)
		cp.relay.mu.Unlock()
	}()
	if err := cp.notifyRelay(ctx, m); err != nil {
		return api.GroupPointDecision{Action: api.GroupActionAbort, Reason: "the report could not be passed to the coordinating control plane: " + err.Error()}, nil
	}
	select {
	case d := <-ch:
		if d.Err != nil {
			return api.GroupPointDecision{}, d.Err
		}
		return d.Decision, nil
	case <-ctx.Done():
		return api.GroupPointDecision{}, ctx.Err()
	case <-time.After(relayWithin):
		return api.GroupPointDecision{Action: api.GroupActionAbort, Reason: "the coordinating control plane did not answer the report of group point " + pointID}, nil
	}
}

// notifyRelay sends a relay message.
func (cp *ControlPlane) notifyRelay(ctx context.Context, m relayMsg) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, announceWithin)
	defer cancel()
	return cp.db.Notify(ctx, relayChannel, string(b))
}

// onRelay handles a relay message: the coordinator applies a report (answering once the
// point moved on), the control plane that relayed it passes the decision to its agent.
func (cp *ControlPlane) onRelay(ctx context.Context, wg *sync.WaitGroup, payload string) {
	var m relayMsg
	if payload == "" || json.Unmarshal([]byte(payload), &m) != nil {
		return
	}
	switch {
	case m.Kind == "decision" && m.Origin == cp.rec.runnerID:
		cp.relay.mu.Lock()
		ch := cp.relay.waiting[m.ID]
		cp.relay.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	case m.Kind == "report" && cp.Coordinating():
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, relayWithin)
			defer cancel()
			d, err := cp.groups.report(rctx, m.Server, m.Point, m.Report)
			out := relayMsg{Kind: "decision", ID: m.ID, Origin: m.Origin, Decision: d}
			var ae *api.Error
			switch {
			case errors.As(err, &ae):
				out.Err = ae
			case err != nil:
				out.Err = api.Errorf(http.StatusServiceUnavailable, api.CodeUnavailable, "the coordinating control plane: %v", err)
			}
			if err := cp.notifyRelay(ctx, out); err != nil {
				cp.log.Warn("answering a group-point report relayed by another control plane failed", "point", m.Point, "err", err)
			}
		})
	}
}

// listenRelay handles relay messages until ctx ends.
func (cp *ControlPlane) listenRelay(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		err := cp.db.Listen(ctx, relayChannel, func(p string) { cp.onRelay(ctx, &wg, p) })
		if ctx.Err() != nil {
			return
		}
		cp.log.Warn("listening for group-point reports relayed by the other control planes failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}
