package recovery

import (
	"maps"
	"testing"

	"github.com/lifeboat-dr/lifeboat/internal/api"
)

func TestCopySourceTags(t *testing.T) {
	source := map[string]string{"tier": "web", "owner": "ops"}
	ls := api.LaunchSettings{CopyTags: true, Tags: map[string]string{"owner": "dr"}}
	copySourceTags(&ls, source)
	if want := map[string]string{"tier": "web", "owner": "dr"}; !maps.Equal(ls.Tags, want) {
		t.Fatalf("copyTags: %v, want %v (the settings' own tags win)", ls.Tags, want)
	}
	if source["owner"] != "ops" {
		t.Fatal("copying changed the source server's tags")
	}
	off := api.LaunchSettings{Tags: map[string]string{"a": "b"}}
	copySourceTags(&off, source)
	if !maps.Equal(off.Tags, map[string]string{"a": "b"}) {
		t.Fatalf("without copyTags: %v", off.Tags)
	}
}
