-- Lifeboat control-plane schema, version 12: a site carries its launch provider
-- (issue 18): qemu on the control plane's host (every site so far), libvirt at a URI
-- with a storage pool, or image. Credentials for the URI (TLS client certificate and
-- key, or an SSH key) are kept apart, sealed by the master key like plan secrets, so
-- that reading or listing sites never reads them.
ALTER TABLE sites ADD COLUMN provider TEXT NOT NULL DEFAULT 'qemu';
ALTER TABLE sites ADD COLUMN uri TEXT NOT NULL DEFAULT '';
ALTER TABLE sites ADD COLUMN pool TEXT NOT NULL DEFAULT '';
CREATE TABLE site_credentials (
  account_id TEXT NOT NULL,
  site_id TEXT NOT NULL,
  sealed TEXT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (account_id, site_id),
  FOREIGN KEY (account_id, site_id) REFERENCES sites (account_id, id) ON DELETE CASCADE
);
