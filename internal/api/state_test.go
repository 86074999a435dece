package api

import (
	"slices"
	"testing"
	"time"
)

// The initiation steps a server shows follow its state even from a reporter that sends
// them only while INITIATING: the last steps reported were NOT_STARTED or IN_PROGRESS,
// and describe showed them so while the server was CONTINUOUS.
func TestInitiationStepsFollowTheState(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	statuses := func(st ReplicationState) []string {
		var out []string
		for _, s := range st.InitiationSteps {
			out = append(out, s.Status)
		}
		return out
	}
	state := func(s string) *string { return &s }
	st := NewReplicationState(now)
	if got := statuses(st); !slices.Equal(got, []string{StepSucceeded, StepNotStarted, StepNotStarted}) {
		t.Fatalf("a new server's steps %v", got)
	}
	connecting := NewInitiationSteps()
	connecting[1].Status = StepInProgress
	st = st.Apply(ReplicationStateUpdate{DataReplicationState: state(StateInitiating), InitiationSteps: connecting}, now)
	if got := statuses(st); !slices.Equal(got, []string{StepSucceeded, StepInProgress, StepNotStarted}) {
		t.Fatalf("the steps reported were not kept: %v", got)
	}
	// An older agent moves on without steps.
	st = st.Apply(ReplicationStateUpdate{DataReplicationState: state(StateInitialSync)}, now)
	passed := []string{StepSucceeded, StepSucceeded, StepSucceeded}
	if got := statuses(st); !slices.Equal(got, passed) {
		t.Fatalf("INITIAL_SYNC with steps %v, want each SUCCEEDED", got)
	}
	// Updates without a state, or to a state that says nothing of them, keep them.
	lag := 1.0
	for _, u := range []ReplicationStateUpdate{{LagSeconds: &lag}, {DataReplicationState: state(StateDisconnected)},
		{DataReplicationState: state(StatePaused)}} {
		if st = st.Apply(u, now); !slices.Equal(statuses(st), passed) {
			t.Fatalf("after %+v the steps are %v", u, statuses(st))
		}
	}
	// Resumed by an operator: the steps are to come again.
	st = st.Apply(ReplicationStateUpdate{DataReplicationState: state(StateInitiating)}, now)
	if got := statuses(st); !slices.Equal(got, []string{StepSucceeded, StepNotStarted, StepNotStarted}) {
		t.Fatalf("INITIATING again with steps %v", got)
	}
	// A SKIPPED step stays skipped.
	skipped := NewInitiationSteps()
	skipped[2].Status = StepSkipped
	if got := InitiationPassed(skipped); got[2].Status != StepSkipped || got[1].Status != StepSucceeded || skipped[1].Status != StepNotStarted {
		t.Fatalf("InitiationPassed %+v (of %+v)", got, skipped)
	}
}
