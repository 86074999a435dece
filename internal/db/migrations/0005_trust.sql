-- Install tokens that may re-register what is registered already (a machine id, a
-- replicator name), taking over its identity: made only by admins, for one reinstall
-- (docs/security.md).
ALTER TABLE tokens ADD COLUMN allow_replace INTEGER NOT NULL DEFAULT 0;

-- What the staging store said of a recovery snapshot when it was sealed: the digest of
-- its manifest (readers refuse another one) and the id of the repository it is in (the
-- head versions its volumes record are a floor for that repository's heads).
ALTER TABLE recovery_snapshots ADD COLUMN manifest_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE recovery_snapshots ADD COLUMN staging_store_id TEXT NOT NULL DEFAULT '';
