-- Lifeboat control-plane schema, version 11: what a replicator's heartbeat reports
-- beside CPU and memory, for the control plane's metrics (docs/metrics.md): the agents'
-- sessions it has open, and how fast it writes their blocks into the staging store.
ALTER TABLE replicators ADD COLUMN sessions BIGINT NOT NULL DEFAULT 0;
ALTER TABLE replicators ADD COLUMN ingest_bytes_per_second BIGINT NOT NULL DEFAULT 0;
