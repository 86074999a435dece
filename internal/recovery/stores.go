package recovery

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/lifeboat-dr/lifeboat/internal/store"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/backendurl"
)

// Stores opens staging stores by URL with one master key and keeps them open: the
// control plane reads PITs from the stores its replicators write.
type Stores struct {
	keyFile string
	log     *slog.Logger
	mu      sync.Mutex
	open    map[string]*store.Repo
	opening map[string]*sync.Mutex
}

// NewStores returns a cache of stores opened with the master key in keyFile.
func NewStores(keyFile string, log *slog.Logger) *Stores {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Stores{keyFile: keyFile, log: log, open: map[string]*store.Repo{}, opening: map[string]*sync.Mutex{}}
}

// Open returns the repository at url, opening it on first use.
func (s *Stores) Open(ctx context.Context, url string) (*store.Repo, error) {
	s.mu.Lock()
	if r, ok := s.open[url]; ok {
		s.mu.Unlock()
		return r, nil
	}
	m, ok := s.opening[url]
	if !ok {
		m = &sync.Mutex{}
		s.opening[url] = m
	}
	s.mu.Unlock()
	m.Lock() // one opening per store: loading the index is the slow part
	defer m.Unlock()
	s.mu.Lock()
	r, ok := s.open[url]
	s.mu.Unlock()
	if ok {
		return r, nil
	}
	mk, err := store.LoadMasterKey(s.keyFile)
	if err != nil {
		return nil, fmt.Errorf("the control plane reads PITs with the staging store's master key: %w (give it with lifeboat server --store-key)", err)
	}
	be, err := backendurl.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	r, err = store.Open(ctx, be, mk, store.Options{Logger: s.log})
	if err != nil {
		be.Close()
		return nil, fmt.Errorf("open the staging store %s: %w", url, err)
	}
	s.log.Info("staging store opened for recovery", "store", url, "took", time.Since(start).Round(time.Millisecond))
	s.mu.Lock()
	s.open[url] = r
	s.mu.Unlock()
	return r, nil
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
