-- GoChat relational schema, MariaDB flavour (distributed mode; MariaDB 10.6+
-- for JSON_TABLE, 10.11 LTS is what runs in dev and CI). See docs/DATA.md;
-- mirrors migrations/sqlite/0001_init.sql.
--
-- Semantics kept identical to SQLite:
--   * every table uses utf8mb4_nopad_bin, so usernames, ids, pair keys and
--     client_msg_ids compare byte-for-byte like SQLite's BINARY collation.
--     Not utf8mb4_bin: that one is PAD SPACE, under which 'alice' = 'alice '
--     (a unique key would reject the second name, a lookup would return the
--     wrong user). MySQL 8 has no _nopad_bin; its equivalent is
--     utf8mb4_0900_bin. Case-insensitive search lowers both sides explicitly;
--   * times are DATETIME(3) in UTC (SQLite: INTEGER ms); the store converts
--     with epoch arithmetic, independent of the session time zone;
--   * member and read-pointer ids are assigned by the database;
--     users, conversations, messages and friendship requests carry caller
--     ids (snowflakes; -id for the mirror row written when a request is
--     accepted);
--   * messages.content is MEDIUMTEXT: TEXT stops at 64 KiB, below what
--     chat.max_content_bytes may be configured to (SQLite has no limit).
-- The store never uses INSERT IGNORE: it would also turn foreign-key and
-- data errors into warnings (a message for an unknown conversation silently
-- dropped, an over-long value silently truncated).
-- The world room is not created here: the repo service ensures it at start.

CREATE TABLE users (
    id            BIGINT       NOT NULL,
    username      VARCHAR(50)  NOT NULL,
    password_hash VARCHAR(255) NOT NULL DEFAULT '',
    avatar_url    VARCHAR(255) NULL,
    is_guest      BOOLEAN      NOT NULL DEFAULT FALSE,
    status        INT          NOT NULL DEFAULT 0,
    created_at    DATETIME(3)  NOT NULL,
    updated_at    DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_users_username (username),
    KEY idx_users_status (status),
    KEY idx_users_is_guest (is_guest)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE TABLE conversations (
    id              VARCHAR(64)  NOT NULL,
    type            INT          NOT NULL,
    name            VARCHAR(100) NULL,
    avatar_url      VARCHAR(255) NULL,
    description     VARCHAR(1000) NULL,
    owner_id        BIGINT       NULL,
    member_count    INT          NOT NULL DEFAULT 0,
    settings        TEXT         NULL,
    last_message_id BIGINT       NULL,
    last_seq_id     BIGINT       NOT NULL DEFAULT 0,
    pair_key        VARCHAR(64)  NULL,
    created_at      DATETIME(3)  NOT NULL,
    updated_at      DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_conversations_pair_key (pair_key),
    KEY idx_conversations_type (type),
    KEY idx_conversations_owner (owner_id),
    KEY idx_conversations_updated (updated_at),
    KEY idx_conversations_type_updated (type, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE TABLE conversation_members (
    id              BIGINT      NOT NULL AUTO_INCREMENT,
    conversation_id VARCHAR(64) NOT NULL,
    user_id         BIGINT      NOT NULL,
    role            INT         NOT NULL DEFAULT 1,
    muted           BOOLEAN     NOT NULL DEFAULT FALSE,
    joined_at       DATETIME(3) NOT NULL,
    updated_at      DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_members_user_conv (user_id, conversation_id),
    -- (conversation_id) widened with user_id for keyset fan-out paging.
    KEY idx_members_conv (conversation_id, user_id),
    KEY idx_members_user_updated (user_id, updated_at),
    KEY idx_members_conv_role (conversation_id, role),
    CONSTRAINT fk_members_conv FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE,
    CONSTRAINT fk_members_user FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE TABLE messages (
    id              BIGINT      NOT NULL,
    conversation_id VARCHAR(64) NOT NULL,
    sender_id       BIGINT      NOT NULL,
    message_type    INT         NOT NULL,
    content         MEDIUMTEXT  NOT NULL,
    seq_id          BIGINT      NOT NULL,
    client_msg_id   VARCHAR(64) NULL,
    deleted         BOOLEAN     NOT NULL DEFAULT FALSE,
    extra           TEXT        NULL,
    created_at      DATETIME(3) NOT NULL,
    updated_at      DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_messages_conv_seq (conversation_id, seq_id),
    KEY idx_messages_sender (sender_id),
    KEY idx_messages_conv_created (conversation_id, created_at),
    KEY idx_messages_sender_client (sender_id, client_msg_id),
    CONSTRAINT fk_messages_conv FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE TABLE user_read_pointers (
    id               BIGINT      NOT NULL AUTO_INCREMENT,
    user_id          BIGINT      NOT NULL,
    conversation_id  VARCHAR(64) NOT NULL,
    last_read_seq_id BIGINT      NOT NULL DEFAULT 0,
    updated_at       DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_read_pointers_user_conv (user_id, conversation_id),
    KEY idx_read_pointers_conv (conversation_id),
    CONSTRAINT fk_read_pointers_user FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT fk_read_pointers_conv FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE TABLE friendship_requests (
    id                BIGINT       NOT NULL,
    requester_id      BIGINT       NOT NULL,
    target_id         BIGINT       NOT NULL,
    status            INT          NOT NULL DEFAULT 0,
    requester_remarks VARCHAR(255) NULL,
    target_remarks    VARCHAR(255) NULL,
    message           VARCHAR(255) NULL,
    created_at        DATETIME(3)  NOT NULL,
    updated_at        DATETIME(3)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_friendship_pair (requester_id, target_id),
    KEY idx_friendship_target_status (target_id, status),
    KEY idx_friendship_requester_status (requester_id, status),
    CONSTRAINT fk_friendship_requester FOREIGN KEY (requester_id)
        REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT fk_friendship_target FOREIGN KEY (target_id)
        REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
