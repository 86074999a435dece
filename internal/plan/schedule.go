package plan

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// MinEvery is the shortest "@every" schedule. It is short so that a test can run a
// scheduled drill in seconds; a real plan's drills run hours or days apart, and each
// one launches every server of the plan.
const MinEvery = 10 * time.Second

// maxEvery is the longest "@every" schedule: a year (use a cron expression beyond).
const maxEvery = 366 * 24 * time.Hour

// Next is the first time after after (in UTC) when the schedule's drill runs. Drill is
// a cron expression of 5 fields (minute hour day-of-month month day-of-week) in UTC, a
// descriptor (@yearly, @monthly, @weekly, @daily, @hourly), or "@every D" with D a
// whole number of seconds from 10s (MinEvery) to a year: the first drill then runs D
// after after, and each next one D after the one before.
func (s Schedule) Next(after time.Time) (time.Time, error) {
	sched, err := s.parse()
	if err != nil {
		return time.Time{}, err
	}
	next := sched.Next(after.UTC())
	if next.IsZero() {
		return time.Time{}, fmt.Errorf("schedule %q never comes: no such date within five years", s.Drill)
	}
	return next.UTC(), nil
}

// validate checks the schedule, and that it comes at all ("0 0 30 2 *" never does).
func (s Schedule) validate() error {
	// Any date will do: a cron expression that comes at all comes within five years
	// of any date, leap days included.
	_, err := s.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
	return err
}

// parse reads the schedule, in UTC whatever the host's time zone.
func (s Schedule) parse() (sched cron.Schedule, err error) {
	spec := strings.TrimSpace(s.Drill)
	switch {
	case spec == "":
		return nil, errors.New("the schedule needs drill: a cron expression in UTC such as \"0 3 * * 1\" (03:00 every Monday), or @every 24h")
	case len(spec) > 256:
		return nil, errors.New("the schedule is at most 256 characters")
	case strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ="):
		return nil, fmt.Errorf("schedule %q names a time zone: schedules are in UTC; remove the %s prefix", s.Drill, spec[:strings.Index(spec, "=")+1])
	}
	if rest, ok := strings.CutPrefix(spec, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		switch {
		case err != nil:
			return nil, fmt.Errorf("schedule %q: %q is not a duration such as 24h or 30m", s.Drill, strings.TrimSpace(rest))
		case d < MinEvery || d > maxEvery:
			return nil, fmt.Errorf("schedule %q: @every takes %s to %s (hours or days for a real plan: each drill launches all its servers)", s.Drill, MinEvery, maxEvery)
		case d%time.Second != 0:
			return nil, fmt.Errorf("schedule %q: @every takes whole seconds, not %s", s.Drill, d)
		}
		return cron.Every(d), nil
	}
	// The parser has been known to panic on odd input: a schedule it cannot read is
	// refused, never a crash of the control plane.
	defer func() {
		if r := recover(); r != nil {
			sched, err = nil, fmt.Errorf("schedule %q is not a cron expression", s.Drill)
		}
	}()
	parser := cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	sched, err = parser.Parse("CRON_TZ=UTC " + spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q is not a cron expression (%v): give 5 fields, minute hour day-of-month month day-of-week, in UTC, such as \"0 3 * * 1\", or @every 24h", s.Drill, err)
	}
	return sched, nil
}
