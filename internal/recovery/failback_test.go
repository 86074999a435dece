package recovery_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/launch"
	"github.com/lifeboat-dr/lifeboat/internal/launch/conversion/ext4image"
	"github.com/lifeboat-dr/lifeboat/internal/recovery"
	"github.com/lifeboat-dr/lifeboat/internal/testutil"
	"github.com/lifeboat-dr/lifeboat/internal/tracker"
)

// TestFailbackConvertPutsTheOriginBack: on a disk written by a failback, the origin's
// agent configuration (kept aside by recovery) is back, the PIT's hash table is the
// origin agent's under its volume's name, and nothing of the recovery instance is left:
// its record and key, seed tables, the reversed agent's tables and status, Lifeboat's
// network settings for the recovery site.
func TestFailbackConvertPutsTheOriginBack(t *testing.T) {
	testutil.RequireCommand(t, "debugfs", "e2fsprogs")
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	testutil.MkfsExt4(t, img)
	all, err := ext4image.Find(img)
	if err != nil || len(all) != 1 {
		t.Fatalf("find the filesystem: %v", err)
	}
	fsys := all[0]
	files := map[string]string{
		"/etc/lifeboat/agent.yaml":               "server: x\n# the reversed server's identity\n",
		recovery.OriginAgentConfig:               "sourceServerId: s-origin\n",
		api.RecoveryInfoFile:                     `{"reverseKey":"secret"}`,
		"/etc/lifeboat/network":                  "MODE=static\n",
		api.SeedTableFile(api.ReverseSeedDir, 0): "seed",
		recovery.AgentStateDir + "/hashes-vdb":   "the reversed agent's table",
		recovery.AgentStateDir + "/status.json":  "{}",
		recovery.AgentStateDir + "/generation":   "12345678",
		"/srv/data":                              "the server's own data",
	}
	for p, content := range files {
		if err := fsys.MkdirAll(ctx, filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := fsys.WriteFile(ctx, p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	seed, err := tracker.NewHashTable("vdb", 32<<20, 65536)
	if err != nil {
		t.Fatal(err)
	}
	seed.Set(3, 99)
	res, err := recovery.FailbackConvert(ctx, recovery.FailbackSpec{Disks: []launch.Disk{{Path: img}},
		OriginVolumes: []api.Volume{{Name: "sda", SizeBytes: 32 << 20}}, Seeds: []*tracker.HashTable{seed}})
	if err != nil || len(res.Notes) != 0 {
		t.Fatalf("FailbackConvert: %+v, %v", res, err)
	}
	read := func(p string) string {
		b, err := fsys.ReadFile(ctx, p)
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		return string(b)
	}
	if got := read(api.DefaultAgentConfig); got != files[recovery.OriginAgentConfig] {
		t.Fatalf("agent.yaml after failback: %q, want the origin's", got)
	}
	table, err := tracker.DecodeHashTable([]byte(read(recovery.AgentStateDir + "/hashes-sda")))
	if err != nil || table.Name() != "sda" || !table.Matches(3, 99) {
		t.Fatalf("the origin agent's table: %v (%v)", table, err)
	}
	for _, gone := range []string{recovery.OriginAgentConfig, api.RecoveryInfoFile, "/etc/lifeboat/network",
		api.SeedTableFile(api.ReverseSeedDir, 0), recovery.AgentStateDir + "/hashes-vdb", recovery.AgentStateDir + "/status.json"} {
		if _, err := fsys.Stat(ctx, gone); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still on the origin's disk (%v)", gone, err)
		}
	}
	for _, kept := range []string{"/srv/data", recovery.AgentStateDir + "/generation"} {
		if got := read(kept); got != files[kept] {
			t.Errorf("%s changed: %q", kept, got)
		}
	}
	testutil.Run(t, "e2fsck", "-f", "-n", img)
}
