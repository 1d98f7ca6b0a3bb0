-- Head leases (src/store/watch.rs): while a replica holds a live lease,
-- every append and delete waits until that replica has applied its notice
-- (or the lease expired, by this database's clock) before it is
-- acknowledged; so the replica may answer from the heads it knows without
-- a database round trip. `epoch` changes whenever the replica may have
-- missed a notice and forgot every head it knew.
CREATE TABLE head_leases (
    replica TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
