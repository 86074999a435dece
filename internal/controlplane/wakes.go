package controlplane

import (
	"context"
	"strings"
	"time"
)

// Agents and replicators long-poll the control plane they reach for a change of their
// config (api.MaxConfigWait). With several control planes sharing a database, the
// change may be made through another one: each announces the servers it changed on a
// PostgreSQL channel, and every other wakes its own waiters for them at once, instead
// of at the end of their poll. Nothing is lost when a notification is: the waiters
// read the database again at the end of their poll anyway.

// wakeChannel is the PostgreSQL notification channel of wake-ups.
const wakeChannel = "lifeboat_wake"

// announceWithin bounds the notification of a wake-up.
const announceWithin = 2 * time.Second

// announce tells the other control planes that servers' config changed ("": all), in
// notifications of at most announceBatch ids (PostgreSQL's payloads hold 8000 bytes).
func (cp *ControlPlane) announce(ids ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), announceWithin)
	defer cancel()
	for len(ids) > 0 {
		n := min(len(ids), announceBatch)
		if err := cp.db.Notify(ctx, wakeChannel, cp.rec.runnerID+" "+strings.Join(ids[:n], ",")); err != nil {
			cp.log.Warn("the other control planes learn of a change at the end of their agents' polls", "err", err)
			return
		}
		ids = ids[n:]
	}
}

// announceBatch is the most server ids one notification names.
const announceBatch = 200

// listenWakes wakes this process's waiters for the changes other control planes
// announce, until ctx ends.
func (cp *ControlPlane) listenWakes(ctx context.Context) {
	for {
		err := cp.db.Listen(ctx, wakeChannel, func(payload string) {
			origin, ids, _ := strings.Cut(payload, " ")
			if origin == cp.rec.runnerID {
				return
			}
			for _, id := range strings.Split(ids, ",") { // "" (listening again, or a template): all
				cp.wakeLocal(id)
			}
		})
		if ctx.Err() != nil {
			return
		}
		cp.log.Warn("listening for the other control planes' changes failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}
