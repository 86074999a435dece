package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/freeze"
)

// groupCoordinator is the control plane's side of group points: a report waits until
// every member reached the phase (or the point failed) and says what to do next.
type groupCoordinator interface {
	ReportGroupPoint(ctx context.Context, serverID, pointID string, r api.GroupPointReport) (api.GroupPointDecision, error)
}

// codeGroupPointFailed reports a consistency-group point that failed.
const codeGroupPointFailed = "GROUP_POINT_FAILED"

// groupQuiet is how long after the last group point a member of a group takes its own
// points again: the group's points stopped coming (its coordinator is down, or a
// member is), and a server must not go without points.
func groupQuiet(g *api.GroupMembership) time.Duration {
	return 3*time.Duration(g.IntervalSeconds)*time.Second + 10*time.Second
}

// groupPoint takes this server's part of a consistency-group point (docs/architecture.md,
// "Consistency groups"): prepare as for a point of its own, report ready and wait until
// every member is; freeze, report frozen and read what is dirty while the report waits
// until every member is frozen — then, at that instant, every member's filesystems are
// frozen at once — thaw once both are done, and send the blocks and a marker naming the
// group point, with the group's instant as its time. Anything that fails, here or at another member, ends with the
// filesystems thawed and what was read put back; the point is the group's to fail, and
// only an error that ends the session is returned.
func (s *session) groupPoint(ctx context.Context, gp *api.GroupPointOrder, bound time.Duration) error {
	if s.opt.Groups == nil {
		return nil // no coordinator: the point fails at its deadline
	}
	failed := func(why string) {
		s.reportGroup(ctx, gp.ID, api.GroupPhaseFailed, why, time.Second)
		s.setPointErr(&api.ReplicationError{Code: codeGroupPointFailed, Message: "group point " + gp.ID + " failed: " + why})
	}
	if s.version < 2 {
		failed(fmt.Sprintf("the replication server speaks wire protocol version %d, and group points need version 2: upgrade it", s.version))
		return nil
	}
	mounts, whyNot := s.src.Mounts()
	if whyNot != nil {
		failed("this server's volumes cannot be frozen: " + whyNot.Error())
		return nil
	}
	if err := s.hook(ctx, "pre-freeze", s.opt.PreFreeze, mounts); err != nil {
		failed(err.Error())
		return nil
	}
	defer s.postThaw(ctx, mounts)
	if err := s.presync(ctx, mounts); err != nil {
		return err
	}
	dec, err := s.reportGroup(ctx, gp.ID, api.GroupPhaseReady, "", time.Until(gp.Deadline)+bound)
	if err != nil || dec.Action != api.GroupActionFreeze {
		s.groupAborted(gp.ID, dec, err)
		return nil
	}
	fr, err := s.src.Freeze(ctx, mounts, bound)
	if err != nil {
		failed("the filesystems could not be frozen: " + err.Error())
		return nil
	}
	s.log.Debug("group point: frozen", "point", gp.ID)
	if s.opt.FreezeHold > 0 {
		sleep(ctx, s.opt.FreezeHold)
	}
	type answer struct {
		dec api.GroupPointDecision
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		d, err := s.reportGroup(ctx, gp.ID, api.GroupPhaseFrozen, "", bound-fr.Elapsed())
		answered <- answer{d, err}
	}()
	got, _, _, readErr := s.collect(ctx, bound, 0)
	a := <-answered
	dec, err = a.dec, a.err
	freezeMs, thawErr := s.thaw(fr)
	if readErr != nil {
		s.putBack(got)
		failed("reading the volumes while frozen failed: " + readErr.Error())
		return nil
	}
	if err != nil || dec.Action != api.GroupActionThaw || dec.Time == nil {
		s.putBack(got)
		s.groupAborted(gp.ID, dec, err)
		return nil
	}
	var nc *freeze.NotConsistentError
	if errors.As(thawErr, &nc) || thawErr != nil {
		s.putBack(got)
		failed(fmt.Sprintf("the freeze did not hold until the group's thaw (bound %s): %v", bound, thawErr))
		return nil
	}
	if err := s.sendCollected(ctx, got); err != nil {
		return err
	}
	s.log.Debug("group point", "point", gp.ID, "freeze_ms", freezeMs, "blocks", len(got))
	return s.mark(ctx, dec.Time.UTC(), consistency.Filesystem, freezeMs, gp.ID)
}

// reportGroup reports a phase of a group point and returns the decision, waiting at
// most within.
func (s *session) reportGroup(ctx context.Context, point, phase, msg string, within time.Duration) (api.GroupPointDecision, error) {
	if within <= 0 {
		return api.GroupPointDecision{}, fmt.Errorf("no time was left to report %s", phase)
	}
	rctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	dec, err := s.opt.Groups.ReportGroupPoint(rctx, s.opt.ServerID, point, api.GroupPointReport{Phase: phase, Message: msg})
	if err != nil && phase != api.GroupPhaseFailed {
		s.reportGroup(ctx, point, api.GroupPhaseFailed, "the agent got no answer to "+phase+": "+err.Error(), time.Second)
	}
	return dec, err
}

// groupAborted records why a group point ended without this server's part.
func (s *session) groupAborted(point string, dec api.GroupPointDecision, err error) {
	why := dec.Reason
	if err != nil {
		why = "the control plane did not answer in time: " + err.Error()
	}
	if why == "" {
		why = "the coordinator answered " + dec.Action
	}
	s.setPointErr(&api.ReplicationError{Code: codeGroupPointFailed, Message: "group point " + point + " failed: " + why})
}
