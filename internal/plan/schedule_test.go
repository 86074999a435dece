package plan

import (
	"strings"
	"testing"
	"time"
)

func TestScheduleNext(t *testing.T) {
	at := time.Date(2026, 3, 4, 10, 20, 30, 500, time.UTC) // a Wednesday
	paris := time.FixedZone("Paris", 3600)
	for _, tc := range []struct {
		spec  string
		after time.Time
		want  time.Time
	}{
		{"0 3 * * 1", at, time.Date(2026, 3, 9, 3, 0, 0, 0, time.UTC)},
		{"  0 3 * * 1  ", at, time.Date(2026, 3, 9, 3, 0, 0, 0, time.UTC)},
		{"*/15 * * * *", at, time.Date(2026, 3, 4, 10, 30, 0, 0, time.UTC)},
		{"0 3 * * *", at.In(paris), time.Date(2026, 3, 5, 3, 0, 0, 0, time.UTC)}, // UTC, whatever the zone of after
		{"20 10 4 3 *", at, time.Date(2027, 3, 4, 10, 20, 0, 0, time.UTC)},
		{"0 0 29 2 *", at, time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC)},
		{"@daily", at, time.Date(2026, 3, 5, 0, 0, 0, 0, time.UTC)},
		{"@hourly", at, time.Date(2026, 3, 4, 11, 0, 0, 0, time.UTC)},
		{"@every 20s", at, time.Date(2026, 3, 4, 10, 20, 50, 0, time.UTC)},
		{"@every 24h", at, time.Date(2026, 3, 5, 10, 20, 30, 0, time.UTC)},
		{"@every 10s", at, time.Date(2026, 3, 4, 10, 20, 40, 0, time.UTC)},
	} {
		got, err := Schedule{Drill: tc.spec}.Next(tc.after)
		if err != nil || !got.Equal(tc.want) || got.Location() != time.UTC {
			t.Errorf("Next of %q after %s: %s, %v; want %s", tc.spec, tc.after, got, err, tc.want)
		}
	}
}

func TestScheduleRefused(t *testing.T) {
	for spec, want := range map[string]string{
		"":                         "the schedule needs drill",
		"every day":                "is not a cron expression",
		"* * * * * *":              "is not a cron expression (expected exactly 5 fields",
		"61 * * * *":               "is not a cron expression",
		"*/0 * * * *":              "is not a cron expression",
		"0 0 30 2 *":               "never comes",
		"@every 5s":                "@every takes 10s to 8784h0m0s",
		"@every 9999h":             "@every takes 10s to",
		"@every 1500ms":            "@every takes 10s to",
		"@every 10500ms":           "whole seconds",
		"@every soon":              `"soon" is not a duration`,
		"@every -1m":               "@every takes 10s to",
		"@every":                   "is not a cron expression",
		"@fortnightly":             "is not a cron expression",
		"TZ=Europe/Paris 0 3 * *":  "schedules are in UTC; remove the TZ= prefix",
		"CRON_TZ=UTC 0 3 * * *":    "remove the CRON_TZ= prefix",
		strings.Repeat("* ", 200):  "at most 256 characters",
		"0 3 * * 1 CRON_TZ=Europe": "is not a cron expression",
	} {
		_, err := Schedule{Drill: spec}.Next(time.Now())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Next of %q: %v, want …%s…", spec, err, want)
		}
		if verr := (Schedule{Drill: spec}).validate(); verr == nil {
			t.Errorf("validate accepted %q", spec)
		}
	}
}
