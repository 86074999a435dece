-- What an operator asked of a source server's replication (docs/architecture.md §5; lifeboat
-- replication start|stop|pause|resume|retry and lifeboat snapshots create), read by its
-- agent with its replication config. generation grows with every start and retry: the
-- agent restarts its session and rescans when it changes.
ALTER TABLE source_servers ADD COLUMN replication_desired TEXT NOT NULL DEFAULT 'replicating';
ALTER TABLE source_servers ADD COLUMN replication_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE source_servers ADD COLUMN snapshot_request_id TEXT NOT NULL DEFAULT '';
ALTER TABLE source_servers ADD COLUMN snapshot_requested_at BIGINT;
