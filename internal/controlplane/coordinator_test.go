package controlplane_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/db/dbtest"
)

// second starts another control plane on e's database, with a copy of e's data
// directory (its CA and keys) but a runner id of its own, as a second host would run.
func (e *env) second() (*controlplane.ControlPlane, func()) {
	t := e.t
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(e.dataDir)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "runner-id")); err != nil {
		t.Fatal(err)
	}
	cfg := controlplane.Config{DataDir: dir, DBURL: e.dbURL, Listen: "127.0.0.1:0", Now: e.clock.Now,
		HeartbeatInterval: time.Hour, ReplicatorTimeout: 45 * time.Second, AgentTimeout: e.agentTimeout}
	if e.configure != nil {
		e.configure(&cfg)
	}
	cp, err := controlplane.Open(e.ctx, cfg)
	if err != nil {
		t.Fatalf("open a second control plane: %v", err)
	}
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		cp.Close()
	}
	t.Cleanup(stop)
	return cp, stop
}

func waitFor(t *testing.T, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOneOfTwoControlPlanesCoordinates: two control planes on one database both serve
// the API, one coordinates (assignment, groups, plan runs, scheduled drills), and when
// it stops the other takes over within the lease.
func TestOneOfTwoControlPlanesCoordinates(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			e := startWith(t, kind, func(c *controlplane.Config) { c.CoordinatorLease = 2 * time.Second })
			waitFor(t, "the first control plane coordinates", 5*time.Second, e.cp.Coordinating)
			cp2, stop2 := e.second()
			time.Sleep(1500 * time.Millisecond) // three renewals
			if cp2.Coordinating() || !e.cp.Coordinating() {
				t.Fatalf("coordinating: first %v, second %v; want only the first", e.cp.Coordinating(), cp2.Coordinating())
			}
			// The second serves the API as the first does: same tokens, same answers.
			token := e.token(api.CreateTokenRequest{Kind: api.TokenAPI, Role: api.RoleViewer})
			c2, err := api.NewClient(api.ClientConfig{Server: cp2.URL(), Token: token, CAPEM: cp2.CACertPEM()})
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if _, err := c2.ListSourceServers(e.ctx, api.SourceServerFilter{}); err != nil {
				t.Fatalf("the second control plane does not serve the API: %v", err)
			}
			if h, err := c2.Health(e.ctx); err != nil || h.Coordinator {
				t.Errorf("the second's health: %+v, %v; want coordinator false", h, err)
			}
			if h, err := e.admin.Health(e.ctx); err != nil || !h.Coordinator {
				t.Errorf("the first's health: %+v, %v; want coordinator true", h, err)
			}
			stopped := time.Now()
			e.stopCurrent()
			waitFor(t, "the second control plane takes over", 3*time.Second, cp2.Coordinating)
			t.Logf("the second coordinates %v after the first stopped (it gave up the lease)", time.Since(stopped).Round(time.Millisecond))
			stop2()
		})
	}
}

// TestACrashedCoordinatorsLeaseLapses: a coordinator that died without giving up its
// lease holds it until it lapses, then another control plane takes it, within a
// quarter of the lease.
func TestACrashedCoordinatorsLeaseLapses(t *testing.T) {
	for _, kind := range dbtest.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			const ttl = 2 * time.Second
			e := startWith(t, kind, func(c *controlplane.Config) { c.CoordinatorLease = ttl })
			waitFor(t, "the first control plane coordinates", 5*time.Second, e.cp.Coordinating)
			e.stopCurrent()
			// What a crashed coordinator leaves: its lease, not given up.
			d, err := db.Open(e.ctx, e.dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			now := e.clock.Now()
			if err := d.Update(e.ctx, func(tx *db.Tx) error {
				ok, err := tx.TakeLease("coordinator", "crashed-host", now, now.Add(ttl))
				if err == nil && !ok {
					err = errors.New("the crashed host did not get the lease")
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			cp2, _ := e.second()
			time.Sleep(ttl) // four renewals at least: the lease holds (the clock stands still)
			if cp2.Coordinating() {
				t.Fatal("the second control plane coordinates while the crashed one's lease holds")
			}
			e.clock.Advance(ttl + time.Millisecond)
			lapsed := time.Now()
			waitFor(t, "the second control plane takes over", ttl, cp2.Coordinating)
			t.Logf("the second coordinates %v after the crashed one's lease lapsed (lease %v)", time.Since(lapsed).Round(time.Millisecond), ttl)
			var l db.Lease
			if err := d.View(e.ctx, func(tx *db.Tx) (err error) { l, err = tx.LeaseHolder("coordinator"); return err }); err != nil || l.Holder == "crashed-host" {
				t.Errorf("the lease after the takeover: %+v, %v", l, err)
			}
		})
	}
}
