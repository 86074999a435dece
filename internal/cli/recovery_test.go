package cli

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func TestParseAt(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2025-06-01T10:30:00Z": time.Date(2025, 6, 1, 10, 30, 0, 0, time.UTC),
		"2025-06-01 10:30":     time.Date(2025, 6, 1, 10, 30, 0, 0, time.Local),
		"30m":                  now.Add(-30 * time.Minute),
		"-2h":                  now.Add(-2 * time.Hour),
	} {
		got, err := parseAt(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseAt(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseAt("yesterday", now); err == nil {
		t.Error("parseAt accepted yesterday")
	}
}

// The recovery commands: usage errors exit 2 before calling anything; the API's
// refusals exit 1 with its one-sentence message; listings print the API's JSON.
func TestRecoveryCommands(t *testing.T) {
	e := startCLIEnv(t)
	e.fails(2, "one or more source server ids", "drill")
	e.fails(2, "--pit or --at, not both", "recover", "s-00000000000000001", "--pit", "pit-00000000000000001", "--at", "1h")
	e.fails(2, "--at", "recover", "s-00000000000000001", "--at", "soon")
	e.fails(2, "not a source server id", "recover", "bogus")
	e.fails(2, "give --on or --off", "recovery-instances", "protect", "i-00000000000000001")
	e.fails(2, "recovery instance ids, or --drills", "recovery-instances", "terminate")
	e.fails(2, "KEY=VALUE", "instances", "tag", "inst-00000000000000001", "novalue")
	e.fails(1, "was not found", "recover", "s-00000000000000001")
	e.fails(1, "was not found", "jobs", "describe", "drsjob-00000000000000001")
	e.fails(1, "was not found", "recovery-instances", "terminate", "i-00000000000000001")

	var jobs api.JobList
	if err := json.Unmarshal([]byte(e.must("-o", "json", "jobs", "list")), &jobs); err != nil || jobs.Items == nil {
		t.Fatalf("jobs list -o json: %v %+v", err, jobs)
	}
	var ris api.RecoveryInstanceList
	if err := json.Unmarshal([]byte(e.must("-o", "json", "recovery-instances", "list", "--all")), &ris); err != nil || ris.Items == nil {
		t.Fatalf("recovery-instances list -o json: %v", err)
	}
	if out := e.must("instances", "list"); !strings.Contains(out, "LAUNCH INTO") {
		t.Fatalf("instances list: %q", out)
	}
}
