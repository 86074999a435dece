-- Lifeboat control-plane schema, version 7: consistency groups. A group's source
-- servers take their PITs at one common instant, a group point; a server is in at most
-- one group, of its own account.
CREATE TABLE consistency_groups (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  interval_seconds INTEGER NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (account_id, name)
);
CREATE TABLE consistency_group_members (
  group_id TEXT NOT NULL REFERENCES consistency_groups (id) ON DELETE CASCADE,
  source_server_id TEXT NOT NULL UNIQUE REFERENCES source_servers (id) ON DELETE CASCADE,
  PRIMARY KEY (group_id, source_server_id)
);
-- Group points: one attempt to take a PIT of every member at one instant. taken_at is
-- the group instant (ms), 0 until the members froze; state is PREPARING, FREEZING,
-- SEALING, COMPLETE or FAILED; members counts the members when the point began.
CREATE TABLE group_points (
  id TEXT PRIMARY KEY,
  group_id TEXT NOT NULL REFERENCES consistency_groups (id) ON DELETE CASCADE,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  taken_at BIGINT NOT NULL,
  state TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  members INTEGER NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX group_points_group ON group_points (group_id, created_at DESC, id);
-- A member's PIT taken for a group point names it.
ALTER TABLE recovery_snapshots ADD COLUMN group_point_id TEXT NOT NULL DEFAULT '';
CREATE INDEX recovery_snapshots_group_point ON recovery_snapshots (group_point_id);
