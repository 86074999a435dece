package controlplane_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
	"github.com/lifeboat-dr/lifeboat/internal/controlplane"
	"github.com/lifeboat-dr/lifeboat/internal/db"
	"github.com/lifeboat-dr/lifeboat/internal/recovery/recoverytest"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
)

// failedAt runs a recovery that must fail and returns the failed server's row and
// the job's log text.
func failedAt(t *testing.T, e *env, server string) (api.JobServer, string) {
	t.Helper()
	op := e.userClient(api.RoleOperator)
	job, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: server}}, IsDrill: true})
	if err != nil {
		t.Fatal(err)
	}
	job = recoverytest.WaitJob(t, op, job.ID, time.Minute)
	log, err := op.JobLog(e.ctx, job.ID, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, ev := range log.Items {
		lines = append(lines, ev.Type+" "+ev.Message)
	}
	s := job.Servers[0]
	if s.LaunchStatus != api.LaunchFailed {
		t.Fatalf("the launch did not fail: %+v\n%s", s, strings.Join(lines, "\n"))
	}
	return s, strings.Join(lines, "\n")
}

// TestProviderFaults: a missing QEMU is refused before anything is written, naming
// the Debian package; a QEMU that fails to start, and a conversion hook that fails,
// fail their step, which the job names, and the partial files are removed.
func TestProviderFaults(t *testing.T) {
	bin := t.TempDir()
	brokenQEMU := filepath.Join(bin, "qemu-broken")
	if err := os.WriteFile(brokenQEMU, []byte("#!/bin/sh\necho 'qemu: could not open disk: simulated failure' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(bin, "hook")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\necho \"hook saw $LIFEBOAT_DISKS\"\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, qemu, hook, provider string
		step, say                  string
		partial                    bool // the step wrote files that must be gone
	}{
		{"missing qemu", "/nonexistent/qemu-system-x86_64", "", api.ProviderQEMU, api.StepPrepare, "apt-get install qemu-system-x86", false},
		{"qemu fails", brokenQEMU, "", api.ProviderQEMU, api.StepLaunch, "simulated failure", true},
		{"hook fails", "", hook, api.ProviderImage, api.StepConversion, "conversion hook", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := startWith(t, db.SQLite, func(cfg *controlplane.Config) {
				cfg.Recovery.QEMUBinary, cfg.Recovery.ConversionHook = c.qemu, c.hook
			})
			repo := recoverytest.Store(t, e.cp)
			srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 1 << 20})
			recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute),
				recoverytest.Volume{Name: "vda", Image: image(t, 1<<20, 9)})
			ls := api.DefaultLaunchSettings(1, 512<<20)
			ls.Provider = c.provider
			if _, err := e.admin.SetLaunchSettings(e.ctx, srv.ID, ls); err != nil {
				t.Fatal(err)
			}
			s, log := failedAt(t, e, srv.ID)
			if s.Step != c.step || !strings.Contains(s.Error, c.say) {
				t.Fatalf("failed at %s with %q; want %s saying %q", s.Step, s.Error, c.step, c.say)
			}
			if !strings.Contains(log, "launch failed at "+c.step) {
				t.Errorf("the log does not name the step:\n%s", log)
			}
			dir := filepath.Join(e.dataDir, "recovery", s.RecoveryInstanceID)
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("partial files are left in %s: %v", dir, err)
			}
			if c.partial && !strings.Contains(log, "partial files removed") {
				t.Errorf("the log does not say the partial files were removed:\n%s", log)
			}
			ri, err := e.admin.RecoveryInstances(e.ctx, api.RecoveryInstanceFilter{})
			if err != nil || len(ri.Items) != 0 {
				t.Errorf("a failed launch left an active recovery instance: %+v %v", ri, err)
			}
		})
	}
}

// TestPostLaunchScriptAndQcow2: the image provider writes qcow2 when asked, and a
// post-launch script runs with the recovery instance in its environment.
func TestPostLaunchScriptAndQcow2(t *testing.T) {
	testutil.RequireCommand(t, "qemu-img", "qemu-utils")
	e := startWith(t, db.SQLite, nil)
	repo := recoverytest.Store(t, e.cp)
	srv := recoverytest.Server(t, e.cp, "m1", map[string]int64{"vda": 2 << 20})
	img := image(t, 2<<20, 11)
	recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: img})
	out := filepath.Join(t.TempDir(), "env.txt")
	target := t.TempDir()
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider, ls.DiskFormat, ls.ImageTarget = api.ProviderImage, api.DiskQcow2, &api.ImageTarget{Dir: target}
	ls.PostLaunchActions = []api.PostLaunchAction{{Name: "record", Type: "script", TimeoutSeconds: 30,
		Command: "echo \"$LIFEBOAT_RECOVERY_INSTANCE_ID $LIFEBOAT_SOURCE_SERVER_ID $LIFEBOAT_DRILL\" > " + out}}
	if _, err := e.admin.SetLaunchSettings(e.ctx, srv.ID, ls); err != nil {
		t.Fatal(err)
	}
	op := e.userClient(api.RoleOperator)
	job, err := op.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}})
	if err != nil {
		t.Fatal(err)
	}
	job = recoverytest.WaitJob(t, op, job.ID, time.Minute)
	s := job.Servers[0]
	if s.LaunchStatus != api.LaunchLaunched || s.Error != "" {
		t.Fatalf("%+v", s)
	}
	got, err := os.ReadFile(out)
	if err != nil || strings.TrimSpace(string(got)) != s.RecoveryInstanceID+" "+srv.ID+" false" {
		t.Fatalf("the script saw %q (%v)", got, err)
	}
	ri, err := op.RecoveryInstance(e.ctx, s.RecoveryInstanceID)
	if err != nil {
		t.Fatal(err)
	}
	q := ri.ProviderHandle.Disks[0]
	if filepath.Dir(q) != target || !strings.HasSuffix(q, ".qcow2") {
		t.Fatalf("disk %s is not a qcow2 image in %s", q, target)
	}
	testutil.Run(t, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", q, img)
	_, err = op.StartRecoveryInstance(e.ctx, ri.ID)
	if ae := wantAPIError(t, err, 409, api.CodeConflict); !strings.Contains(ae.Message, "disks only") {
		t.Errorf("start of an image: %q", ae.Message)
	}
	// Terminate removes the image it wrote in the target directory.
	term, err := op.TerminateRecoveryInstances(e.ctx, api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: []string{ri.ID}})
	if err != nil {
		t.Fatal(err)
	}
	recoverytest.WaitJob(t, op, term.ID, time.Minute)
	if _, err := os.Stat(q); !os.IsNotExist(err) {
		t.Fatalf("terminate left %s: %v", q, err)
	}
}

// TestInstanceRegistration: disks are checked on the host; an account other than the
// system account may name only paths under the configured roots.
func TestInstanceRegistration(t *testing.T) {
	root := t.TempDir()
	e := startWith(t, db.SQLite, func(c *controlplane.Config) { c.Recovery.HostPathRoots = []string{root} })
	disk := filepath.Join(root, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	qcow := filepath.Join(root, "disk.qcow2")
	if err := os.WriteFile(qcow, []byte("QFI\xfb\x00\x00\x00\x03"), 0o600); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside.raw")
	if err := os.WriteFile(outside, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	in, err := e.admin.CreateInstance(e.ctx, api.CreateInstanceRequest{Site: "default", Disks: []string{disk},
		Tags: map[string]string{api.LaunchIntoTagDRS: api.LaunchIntoTagValue}})
	if err != nil {
		t.Fatal(err)
	}
	if in.Name != in.ID || in.State != api.InstanceStopped || in.Disks[0].SizeBytes != 1<<20 || in.BootMode != api.BootBIOS {
		t.Fatalf("instance %+v", in)
	}
	in, err = e.admin.UpdateInstanceTags(e.ctx, in.ID, api.UpdateInstanceTagsRequest{Set: map[string]string{"role": "web"}, Remove: []string{api.LaunchIntoTagDRS}})
	if err != nil || api.AllowsLaunchInto(in.Tags) || in.Tags["role"] != "web" {
		t.Fatalf("tags: %+v %v", in.Tags, err)
	}
	for _, c := range []struct {
		disk   string
		status int
		say    string
	}{
		{filepath.Join(root, "missing.raw"), 400, "cannot be used"},
		{qcow, 400, "qcow2"},
		{root, 400, "neither an image file nor a block device"},
	} {
		_, err := e.admin.CreateInstance(e.ctx, api.CreateInstanceRequest{Site: "default", Disks: []string{c.disk}})
		if ae := wantAPIError(t, err, c.status, ""); !strings.Contains(ae.Message, c.say) {
			t.Errorf("%s: %q does not say %q", c.disk, ae.Message, c.say)
		}
	}
	_, err = e.admin.CreateInstance(e.ctx, api.CreateInstanceRequest{Name: in.Name, Site: "default", Disks: []string{disk}})
	wantAPIError(t, err, 409, api.CodeConflict)

	// A tenant's admin: paths under the roots only.
	tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
	if err != nil {
		t.Fatal(err)
	}
	ta := e.client(tenant.AdminToken)
	if _, err := ta.CreateInstance(e.ctx, api.CreateInstanceRequest{Site: "default", Disks: []string{disk}}); err != nil {
		t.Fatalf("a tenant's disk under the allowed root: %v", err)
	}
	_, err = ta.CreateInstance(e.ctx, api.CreateInstanceRequest{Site: "default", Disks: []string{outside}})
	if ae := wantAPIError(t, err, 403, api.CodeForbidden); !strings.Contains(ae.Message, "outside the directories") {
		t.Errorf("tenant outside the roots: %q", ae.Message)
	}
	// A tenant does not see the system account's instance.
	if _, err := ta.Instance(e.ctx, in.ID); err == nil {
		t.Fatal("a tenant read another account's instance")
	}
	if err := e.admin.DeleteInstance(e.ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if l, err := e.admin.Instances(e.ctx); err != nil || len(l.Items) != 0 {
		t.Fatalf("after delete: %+v %v", l, err)
	}
}

// TestTenantsRunNoScriptsOnTheHost: a post-launch script runs on the control plane's
// host, so a tenant's recovery refuses it (the instance still launches).
func TestTenantsRunNoScriptsOnTheHost(t *testing.T) {
	e := startWith(t, db.SQLite, nil)
	tenant, err := e.admin.CreateAccount(e.ctx, api.CreateAccountRequest{Name: "tenant"})
	if err != nil {
		t.Fatal(err)
	}
	repo := recoverytest.AccountStore(t, e.cp, tenant.Account.ID)
	srv := recoverytest.ServerIn(t, e.cp, tenant.Account.ID, "m1", map[string]int64{"vda": 1 << 20})
	recoverytest.PIT(t, e.cp, repo, srv, consistency.Crash, e.clock.Now().Add(-time.Minute), recoverytest.Volume{Name: "vda", Image: image(t, 1<<20, 4)})
	marker := filepath.Join(t.TempDir(), "ran")
	ls := api.DefaultLaunchSettings(1, 512<<20)
	ls.Provider = api.ProviderImage
	ls.PostLaunchActions = []api.PostLaunchAction{{Name: "x", Type: "script", Command: "touch " + marker, TimeoutSeconds: 10}}
	ta := e.client(tenant.AdminToken)
	if _, err := ta.SetLaunchSettings(e.ctx, srv.ID, ls); err != nil {
		t.Fatal(err)
	}
	job, err := ta.StartRecovery(e.ctx, api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: srv.ID}}})
	if err != nil {
		t.Fatal(err)
	}
	job = recoverytest.WaitJob(t, ta, job.ID, time.Minute)
	if s := job.Servers[0]; s.LaunchStatus != api.LaunchLaunched || !strings.Contains(s.Error, "only the system account") {
		t.Fatalf("%+v", s)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("a tenant's script ran on the control plane's host")
	}
}
