package recovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/api"
	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
)

// StoreAccess is what opens one staging store: its canonical URL, the key of the account
// it belongs to, and its own S3 credentials when it has some (else the environment's).
type StoreAccess struct {
	URL                  string
	Key                  store.MasterKey
	AccessKey, SecretKey string
}

// AccessFunc returns the access to the staging store at url for an account, or an
// error when the store is not that account's. The control plane's checks that the
// account owns the store, and prepares its repository (README "Keys and staging stores").
type AccessFunc func(ctx context.Context, accountID, url string) (StoreAccess, error)

// Stores opens staging stores, each with the key of the account it belongs to, and keeps
// them open: the control plane reads PITs from the stores its replicators write.
type Stores struct {
	access   AccessFunc
	indexDir string // the stores' chunk indexes (store.Options.IndexDir); "": in RAM
	log      *slog.Logger
	mu       sync.Mutex
	open     map[string]*store.Repo // by canonical URL
	opening  map[string]*sync.Mutex
}

// NewStores returns a cache of stores opened with the keys access gives, their chunk
// indexes kept on disk in indexDir (docs/store-format.md §12; "": in RAM).
func NewStores(access AccessFunc, indexDir string, log *slog.Logger) *Stores {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Stores{access: access, indexDir: indexDir, log: log, open: map[string]*store.Repo{}, opening: map[string]*sync.Mutex{}}
}

// Open returns the repository at url for an account, opening it on first use. Every
// call checks that the store is the account's, also when it is open already.
func (s *Stores) Open(ctx context.Context, accountID, url string) (*store.Repo, error) {
	a, err := s.access(ctx, accountID, url)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if r, ok := s.open[a.URL]; ok {
		s.mu.Unlock()
		return r, nil
	}
	m, ok := s.opening[a.URL]
	if !ok {
		m = &sync.Mutex{}
		s.opening[a.URL] = m
	}
	s.mu.Unlock()
	m.Lock() // one opening per store: loading the index is the slow part
	defer m.Unlock()
	s.mu.Lock()
	r, ok := s.open[a.URL]
	s.mu.Unlock()
	if ok {
		return r, nil
	}
	be, err := backendurl.Open(ctx, a.URL, backendurl.WithCredentials(a.AccessKey, a.SecretKey), backendurl.WithLogger(s.log))
	if err != nil {
		return nil, err
	}
	start := time.Now()
	r, err = store.Open(ctx, be, a.Key, store.Options{IndexDir: s.indexDir, Logger: s.log})
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("open the staging store %s: %w", a.URL, err)
	}
	s.log.Info("staging store opened for recovery", "store", a.URL, "account", accountID, "took", time.Since(start).Round(time.Millisecond))
	s.mu.Lock()
	s.open[a.URL] = r
	s.mu.Unlock()
	return r, nil
}

// PITs opens the staging store at url of an account for reading PITs (Staging).
func (s *Stores) PITs(ctx context.Context, accountID, url string) (PITReader, error) {
	r, err := s.Open(ctx, accountID, url)
	if err != nil {
		return nil, err
	}
	return repoPITs{r}, nil
}

// repoPITs reads PITs from a repository with LoadPIT.
type repoPITs struct{ repo *store.Repo }

func (r repoPITs) LoadPIT(ctx context.Context, snap api.RecoverySnapshot) (store.PIT, error) {
	return LoadPIT(ctx, r.repo, snap)
}

// Close closes every store opened.
func (s *Stores) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for url, r := range s.open {
		r.Close()
		r.Backend().Close()
		delete(s.open, url)
	}
}

// LoadPIT reads a recorded PIT from its staging store. When the record has the digest
// its manifest had when it was sealed, another manifest under its name (put back or
// rewritten) is refused with store.ErrRollback (docs/security.md).
func LoadPIT(ctx context.Context, repo *store.Repo, snap api.RecoverySnapshot) (store.PIT, error) {
	if snap.ManifestDigest == "" {
		return repo.LoadPIT(ctx, snap.SourceServerID, snap.ID)
	}
	pit, err := repo.LoadPITExpect(ctx, snap.SourceServerID, snap.ID, snap.ManifestDigest)
	if errors.Is(err, store.ErrRollback) {
		return pit, api.Errorf(http.StatusConflict, api.CodeConflict,
			"the staging store's manifest of PIT %s is not the one recorded when it was sealed (rewritten, or an old one put back): it is not used; run lifeboat store verify and see docs/security.md (%v)",
			snap.ID, err)
	}
	return pit, err
}
