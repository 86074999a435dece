package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// Limits of the event stream.
const (
	eventRing       = 4096 // events kept for clients that reconnect
	subscriberQueue = 512  // events queued per client before it is dropped as too slow
	maxSubscribers  = 256  // streams of all accounts; Limits.MaxEventStreamsPerAccount per account
	keepAlive       = 15 * time.Second
)

// broker fans events out to the event streams of this process. The audit log is the
// durable record of changes; the stream is for watching them live.
type broker struct {
	mu         sync.Mutex
	seq        int64
	ring       []stored // the last eventRing events, oldest first
	subs       map[*subscriber]struct{}
	perAccount map[string]int // subscribers by account
	maxAccount int            // most subscribers of one account
}

type stored struct {
	account string
	ev      api.Event
}

type subscriber struct {
	account string
	ch      chan api.Event
	dropped bool // set (under mu) when it fell behind; its channel is closed
}

func newBroker(maxPerAccount int) *broker {
	return &broker{subs: map[*subscriber]struct{}{}, perAccount: map[string]int{}, maxAccount: maxPerAccount}
}

func (b *broker) publish(account string, ev api.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	ev.Seq = b.seq
	if len(b.ring) == eventRing {
		copy(b.ring, b.ring[1:])
		b.ring = b.ring[:eventRing-1]
	}
	b.ring = append(b.ring, stored{account, ev})
	for s := range b.subs {
		if s.account != account || s.dropped {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			s.dropped = true
			close(s.ch)
		}
	}
}

// subscribe registers a client of account, unless the control plane or the account
// has as many as it may (a 429 then). When after > 0 it returns the events after that
// sequence number still in the ring, and gap=true when some were lost.
func (b *broker) subscribe(account string, after int64) (s *subscriber, replay []api.Event, gap bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.perAccount[account] >= b.maxAccount {
		return nil, nil, false, tooMany("this account has %d event streams open, the most one account may: close one and retry", b.maxAccount)
	}
	if len(b.subs) >= maxSubscribers {
		return nil, nil, false, tooMany("the control plane serves %d event streams, the most it may: retry later", maxSubscribers)
	}
	s = &subscriber{account: account, ch: make(chan api.Event, subscriberQueue)}
	b.subs[s] = struct{}{}
	b.perAccount[account]++
	if after > 0 {
		oldest := b.seq - int64(len(b.ring)) + 1
		gap = after < oldest-1 || after > b.seq
		for _, st := range b.ring {
			if st.ev.Seq > after && st.account == account {
				replay = append(replay, st.ev)
			}
		}
	}
	return s, replay, gap, nil
}

func (b *broker) unsubscribe(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subs, s)
	if b.perAccount[s.account]--; b.perAccount[s.account] <= 0 {
		delete(b.perAccount, s.account)
	}
}

// streamEvents serves /api/v1/events as server-sent events. Each event has its Seq as
// id and its Type as event name; a "reset" event says events were missed (reload state).
func (c *call) streamEvents(w http.ResponseWriter) error {
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("the response writer cannot stream")
	}
	var after int64
	if v := c.r.Header.Get("Last-Event-ID"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return api.Invalid("Last-Event-ID must be the id of an event, not %q", v)
		}
		after = n
	}
	sub, replay, gap, err := c.cp.events.subscribe(c.p.AccountID, after)
	if err != nil {
		c.cp.guard.logs.Warn(c.cp.log, "events:"+c.p.AccountID, "refused an event stream", "account", c.p.AccountID, "reason", err)
		return err
	}
	defer c.cp.events.unsubscribe(sub)

	// The stream has no end: each write gets the API's WriteTimeout, so a client that
	// stops reading is cut off instead of holding the stream forever.
	c.extendWrite(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	if gap {
		fmt.Fprintf(w, "event: reset\ndata: {\"reason\":\"events were missed: reload the state\"}\n\n")
	}
	for _, ev := range replay {
		if err := writeEvent(w, ev); err != nil {
			return nil
		}
	}
	flusher.Flush()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return nil
		case <-c.cp.stopping:
			return nil
		case <-tick.C:
			c.extendWrite(w)
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
		case ev, open := <-sub.ch:
			if !open {
				// Too slow: end the stream; the client reconnects with Last-Event-ID.
				return nil
			}
			c.extendWrite(w)
			if err := writeEvent(w, ev); err != nil {
				return nil
			}
		}
		flusher.Flush()
	}
}

func writeEvent(w http.ResponseWriter, ev api.Event) error {
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, ev.Type, data)
	return err
}
