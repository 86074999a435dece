-- Lifeboat control-plane schema, version 10: recovery plans (docs/plans.md). A plan
-- keeps every version applied; its runs (drills, failovers, failbacks) keep their
-- report as JSON; at most one run of a plan runs at a time.
CREATE TABLE plans (
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  schedule TEXT NOT NULL DEFAULT '',
  -- next_drill_at: when the next scheduled drill is due (ms; 0: none).
  next_drill_at BIGINT NOT NULL DEFAULT 0,
  servers INTEGER NOT NULL DEFAULT 0,
  created_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (account_id, name)
);
CREATE INDEX plans_next_drill ON plans (next_drill_at);
CREATE TABLE plan_versions (
  account_id TEXT NOT NULL,
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  source TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (account_id, name, version),
  FOREIGN KEY (account_id, name) REFERENCES plans (account_id, name) ON DELETE CASCADE
);
CREATE TABLE plan_runs (
  id TEXT PRIMARY KEY,
  account_id TEXT NOT NULL,
  plan_name TEXT NOT NULL,
  mode TEXT NOT NULL,
  state TEXT NOT NULL,
  started_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  data TEXT NOT NULL,
  FOREIGN KEY (account_id, plan_name) REFERENCES plans (account_id, name) ON DELETE CASCADE
);
CREATE INDEX plan_runs_plan ON plan_runs (account_id, plan_name, started_at DESC, id);
CREATE INDEX plan_runs_state ON plan_runs (state);
-- Two runs of one plan at once are refused by the database itself.
CREATE UNIQUE INDEX plan_runs_one_running ON plan_runs (account_id, plan_name) WHERE state = 'RUNNING';
-- Plan secrets (TSIG keys, webhook keys, CAs), sealed by the master key.
CREATE TABLE plan_secrets (
  account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  sealed TEXT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (account_id, name)
);
-- Who started a job, as a column: a plan run finds the jobs it started by it.
ALTER TABLE jobs ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_created_by ON jobs (account_id, created_by);
