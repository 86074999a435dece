-- Lifeboat control-plane schema, version 8: PITs listed by level, and the RPO of each
-- server a drill or recovery launches (docs/recovery.md, "RPO").
-- A server takes up to 86,400 PITs a day; a rare level among them (none, when freezes
-- fail) is listed from this index without reading the others.
CREATE INDEX recovery_snapshots_level ON recovery_snapshots (source_server_id, level, taken_at DESC, id);
-- The time of the PIT a server launches from, and its RPO: its age relative to the
-- newest data the replica held of the server when the job was created (ms; NULL for
-- jobs that launch no PIT, and for jobs made before this version).
ALTER TABLE job_servers ADD COLUMN snapshot_time BIGINT;
ALTER TABLE job_servers ADD COLUMN rpo_ms BIGINT;
