-- Jobs are owned through a lease: the replica running (or about to run) a
-- job keeps `lease_expires_ms` ahead of the clock with a heartbeat. A
-- replica starting up fails and re-creates only jobs whose lease expired
-- (their replica died), not the live jobs of other replicas.
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_ms BIGINT;
