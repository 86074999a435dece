-- Install tokens that may re-register what is registered already (a machine id, a
-- replicator name), taking over its identity: made only by admins, for one reinstall
-- (docs/security.md).
ALTER TABLE tokens ADD COLUMN allow_replace INTEGER NOT NULL DEFAULT 0;
