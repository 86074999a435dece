package controlplane

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/consistency"
)

// requestTypes lists the body type of every route that takes one.
func requestTypes() []reflect.Type {
	var out []reflect.Type
	for _, rt := range (&ControlPlane{}).routeTable() {
		if rt.req != nil {
			out = append(out, rt.req)
		}
	}
	return out
}

// FuzzDecodeRequest feeds arbitrary bodies to the decoding of every route's request
// type. It must never panic, and a body it accepts must survive a round trip: what it
// decoded encodes to JSON that decodes and validates again to the same JSON.
func FuzzDecodeRequest(f *testing.F) {
	types := requestTypes()
	if len(types) < 10 {
		f.Fatalf("only %d request types found", len(types))
	}
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	seeds := []any{
		api.CreateTokenRequest{Kind: "install", Uses: 3, TTLSeconds: 600},
		api.RegisterSourceServerRequest{CSR: "x", MachineID: "abc", Hostname: "h", Volumes: []api.Volume{{Name: "vda", Path: "/dev/vda", SizeBytes: 1, MajorMinor: "253:0"}}},
		api.RegisterReplicatorRequest{CSR: "x", Name: "r1", Site: "default", Address: "10.0.0.1:1500"},
		api.DefaultReplicationSettings("file:///var/lib/lifeboat/staging"),
		api.DefaultLaunchSettings(2, 1<<30),
		api.ReplicationStateUpdate{DataReplicationState: new(string), LastConsistencyPoint: &api.ConsistencyPointInfo{Time: now, Level: consistency.Crash}},
		api.CreateRecoverySnapshotRequest{Time: now, Level: consistency.Filesystem, Volumes: []api.SnapshotVolume{{Name: "vda"}}},
		api.DeleteRecoverySnapshotsRequest{IDs: []string{"pit-00000000000000001"}},
		api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: "s-00000000000000001", RecoverySnapshotID: "pit-00000000000000001"}}, IsDrill: true, NetworkAccess: true},
		api.StartRecoveryRequest{SourceServers: []api.RecoveryServer{{SourceServerID: "s-00000000000000001"}}, At: &now, Force: true},
		api.TerminateRecoveryInstancesRequest{RecoveryInstanceIDs: []string{"i-00000000000000001"}},
		api.TerminationProtectionRequest{Enabled: true},
		api.CreateInstanceRequest{Name: "old-web", Site: "default", Disks: []string{"/dev/vdb"}, BootMode: "kernel",
			Tags: map[string]string{api.LaunchIntoTagDRS: api.LaunchIntoTagValue}},
		api.UpdateInstanceTagsRequest{Set: map[string]string{"a": "b"}, Remove: []string{"c"}},
		api.StagingStoreKeyRequest{StagingStoreURL: "s3://bucket/p?endpoint=127.0.0.1:9000&tls=false"},
		api.CreateAccountRequest{Name: "t", StagingStoreURL: "s3://b/p", StagingStoreCredentials: &api.S3Credentials{AccessKey: "a", SecretKey: "s"}},
		api.UpdateAccountRequest{StagingStoreURL: new(string), StagingStoreCredentials: &api.S3Credentials{AccessKey: "a", SecretKey: "s"}},
		api.CreateSiteRequest{ID: "kvm", Provider: "libvirt", URI: "qemu+ssh://lifeboat@kvm1/system", Pool: "default",
			Credentials: []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nAA==\n-----END OPENSSH PRIVATE KEY-----\n")},
		api.LaunchSettings{Provider: "image", CPUs: 1, MemoryMiB: 512, Network: api.LaunchNetwork{Mode: "isolated"}, BootMode: "kernel",
			KernelArgs: "root=/dev/vda", DiskFormat: "qcow2", ImageTarget: &api.ImageTarget{Dir: "/srv/images"}},
	}
	for i, s := range seeds {
		b, _ := json.Marshal(s)
		for j := range types {
			f.Add(uint8(i+j), b)
		}
	}
	f.Add(uint8(0), []byte(`{"kind":"api","role":"admin"} trailing`))
	f.Add(uint8(1), []byte(`{"volumes":[{"name":"a","path":"/a","sizeBytes":-1}]}`))
	f.Add(uint8(2), []byte(`{"pitPolicy":{"rules":[{"units":"DAY","interval":1,"retentionDuration":400}]}}`))
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		typ := types[int(which)%len(types)]
		v := reflect.New(typ).Interface()
		if err := DecodeRequest(body, v); err != nil {
			if _, ok := err.(*api.Error); !ok {
				t.Fatalf("%s: error is not an API error: %T %v", typ, err, err)
			}
			return
		}
		first, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%s: accepted value does not encode: %v", typ, err)
		}
		again := reflect.New(typ).Interface()
		if err := DecodeRequest(first, again); err != nil {
			t.Fatalf("%s: accepted %q but refused its own encoding %s: %v", typ, body, first, err)
		}
		second, _ := json.Marshal(again)
		if !bytes.Equal(first, second) {
			t.Fatalf("%s: round trip changed %s into %s", typ, first, second)
		}
	})
}
