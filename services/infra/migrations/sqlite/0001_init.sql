-- GoChat relational schema, SQLite flavour (embedded mode). See docs/DATA.md.
--
-- Mirrors migrations/mysql/0001_init.sql column for column and index for
-- index; the differences are only the type spellings SQLite needs:
--   * times are INTEGER Unix milliseconds (MySQL: DATETIME(3));
--   * booleans are INTEGER 0/1 (MySQL: BOOLEAN = TINYINT(1));
--   * ids are INTEGER (64-bit), an `INTEGER PRIMARY KEY` is the rowid;
--   * VARCHAR lengths are not enforced by SQLite, the store checks the ones
--     that user input can reach (username, conversation id, client_msg_id).
-- The world room is not created here: the repo service ensures it at start.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY NOT NULL,           -- snowflake
    username      TEXT    NOT NULL,                       -- VARCHAR(50), case-sensitive
    password_hash TEXT    NOT NULL DEFAULT '',            -- PHC string, '' for guests
    avatar_url    TEXT    NULL,
    is_guest      INTEGER NOT NULL DEFAULT 0,
    status        INTEGER NOT NULL DEFAULT 0,             -- 0 normal, 1 disabled
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX uk_users_username ON users (username);
CREATE INDEX idx_users_status ON users (status);
CREATE INDEX idx_users_is_guest ON users (is_guest);

CREATE TABLE conversations (
    id              TEXT    PRIMARY KEY NOT NULL,         -- VARCHAR(64), 'world' for the world room
    type            INTEGER NOT NULL,                     -- 1 single, 2 group, 3 world
    name            TEXT    NULL,
    avatar_url      TEXT    NULL,
    description     TEXT    NULL,
    owner_id        INTEGER NULL,
    member_count    INTEGER NOT NULL DEFAULT 0,           -- kept in step with conversation_members
    settings        TEXT    NULL,                         -- JSON
    last_message_id INTEGER NULL,
    last_seq_id     INTEGER NOT NULL DEFAULT 0,           -- highest stored seq
    pair_key        TEXT    NULL,                         -- 's:{minId}:{maxId}' for single chats
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL                      -- moves on every new message
);
-- NULLs never collide, so only single chats are constrained.
CREATE UNIQUE INDEX uk_conversations_pair_key ON conversations (pair_key);
CREATE INDEX idx_conversations_type ON conversations (type);
CREATE INDEX idx_conversations_owner ON conversations (owner_id);
CREATE INDEX idx_conversations_updated ON conversations (updated_at);
CREATE INDEX idx_conversations_type_updated ON conversations (type, updated_at);

CREATE TABLE conversation_members (
    id              INTEGER PRIMARY KEY NOT NULL,         -- assigned by the database
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            INTEGER NOT NULL DEFAULT 1,           -- 1 member, 2 admin, 3 owner
    muted           INTEGER NOT NULL DEFAULT 0,
    joined_at       INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX uk_members_user_conv ON conversation_members (user_id, conversation_id);
-- (conversation_id) of DATA.md, widened with user_id so the keyset paging of
-- fan-out (`user_id > ? ORDER BY user_id`) reads the index in order instead
-- of sorting the whole membership of the world room on every page.
CREATE INDEX idx_members_conv ON conversation_members (conversation_id, user_id);
CREATE INDEX idx_members_user_updated ON conversation_members (user_id, updated_at);
CREATE INDEX idx_members_conv_role ON conversation_members (conversation_id, role);

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY NOT NULL,         -- snowflake
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       INTEGER NOT NULL,                     -- no FK: system messages may use 0
    message_type    INTEGER NOT NULL,                     -- 1 text, 2 image, 3 file, 4 system
    content         TEXT    NOT NULL,
    seq_id          INTEGER NOT NULL,
    client_msg_id   TEXT    NULL,                         -- VARCHAR(64)
    deleted         INTEGER NOT NULL DEFAULT 0,
    extra           TEXT    NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
-- Makes persistence idempotent: a redelivered batch inserts nothing.
CREATE UNIQUE INDEX uk_messages_conv_seq ON messages (conversation_id, seq_id);
CREATE INDEX idx_messages_sender ON messages (sender_id);
CREATE INDEX idx_messages_conv_created ON messages (conversation_id, created_at);
CREATE INDEX idx_messages_sender_client ON messages (sender_id, client_msg_id);

CREATE TABLE user_read_pointers (
    id               INTEGER PRIMARY KEY NOT NULL,        -- assigned by the database
    user_id          INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    conversation_id  TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    last_read_seq_id INTEGER NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX uk_read_pointers_user_conv ON user_read_pointers (user_id, conversation_id);
-- Backs the foreign key (deleting a conversation must not scan the table).
CREATE INDEX idx_read_pointers_conv ON user_read_pointers (conversation_id);

CREATE TABLE friendship_requests (
    id                INTEGER PRIMARY KEY NOT NULL,       -- snowflake; -id for the mirror row of an accept
    requester_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    target_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status            INTEGER NOT NULL DEFAULT 0,         -- 0 pending, 1 accepted, 2 rejected, 3 blocked
    requester_remarks TEXT    NULL,
    target_remarks    TEXT    NULL,
    message           TEXT    NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX uk_friendship_pair ON friendship_requests (requester_id, target_id);
CREATE INDEX idx_friendship_target_status ON friendship_requests (target_id, status);
CREATE INDEX idx_friendship_requester_status ON friendship_requests (requester_id, status);
