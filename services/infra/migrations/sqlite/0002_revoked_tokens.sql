-- Revoked token ids (logout, refresh rotation). The KV store answers the
-- hot-path question; this table makes revocations survive a restart of the
-- embedded mode, whose KV store lives in memory.
CREATE TABLE revoked_tokens (
    jti        TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX idx_revoked_tokens_expires_at ON revoked_tokens (expires_at);
