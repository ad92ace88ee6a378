-- Two indexes of DATA.md that no query reads, each one more B-tree insert at
-- a random position for every stored message (the send path's main write):
--   * idx_messages_sender (sender_id) is the prefix of
--     idx_messages_sender_client (sender_id, client_msg_id), which serves any
--     lookup by sender;
--   * idx_messages_conv_created (conversation_id, created_at): history and
--     every read by conversation walk uk_messages_conv_seq (which also backs
--     fk_messages_conv), and seq order is time order within a conversation.
ALTER TABLE messages DROP INDEX idx_messages_sender, DROP INDEX idx_messages_conv_created;
