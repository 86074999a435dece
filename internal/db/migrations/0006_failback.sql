-- Lifeboat control-plane schema, version 6: failback (docs/failback.md). A reversed
-- source server replicates a recovery instance back to its origin: it names that
-- recovery instance, the origin's source server, and the PIT its replica started as.
-- A recovery instance records its failback state and its reversed source server.
ALTER TABLE source_servers ADD COLUMN reversed_from TEXT NOT NULL DEFAULT '';
ALTER TABLE source_servers ADD COLUMN origin_source_server_id TEXT NOT NULL DEFAULT '';
ALTER TABLE source_servers ADD COLUMN seed_snapshot_id TEXT NOT NULL DEFAULT '';
ALTER TABLE recovery_instances ADD COLUMN failback_state TEXT NOT NULL DEFAULT 'FAILBACK_NOT_STARTED';
ALTER TABLE recovery_instances ADD COLUMN reversed_source_server_id TEXT NOT NULL DEFAULT '';
-- After a failback, the origin's replica is rebased onto the PIT written onto its
-- machine: its replicator replaces the heads by that PIT's volumes once.
ALTER TABLE source_servers ADD COLUMN rebase_snapshot_id TEXT NOT NULL DEFAULT '';

-- Machines booted from the rescue media (lifeboat failback-client), registered with a
-- failback install token; a failback job assigns one of their disks a PIT to write.
CREATE TABLE failback_clients (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  hostname TEXT NOT NULL,
  disks TEXT NOT NULL,
  secret_hash TEXT NOT NULL,
  assignment TEXT NOT NULL DEFAULT '',
  progress TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  last_seen_at BIGINT NOT NULL
);
CREATE INDEX failback_clients_account ON failback_clients (account_id, created_at DESC);
