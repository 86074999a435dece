-- Lifeboat control-plane schema, version 14: leases that let one control plane of
-- several sharing the database run what must run once (the coordinator: replicator
-- assignment, agent watch, consistency groups, plan runs and scheduled drills).
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    until_ms   BIGINT NOT NULL,
    renewed_ms BIGINT NOT NULL
);
