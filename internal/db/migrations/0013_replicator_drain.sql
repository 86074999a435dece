-- Lifeboat control-plane schema, version 13: a replicator can be drained for
-- maintenance (lifeboat replicators drain NAME): it takes no servers and its servers
-- move to the other live replicators of its site.
ALTER TABLE replicators ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
