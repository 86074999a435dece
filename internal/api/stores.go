package api

import "fmt"

// StagingStore is one of an account's staging stores. A store URL belongs to exactly
// one account; only a system admin gives an account a store (lifeboat accounts create
// or update --staging-store), and an account's replication settings may name only its
// own stores.
type StagingStore struct {
	URL string `json:"url"` // canonical form
	// HasCredentials: the store has S3 credentials of its own (never shown), used
	// instead of those in the environment of the control plane and the replicators.
	HasCredentials bool `json:"hasCredentials"`
}

// S3Credentials are the access and secret key of an S3 staging store. The control
// plane keeps them wrapped by its master key and hands them only to the replicators of
// the store's account, with the store's key.
type S3Credentials struct {
	AccessKey string `json:"accessKey"`
	SecretKey string `json:"secretKey"`
}

// Validate checks both keys are given and plausible.
func (c S3Credentials) Validate() error {
	for name, v := range map[string]string{"accessKey": c.AccessKey, "secretKey": c.SecretKey} {
		if v == "" || len(v) > 256 || !printableRE.MatchString(v) {
			return Invalid("stagingStoreCredentials.%s must be 1-256 printable characters", name)
		}
	}
	return nil
}

// StagingStoreKeyRequest is a replicator asking for the key of a staging store it is to
// write (the store of a server assigned to it).
type StagingStoreKeyRequest struct {
	StagingStoreURL string `json:"stagingStoreUrl"`
}

// Validate checks the URL's form; the control plane checks it belongs to the caller's account.
func (r StagingStoreKeyRequest) Validate() error { return ValidateStoreURL(r.StagingStoreURL) }

// StagingStoreKeyResponse carries the key of the store's account: it opens every
// repository of that account and no other. The replicator keeps it in memory only.
type StagingStoreKeyResponse struct {
	StagingStoreURL string         `json:"stagingStoreUrl"` // canonical form
	AccountID       string         `json:"accountId"`
	Key             []byte         `json:"key"` // 32 bytes (base64 in JSON)
	KeyFingerprint  string         `json:"keyFingerprint"`
	Credentials     *S3Credentials `json:"credentials,omitempty"`
}

// Key32 returns the key as 32 bytes, or an error when the answer holds something else.
func (r StagingStoreKeyResponse) Key32() ([32]byte, error) {
	var k [32]byte
	if len(r.Key) != len(k) {
		return k, fmt.Errorf("the control plane sent a key of %d bytes for staging store %s, not 32", len(r.Key), r.StagingStoreURL)
	}
	copy(k[:], r.Key)
	return k, nil
}
