-- Lifeboat control-plane schema, version 2: what recovery needs (jobs that survive a
-- restart, recovery instances with their PIT and address, instances to launch into).
-- Portable SQL, as 0001.

-- A job is claimed by one control plane (runner_id, a stable id of its data directory)
-- for a lease it renews; another replica takes a job over only after the lease ended.
ALTER TABLE jobs ADD COLUMN runner_id TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;
CREATE INDEX jobs_status ON jobs (status, created_at);

-- One row per recovery instance of a job: a terminate job may name a drill and a
-- recovery of the same source server, so the recovery instance is part of the key.
-- step is the step running (or the one that failed); progress is JSON JobProgress.
CREATE TABLE job_servers_v2 (
  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  source_server_id TEXT NOT NULL,
  recovery_instance_id TEXT NOT NULL,
  snapshot_id TEXT NOT NULL DEFAULT '',
  launch_status TEXT NOT NULL,
  step TEXT NOT NULL DEFAULT '',
  progress TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (job_id, recovery_instance_id)
);
INSERT INTO job_servers_v2 (job_id, source_server_id, recovery_instance_id, snapshot_id, launch_status, error, updated_at)
  SELECT job_id, source_server_id, recovery_instance_id, snapshot_id, launch_status, error, updated_at FROM job_servers;
DROP TABLE job_servers;
ALTER TABLE job_servers_v2 RENAME TO job_servers;
CREATE INDEX job_servers_server ON job_servers (source_server_id, launch_status);

-- The PIT's time (its age at launch is the RPO), where to reach the instance, the
-- forwards as launched, the host that runs it, and the instance launched into.
ALTER TABLE recovery_instances ADD COLUMN snapshot_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE recovery_instances ADD COLUMN address TEXT NOT NULL DEFAULT '';
ALTER TABLE recovery_instances ADD COLUMN port_forwards TEXT NOT NULL DEFAULT '[]';
ALTER TABLE recovery_instances ADD COLUMN runner_id TEXT NOT NULL DEFAULT '';
ALTER TABLE recovery_instances ADD COLUMN instance_id TEXT NOT NULL DEFAULT '';

-- Instances: how they boot, the host their VM runs on, the recovery launched into them.
ALTER TABLE instances ADD COLUMN boot_mode TEXT NOT NULL DEFAULT 'bios';
ALTER TABLE instances ADD COLUMN runner_id TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN recovery_instance_id TEXT NOT NULL DEFAULT '';
