package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// Policy decides which PITs of a server are kept (docs/store-format.md §8): every consistency point
// for ConsistencyPoints, then one PIT per rule interval for the rule's retention.
// The newest PIT and the newest consistent PIT are always kept, and locked PITs until
// their lock ends.
type Policy struct {
	ConsistencyPoints time.Duration // keep every PIT this long (default DRS-like: 60 min)
	Rules             []Rule
}

// Rule keeps one PIT per Interval for Keep.
type Rule struct {
	Interval time.Duration
	Keep     time.Duration
}

// DefaultPolicy is DRS's: every 10 minutes kept 1 hour, hourly kept 24 hours, daily
// kept 7 days, plus every consistency point kept 60 minutes.
func DefaultPolicy() Policy {
	return Policy{ConsistencyPoints: time.Hour, Rules: []Rule{
		{Interval: 10 * time.Minute, Keep: time.Hour},
		{Interval: time.Hour, Keep: 24 * time.Hour},
		{Interval: 24 * time.Hour, Keep: 7 * 24 * time.Hour},
	}}
}

// Decision is retention's verdict on one PIT.
type Decision struct {
	PIT    PIT
	Keep   bool
	Reason string // why it is kept: "locked", "newest", "consistency point", "every 10m0s for 1h0m0s", …
}

// Apply decides for each PIT (of one server) whether policy keeps it at now. In each
// rule's interval the PIT kept is the best consistency level, then one of a group
// point, then the earliest, so the choice is stable as new PITs arrive — and every
// member of a consistency group, whose group points share their instants, keeps the
// same group point.
func (p Policy) Apply(pits []PIT, now time.Time) []Decision {
	out := make([]Decision, len(pits))
	for i, pit := range pits {
		out[i].PIT = pit
	}
	keep := func(i int, reason string) {
		if !out[i].Keep {
			out[i].Keep, out[i].Reason = true, reason
		}
	}
	order := make([]int, len(pits))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return pits[order[a]].Time.Before(pits[order[b]].Time) })
	newestConsistent := -1
	for _, i := range order {
		if pits[i].Level != consistency.None {
			newestConsistent = i
		}
	}
	for _, i := range order {
		if pits[i].Locked(now) {
			keep(i, "locked until "+pits[i].LockUntil.Format(time.RFC3339))
		}
	}
	if len(order) > 0 {
		keep(order[len(order)-1], "newest")
	}
	if newestConsistent >= 0 {
		keep(newestConsistent, "newest consistent")
	}
	for _, i := range order {
		if now.Sub(pits[i].Time) <= p.ConsistencyPoints {
			keep(i, "consistency point")
		}
	}
	for _, rule := range p.Rules {
		if rule.Interval <= 0 {
			continue
		}
		best := map[int64]int{}
		for _, i := range order {
			if now.Sub(pits[i].Time) > rule.Keep {
				continue
			}
			bucket := pits[i].Time.UnixNano() / int64(rule.Interval)
			if j, ok := best[bucket]; !ok || better(pits[i], pits[j]) {
				best[bucket] = i
			}
		}
		reason := fmt.Sprintf("every %s for %s", rule.Interval, rule.Keep)
		for _, i := range best {
			keep(i, reason)
		}
	}
	return out
}

// better reports whether a is a better PIT to keep than b, taken earlier: of a
// better level, or of the same level and of a group point where b is not.
func better(a, b PIT) bool {
	if a.Level != b.Level {
		return a.Level > b.Level
	}
	return a.Labels[LabelGroupPoint] != "" && b.Labels[LabelGroupPoint] == ""
}

// LabelGroupPoint is the PIT label naming the consistency-group point the PIT is its
// server's part of.
const LabelGroupPoint = "groupPoint"

// ApplyRetention deletes the PITs of server that policy does not keep and returns them.
// Locked PITs are never deleted.
func (r *Repo) ApplyRetention(ctx context.Context, server string, policy Policy) ([]PIT, error) {
	pits, err := r.ListPITs(ctx, server)
	if err != nil {
		return nil, err
	}
	var deleted []PIT
	for _, d := range policy.Apply(pits, r.opts.Now()) {
		if d.Keep {
			continue
		}
		if err := r.DeletePIT(ctx, server, d.PIT.ID); errors.Is(err, ErrLocked) {
			// Its lock record keeps it: its manifest was put back (DeletePIT says so).
			r.log.Warn("retention keeps a PIT that is locked", "server", server, "pit", d.PIT.ID, "err", err)
			continue
		} else if err != nil {
			return deleted, fmt.Errorf("retention of %s: %w", server, err)
		}
		deleted = append(deleted, d.PIT)
	}
	return deleted, nil
}
