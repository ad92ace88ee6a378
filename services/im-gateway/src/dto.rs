//! The client-facing JSON shapes of API.md, built from the protobuf domain
//! types: ids as strings, times as Unix seconds, camelCase names.

use gochat_proto::common as pb;
use serde::Serialize;

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    pub is_guest: bool,
    pub status: i32,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

impl From<pb::User> for User {
    fn from(u: pb::User) -> Self {
        Self {
            id: u.id.to_string(),
            username: u.username,
            avatar_url: u.avatar_url,
            is_guest: u.is_guest,
            status: u.status,
            created_at: secs(u.created_at_ms),
            updated_at: secs(u.updated_at_ms),
            online: None,
        }
    }
}

/// The sender as carried in `new-message` frames.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sender {
    pub id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<User>,
    pub message_type: i32,
    pub content: String,
    pub seq_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
    pub created_at: i64,
}

impl From<pb::Message> for Message {
    fn from(m: pb::Message) -> Self {
        Self {
            id: m.id.to_string(),
            conversation_id: m.conversation_id,
            sender_id: m.sender_id.to_string(),
            sender: m.sender.map(User::from),
            message_type: m.message_type,
            content: m.content,
            seq_id: m.seq_id,
            client_msg_id: m.client_msg_id,
            deleted: m.deleted,
            extra: m.extra,
            created_at: secs(m.created_at_ms),
        }
    }
}

/// The `new-message` frame's data.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewMessage<'a> {
    pub id: String,
    pub conversation_id: &'a str,
    pub sender: Sender,
    pub content: &'a str,
    pub message_type: i32,
    pub seq_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<&'a str>,
    pub created_at: i64,
}

impl<'a> NewMessage<'a> {
    pub fn new(m: &'a pb::Message) -> Self {
        let sender = match &m.sender {
            Some(u) => Sender { id: u.id.to_string(), username: u.username.clone(), avatar_url: u.avatar_url.clone() },
            None => Sender { id: m.sender_id.to_string(), username: String::new(), avatar_url: None },
        };
        Self {
            id: m.id.to_string(),
            conversation_id: &m.conversation_id,
            sender,
            content: &m.content,
            message_type: m.message_type,
            seq_id: m.seq_id,
            client_msg_id: m.client_msg_id.as_deref(),
            created_at: secs(m.created_at_ms),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: String,
    pub conversation_id: String,
    pub role: i32,
    pub muted: bool,
    pub joined_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

impl From<pb::Member> for Member {
    fn from(m: pb::Member) -> Self {
        Self {
            user_id: m.user_id.to_string(),
            conversation_id: m.conversation_id,
            role: m.role,
            muted: m.muted,
            joined_at: secs(m.joined_at_ms),
            user: m.user.map(User::from),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    pub member_count: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Message>,
    pub unread_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub my_membership: Option<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
}

impl From<pb::Conversation> for Conversation {
    fn from(c: pb::Conversation) -> Self {
        Self {
            id: c.id,
            kind: c.r#type,
            name: c.name,
            avatar_url: c.avatar_url,
            description: c.description,
            owner_id: c.owner_id.map(|id| id.to_string()),
            member_count: c.member_count,
            // Settings are stored as JSON text; anything unparsable is shown as a string.
            settings: c.settings.map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))),
            last_message: c.last_message.map(Message::from),
            unread_count: c.unread_count,
            created_at: secs(c.created_at_ms),
            updated_at: secs(c.updated_at_ms),
            my_membership: c.my_membership.map(Member::from),
            members: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FriendRequest {
    pub id: String,
    pub requester_id: String,
    pub target_id: String,
    pub status: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<User>,
}

impl From<pb::FriendRequest> for FriendRequest {
    fn from(f: pb::FriendRequest) -> Self {
        Self {
            id: f.id.to_string(),
            requester_id: f.requester_id.to_string(),
            target_id: f.target_id.to_string(),
            status: f.status,
            message: f.message,
            created_at: secs(f.created_at_ms),
            updated_at: secs(f.updated_at_ms),
            requester: f.requester.map(User::from),
            target: f.target.map(User::from),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Friend {
    pub user_id: String,
    pub friend_id: String,
    pub status: i32,
    pub created_at: i64,
    pub friend: User,
}

impl From<pb::Friend> for Friend {
    fn from(f: pb::Friend) -> Self {
        let mut friend = User::from(f.friend.unwrap_or_default());
        friend.online = Some(f.online);
        Self {
            user_id: f.user_id.to_string(),
            friend_id: f.friend_id.to_string(),
            status: f.status,
            created_at: secs(f.created_at_ms),
            friend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strings_and_times_are_seconds() {
        let m = pb::Message { id: 123, sender_id: 7, created_at_ms: 1_700_000_000_999, seq_id: 3, ..Default::default() };
        let v = serde_json::to_value(Message::from(m)).expect("serializes");
        assert_eq!(v["id"], "123");
        assert_eq!(v["senderId"], "7");
        assert_eq!(v["createdAt"], 1_700_000_000);
        assert_eq!(v["seqId"], 3);
        assert!(v.get("clientMsgId").is_none());
    }

    #[test]
    fn conversation_type_field_is_named_type() {
        let c = pb::Conversation { id: "world".into(), r#type: 3, settings: Some("{\"muteAll\":true}".into()), ..Default::default() };
        let v = serde_json::to_value(Conversation::from(c)).expect("serializes");
        assert_eq!(v["type"], 3);
        assert_eq!(v["settings"]["muteAll"], true);
    }
}
