package backendurl

import (
	"context"
	"fmt"

	"github.com/lifeboat-dr/lifeboat/internal/store/backend"
	"github.com/lifeboat-dr/lifeboat/internal/store/backend/s3"
)

// OpenWith opens rawURL as Open does, but an s3:// store with the access and secret key
// given rather than the environment's; with both empty it is Open. The control plane
// keeps per-store credentials and hands them to the replicators of the store's account
// with the store's key.
func OpenWith(ctx context.Context, rawURL, accessKey, secretKey string) (backend.Backend, error) {
	if accessKey == "" && secretKey == "" {
		return Open(ctx, rawURL)
	}
	t, err := Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if t.Scheme != "s3" || accessKey == "" || secretKey == "" {
		return nil, fmt.Errorf("staging store %s: credentials are an access key and a secret key, for s3:// stores only", t)
	}
	cfg := t.S3
	cfg.AccessKey, cfg.SecretKey = accessKey, secretKey
	b, err := s3.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return b, nil
}
