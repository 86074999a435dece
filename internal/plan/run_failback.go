package plan

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

// resolveFailback finds each server's recovery instance (the failover's) and where it
// goes home.
func (r *Runner) resolveFailback(ctx context.Context) (string, error) {
	if _, err := r.selectWaves(ctx); err != nil {
		return "", err
	}
	for i := range r.Run.Servers {
		s := &r.Run.Servers[i]
		ri, err := r.Env.ActiveRecovery(ctx, s.SourceServerID)
		if err != nil {
			return "", fmt.Errorf("source server %s (%s) has no recovery instance to fail back (was the plan failed over?): %w", s.SourceServerID, s.Hostname, err)
		}
		s.RecoveryInstID = ri.ID
		into := r.wave(s.Wave).failbackInto(s.SourceServerID)
		if into != api.FailbackIntoNew {
			in, err := r.Env.Instance(ctx, into)
			if err != nil {
				return "", fmt.Errorf("the failback target of %s: %w", s.SourceServerID, err)
			}
			into = in.ID
		}
		s.FailbackInto = into
	}
	return fmt.Sprintf("%d recovery %s to fail back", len(r.Run.Servers), api.Plural("instance", len(r.Run.Servers))), nil
}

// failbackInto is where the wave says a server goes home.
func (w *Wave) failbackInto(server string) string {
	for _, f := range w.Failback {
		if f.Server == server {
			return f.Into
		}
	}
	return api.FailbackIntoNew
}

// reverse starts replication back of the wave's instances (those not started yet) and
// waits until every one is ready for launch.
func (r *Runner) reverse(ctx context.Context, i int) (string, error) {
	st := &r.Run.Steps[i]
	servers := r.servers(st.Wave)
	deadline := r.Env.Now().Add(reverseTimeout)
	for {
		var waiting []string
		for _, s := range servers {
			ri, err := r.Env.RecoveryInstance(ctx, s.RecoveryInstID)
			if err != nil {
				return "", err
			}
			switch ri.FailbackState {
			case api.FailbackReadyForLaunch, api.FailbackCompleted:
				continue
			case "", api.FailbackNotStarted:
				if err := r.Env.StartReverse(ctx, ri.ID); err != nil && !isConflict(err) {
					return "", fmt.Errorf("start replicating %s back: %w", ri.ID, err)
				}
			case api.FailbackError:
				return "", fmt.Errorf("recovery instance %s is %s: see its last job", ri.ID, ri.FailbackState)
			}
			waiting = append(waiting, fmt.Sprintf("%s (%s)", ri.ID, ri.FailbackState))
		}
		if len(waiting) == 0 {
			return fmt.Sprintf("%d %s replicated back and ready", len(servers), api.Plural("instance", len(servers))), nil
		}
		if r.Env.Now().After(deadline) {
			return "", fmt.Errorf("not ready for failback after %s: %s", reverseTimeout, strings.Join(waiting, ", "))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(max(r.Poll, waitPoll)):
		}
	}
}

// failback writes the wave's instances home (one failback job each, found again by
// key after a restart) and waits for them.
func (r *Runner) failback(ctx context.Context, i int) (string, error) {
	st := &r.Run.Steps[i]
	servers := r.servers(st.Wave)
	st.JobIDs = st.JobIDs[:0]
	for _, s := range servers {
		key := r.key(i, s.SourceServerID)
		id, err := r.Env.FindJob(ctx, key)
		if err == nil && id == "" {
			id, err = r.Env.StartFailback(ctx, key, s.RecoveryInstID, s.FailbackInto)
		}
		if err != nil {
			return "", fmt.Errorf("fail %s back into %s: %w", s.RecoveryInstID, s.FailbackInto, err)
		}
		s.JobID = id
		st.JobIDs = append(st.JobIDs, id)
	}
	if err := r.save(ctx); err != nil {
		return "", err
	}
	var failed []string
	for _, s := range servers {
		j, err := r.waitJob(ctx, s.JobID)
		if err != nil {
			return "", err
		}
		for _, js := range j.Servers {
			if js.LaunchStatus != api.LaunchLaunched {
				s.Error = fmt.Sprintf("failback not done (%s at %s): %s", js.LaunchStatus, js.Step, js.Error)
				failed = append(failed, s.SourceServerID+" "+s.Error)
			}
		}
		if s.Error != "" {
			continue
		}
		if s.Address, s.PortForwards, err = r.Env.Launched(ctx, s.JobID, s.SourceServerID); err != nil {
			return "", err
		}
		end := r.Env.Now()
		if j.EndedAt != nil {
			end = *j.EndedAt
		}
		s.LaunchedAt, s.RTOSeconds = &end, seconds(end.Sub(r.Run.StartedAt))
	}
	if len(failed) > 0 {
		return "", fmt.Errorf("%s", strings.Join(failed, "; "))
	}
	return fmt.Sprintf("%d %s written home", len(servers), api.Plural("server", len(servers))), nil
}

// complete ends each instance's failback once its origin replicates again: the
// reversed source server is deleted and the instance terminated.
func (r *Runner) complete(ctx context.Context, i int) (string, error) {
	st := &r.Run.Steps[i]
	deadline := r.Env.Now().Add(completeTimeout)
	st.JobIDs = st.JobIDs[:0]
	for k := range r.Run.Servers {
		s := &r.Run.Servers[k]
		key := r.key(i, s.SourceServerID)
		for {
			id, err := r.Env.FindJob(ctx, key)
			if err == nil && id == "" {
				id, err = r.Env.CompleteFailback(ctx, key, s.RecoveryInstID)
			}
			if err == nil {
				st.JobIDs = append(st.JobIDs, id)
				if _, err := r.waitJob(ctx, id); err != nil {
					return "", err
				}
				break
			}
			if !isConflict(err) || r.Env.Now().After(deadline) {
				return "", fmt.Errorf("complete the failback of %s: %w", s.RecoveryInstID, err)
			}
			select { // the origin does not replicate again yet
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(max(r.Poll, waitPoll)):
			}
		}
	}
	return fmt.Sprintf("%d %s completed: the origins replicate again", len(r.Run.Servers), api.Plural("failback", len(r.Run.Servers))), nil
}
