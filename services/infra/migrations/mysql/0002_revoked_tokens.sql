-- Revoked token ids (logout, refresh rotation); see the SQLite migration.
CREATE TABLE revoked_tokens (
    jti        VARCHAR(64) NOT NULL PRIMARY KEY,
    expires_at DATETIME(3) NOT NULL,
    INDEX idx_revoked_tokens_expires_at (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
