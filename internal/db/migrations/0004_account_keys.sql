-- Lifeboat control-plane schema, version 4: per-account keys and staging stores that
-- belong to one account (docs/store-format.md §2, README "Keys"). Portable SQL, as 0001.

-- Each account's key: 32 random bytes, wrapped by the control plane's master key
-- (AES-256-GCM, nonce ‖ ciphertext ‖ tag, in base64, the account id in the additional
-- data). It wraps the repository secret of each of the account's staging stores; a
-- replicator is given only its own account's. master_fingerprint names the master key
-- that wrapped it, for the message when another key file is given.
CREATE TABLE account_keys (
  account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
  wrapped TEXT NOT NULL,
  master_fingerprint TEXT NOT NULL,
  created_at BIGINT NOT NULL
);

-- Staging stores: a canonical store URL (backendurl's String form) belongs to exactly
-- one account, and only a system admin gives an account a store. credentials, when not
-- empty, are the store's S3 access and secret key (JSON), wrapped by the master key
-- (base64, the URL in the additional data): the control plane and the account's
-- replicators use them instead of their environment's.
CREATE TABLE staging_stores (
  url TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  credentials TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX staging_stores_account ON staging_stores (account_id, url);
