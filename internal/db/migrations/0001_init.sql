-- Lifeboat control-plane schema, version 1.
-- Portable SQL: SQLite and PostgreSQL run this file as is. Times are BIGINT unix
-- milliseconds (UTC); ids are TEXT; JSON documents are TEXT; booleans are INTEGER 0/1.

CREATE TABLE accounts (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  is_system INTEGER NOT NULL DEFAULT 0,
  quota_source_servers BIGINT NOT NULL,
  replication_template TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);

CREATE TABLE sites (
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  id TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  PRIMARY KEY (account_id, id)
);

-- API tokens (kind api, with a role) and install tokens (kind install, with a scope).
-- Only a hash of the secret is stored.
CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  kind TEXT NOT NULL,
  role TEXT NOT NULL DEFAULT '',
  scope TEXT NOT NULL DEFAULT '',
  secret_hash TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  created_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT,
  uses_left BIGINT,
  uses BIGINT NOT NULL DEFAULT 0,
  revoked_at BIGINT
);
CREATE INDEX tokens_account ON tokens (account_id, created_at);

CREATE TABLE replicators (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  site_id TEXT NOT NULL,
  address TEXT NOT NULL,
  version TEXT NOT NULL DEFAULT '',
  cert_serial TEXT NOT NULL,
  prev_cert_serial TEXT NOT NULL DEFAULT '',
  cert_not_after BIGINT NOT NULL,
  cpu_percent DOUBLE PRECISION NOT NULL DEFAULT 0,
  rss_bytes BIGINT NOT NULL DEFAULT 0,
  volumes_served BIGINT NOT NULL DEFAULT 0,
  last_heartbeat_at BIGINT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (account_id, name),
  FOREIGN KEY (account_id, site_id) REFERENCES sites (account_id, id)
);

-- site_id and dedicated_replicator are the effective values (template + overrides),
-- kept here so assignment can be computed in SQL. replication is the JSON
-- ReplicationState; data_replication_state and ready_for_recovery mirror it for
-- filtering. list_key orders lists, ready for recovery first: '0' or '1' then the id,
-- so a page is an index range scan from the previous page's last key. summary is the row's JSON list item (api.SourceServer without
-- volumes and initiation steps), rendered on every change so that listing thousands of
-- servers costs no decoding.
CREATE TABLE source_servers (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  machine_id TEXT NOT NULL,
  hostname TEXT NOT NULL,
  os TEXT NOT NULL DEFAULT '',
  arch TEXT NOT NULL DEFAULT '',
  agent_version TEXT NOT NULL DEFAULT '',
  cpus BIGINT NOT NULL DEFAULT 0,
  memory_bytes BIGINT NOT NULL DEFAULT 0,
  volumes TEXT NOT NULL DEFAULT '[]',
  settings_overrides TEXT NOT NULL DEFAULT '{}',
  site_id TEXT NOT NULL,
  dedicated_replicator TEXT NOT NULL DEFAULT '',
  replicator_id TEXT REFERENCES replicators (id) ON DELETE SET NULL,
  data_replication_state TEXT NOT NULL,
  ready_for_recovery INTEGER NOT NULL DEFAULT 0,
  list_key TEXT NOT NULL,
  replication TEXT NOT NULL,
  cert_serial TEXT NOT NULL,
  prev_cert_serial TEXT NOT NULL DEFAULT '',
  cert_not_after BIGINT NOT NULL,
  last_seen_at BIGINT,
  summary TEXT NOT NULL DEFAULT '',
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (account_id, machine_id),
  FOREIGN KEY (account_id, site_id) REFERENCES sites (account_id, id)
);
CREATE INDEX source_servers_list ON source_servers (account_id, list_key);
CREATE INDEX source_servers_replicator ON source_servers (replicator_id);

-- Recovery snapshots (PITs) sealed by replicators.
CREATE TABLE recovery_snapshots (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  source_server_id TEXT NOT NULL REFERENCES source_servers (id) ON DELETE CASCADE,
  replicator_id TEXT NOT NULL DEFAULT '',
  taken_at BIGINT NOT NULL,
  level TEXT NOT NULL,
  volumes TEXT NOT NULL,
  size_bytes BIGINT NOT NULL DEFAULT 0,
  lock_until BIGINT,
  created_at BIGINT NOT NULL
);
CREATE INDEX recovery_snapshots_server ON recovery_snapshots (source_server_id, taken_at DESC, id);

-- Launch settings of a source server (JSON LaunchSettings).
CREATE TABLE launch_settings (
  source_server_id TEXT PRIMARY KEY REFERENCES source_servers (id) ON DELETE CASCADE,
  settings TEXT NOT NULL,
  updated_at BIGINT NOT NULL
);

-- Jobs: drill, recovery, failback launch, terminate. Rows outlive the servers they name.
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  type TEXT NOT NULL,
  status TEXT NOT NULL,
  initiated_by TEXT NOT NULL,
  is_drill INTEGER NOT NULL DEFAULT 0,
  params TEXT NOT NULL DEFAULT '{}',
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  ended_at BIGINT
);
CREATE INDEX jobs_account ON jobs (account_id, created_at DESC, id);

-- Launch status per server of a job: PENDING, IN_PROGRESS, LAUNCHED, FAILED, TERMINATED.
CREATE TABLE job_servers (
  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  source_server_id TEXT NOT NULL,
  snapshot_id TEXT NOT NULL DEFAULT '',
  launch_status TEXT NOT NULL,
  recovery_instance_id TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (job_id, source_server_id)
);

-- The log of a job: SNAPSHOT_START, CONVERSION_START, LAUNCH_START, LAUNCH_END, …
CREATE TABLE job_events (
  id TEXT PRIMARY KEY,
  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  source_server_id TEXT NOT NULL DEFAULT '',
  type TEXT NOT NULL,
  at BIGINT NOT NULL,
  message TEXT NOT NULL DEFAULT '',
  detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX job_events_job ON job_events (job_id, at, id);

-- Machines launched from a PIT (drill or recovery).
CREATE TABLE recovery_instances (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  source_server_id TEXT NOT NULL,
  job_id TEXT NOT NULL DEFAULT '',
  snapshot_id TEXT NOT NULL DEFAULT '',
  site_id TEXT NOT NULL DEFAULT '',
  provider TEXT NOT NULL,
  provider_handle TEXT NOT NULL DEFAULT '{}',
  launch_settings TEXT NOT NULL DEFAULT '{}',
  is_drill INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL,
  termination_protection INTEGER NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  terminated_at BIGINT
);
CREATE INDEX recovery_instances_server ON recovery_instances (source_server_id);
CREATE INDEX recovery_instances_account ON recovery_instances (account_id, created_at DESC, id);

-- Existing machines Lifeboat may launch into (tags decide, as DRS's
-- AWSDRS=AllowLaunchingIntoThisInstance).
CREATE TABLE instances (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  site_id TEXT NOT NULL,
  name TEXT NOT NULL,
  provider TEXT NOT NULL DEFAULT '',
  disks TEXT NOT NULL DEFAULT '[]',
  tags TEXT NOT NULL DEFAULT '{}',
  state TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  UNIQUE (account_id, name),
  FOREIGN KEY (account_id, site_id) REFERENCES sites (account_id, id)
);

-- Every change: who, what, when, on which target. Ids sort by time.
CREATE TABLE audit_log (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL,
  at BIGINT NOT NULL,
  actor_kind TEXT NOT NULL,
  actor_id TEXT NOT NULL,
  action TEXT NOT NULL,
  target_kind TEXT NOT NULL,
  target_id TEXT NOT NULL,
  detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_account ON audit_log (account_id, id);
CREATE INDEX audit_log_target ON audit_log (account_id, target_id, id);
