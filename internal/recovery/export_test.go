package recovery

import (
	"context"

	"github.com/lifeboat-dr/lifeboat/internal/nbd"
	"github.com/lifeboat-dr/lifeboat/internal/store"
)

// PITExport is an instant launch's export of a PIT's volume, for tests, and the last
// store error its reads waited on.
func PITExport(ctx context.Context, repo *store.Repo, pit store.PIT, volume string) (nbd.Export, func() string, error) {
	v, err := repo.OpenVolume(ctx, pit, volume)
	if err != nil {
		return nil, nil, err
	}
	s := &servedExports{}
	e := pitExport{v: v, blockSize: repo.BlockSize(), stalled: &s.stalled}
	return e, func() string { x, _ := s.stalled.Load().(string); return x }, nil
}
