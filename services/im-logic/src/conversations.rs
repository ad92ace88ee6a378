//! Conversations, members and roles, history and read pointers.
//!
//! | action | single | group | world |
//! |---|---|---|---|
//! | create | any registered user (idempotent per pair) | any registered user, becomes owner | never |
//! | update | nobody | owner, admin | nobody |
//! | add members | nobody | owner, admin | a registered user adds themself |
//! | remove | nobody | owner (anyone but self), admin (members), anyone (self, not the owner) | anyone (self) |
//! | change role | nobody | owner (admin ↔ member) | nobody |

use std::collections::HashSet;

use gochat_infra::error::{AppError, AppResult, ErrorCode};
use gochat_infra::{codec, now_ms, push, rpc};
use gochat_proto::common::{Conversation, Member};
use gochat_proto::events::{MessageEvent, ReadReceipt, downstream_message::Payload, message_event};
use gochat_proto::logic::*;
use gochat_proto::repo::{self as r, ReadPointerRequest};
use tonic::Request;

use crate::{ADMIN, GROUP, Logic, MEMBER, OWNER, SINGLE, WORLD, caller, no_guests};

const MAX_NAME: usize = 64;
const MAX_DESCRIPTION: usize = 512;
const MAX_URL: usize = 255;

fn check_len(field: &str, v: &Option<String>, max: usize) -> AppResult<()> {
    match v {
        Some(s) if s.chars().count() > max => Err(AppError::validation(format!("{field} must be at most {max} characters"))),
        _ => Ok(()),
    }
}

impl Logic {
    pub async fn list_conversations(&self, q: ListConversationsRequest) -> AppResult<ConversationList> {
        let c = caller(q.caller)?;
        if let Some(t) = q.r#type
            && !(1..=3).contains(&t)
        {
            return Err(AppError::validation("type must be 1, 2 or 3"));
        }
        let req = r::ListUserConversationsRequest { user_id: c.user_id, page: q.page, size: q.size, r#type: q.r#type };
        let page = rpc(self.repo.list_user_conversations(Request::new(req))).await?;
        Ok(ConversationList { conversations: page.conversations, has_more: page.has_more })
    }

    pub async fn create_conversation(&self, q: CreateConversationRequest) -> AppResult<CreateConversationResponse> {
        let c = caller(q.caller)?;
        no_guests(&c)?;
        let now = now_ms();
        let member =
            |user_id: i64, role: i32| Member { conversation_id: String::new(), user_id, role, joined_at_ms: now, ..Default::default() };
        let (conv, members) = match q.r#type {
            SINGLE => {
                let [other] = q.members[..] else {
                    return Err(AppError::validation("a single chat takes exactly one other member"));
                };
                if other == c.user_id {
                    return Err(AppError::validation("you cannot start a chat with yourself"));
                }
                let peer = self.user(other).await?.ok_or_else(|| AppError::not_found("user not found"))?;
                if peer.is_guest {
                    return Err(AppError::forbidden("guests cannot be added to chats"));
                }
                let (lo, hi) = (c.user_id.min(other), c.user_id.max(other));
                let conv = Conversation {
                    id: format!("s_{}", self.ids.next_id()),
                    r#type: SINGLE,
                    pair_key: Some(format!("s:{lo}:{hi}")),
                    created_at_ms: now,
                    updated_at_ms: now,
                    ..Default::default()
                };
                (conv, vec![member(c.user_id, MEMBER), member(other, MEMBER)])
            }
            GROUP => {
                let name = q.name.as_deref().map(str::trim).unwrap_or_default().to_string();
                if name.is_empty() {
                    return Err(AppError::validation("a group needs a name"));
                }
                check_len("name", &Some(name.clone()), MAX_NAME)?;
                check_len("description", &q.description, MAX_DESCRIPTION)?;
                check_len("avatarUrl", &q.avatar_url, MAX_URL)?;
                let mut ids: Vec<i64> =
                    q.members.iter().copied().filter(|id| *id != c.user_id).collect::<HashSet<_>>().into_iter().collect();
                ids.sort_unstable();
                if ids.len() as u64 + 1 > self.config.get().chat.max_group_members {
                    return Err(AppError::validation(format!("a group has at most {} members", self.config.get().chat.max_group_members)));
                }
                let found = self.users(ids.clone()).await?;
                if found.len() != ids.len() {
                    return Err(AppError::validation("some members do not exist"));
                }
                if found.iter().any(|u| u.is_guest) {
                    return Err(AppError::forbidden("guests cannot be added to groups"));
                }
                let conv = Conversation {
                    id: format!("g_{}", self.ids.next_id()),
                    r#type: GROUP,
                    name: Some(name),
                    avatar_url: q.avatar_url,
                    description: q.description,
                    owner_id: Some(c.user_id),
                    created_at_ms: now,
                    updated_at_ms: now,
                    ..Default::default()
                };
                let mut members = vec![member(c.user_id, OWNER)];
                members.extend(ids.into_iter().map(|id| member(id, MEMBER)));
                (conv, members)
            }
            _ => return Err(AppError::validation("type must be 1 (single) or 2 (group)")),
        };
        let members = members.into_iter().map(|m| Member { conversation_id: conv.id.clone(), ..m }).collect();
        let out =
            rpc(self.repo.create_conversation(Request::new(r::CreateConversationRequest { conversation: Some(conv), members }))).await?;
        let mut conversation = out.conversation.ok_or_else(|| AppError::internal("repo returned no conversation"))?;
        conversation.my_membership = self.membership(&conversation.id, c.user_id).await?;
        Ok(CreateConversationResponse { conversation: Some(conversation), created: out.created })
    }

    pub async fn get_conversation(&self, q: ConversationRef) -> AppResult<ConversationDetail> {
        let c = caller(q.caller)?;
        let (mut conv, member) = self.member_view(&c, &q.conversation_id).await?;
        let read = rpc(self.repo.update_read_pointer(Request::new(ReadPointerRequest {
            user_id: c.user_id,
            conversation_id: conv.id.clone(),
            seq_id: 0,
        })))
        .await?;
        conv.unread_count = read.unread_count;
        conv.my_membership = Some(member);
        let members = rpc(self.repo.list_members(Request::new(r::ListMembersRequest {
            conversation_id: conv.id.clone(),
            page: 1,
            size: 20,
            role: None,
        })))
        .await?
        .members;
        Ok(ConversationDetail { conversation: Some(conv), members })
    }

    pub async fn update_conversation(&self, q: UpdateConversationRequest) -> AppResult<Conversation> {
        let c = caller(q.caller)?;
        let (conv, member) = self.member_view(&c, &q.conversation_id).await?;
        if conv.r#type != GROUP {
            return Err(AppError::forbidden("only groups can be edited"));
        }
        if member.role < ADMIN {
            return Err(AppError::forbidden("only the owner or an admin can edit the group"));
        }
        if q.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(AppError::validation("name must not be empty"));
        }
        check_len("name", &q.name, MAX_NAME)?;
        check_len("description", &q.description, MAX_DESCRIPTION)?;
        check_len("avatarUrl", &q.avatar_url, MAX_URL)?;
        let req =
            r::UpdateConversationRequest { conversation_id: conv.id, name: q.name, avatar_url: q.avatar_url, description: q.description };
        let mut out = rpc(self.repo.update_conversation(Request::new(req))).await?;
        out.my_membership = Some(member);
        Ok(out)
    }

    pub async fn history(&self, q: HistoryRequest) -> AppResult<HistoryResponse> {
        let c = caller(q.caller)?;
        if q.cursor.is_some() && q.after.is_some() {
            return Err(AppError::validation("use either cursor or after, not both"));
        }
        if !(0..=100).contains(&q.limit) {
            return Err(AppError::validation("limit must be 1-100 (0 for the default)"));
        }
        let (conv, _) = self.member_view(&c, &q.conversation_id).await?;
        let req = r::HistoryRequest { conversation_id: conv.id, before_seq: q.cursor, after_seq: q.after, limit: q.limit };
        let page = rpc(self.repo.get_history(Request::new(req))).await?;
        let next_cursor = if page.has_more { page.messages.last().map(|m| m.seq_id) } else { None };
        Ok(HistoryResponse { messages: page.messages, next_cursor, has_more: page.has_more })
    }

    pub async fn mark_read(&self, q: MarkReadRequest) -> AppResult<MarkReadResponse> {
        let c = caller(q.caller)?;
        if q.seq_id < 0 {
            return Err(AppError::validation("seqId must be >= 0"));
        }
        let (conv, _) = self.member_view(&c, &q.conversation_id).await?;
        let req = ReadPointerRequest { user_id: c.user_id, conversation_id: conv.id.clone(), seq_id: q.seq_id };
        let out = rpc(self.repo.update_read_pointer(Request::new(req))).await?;
        if out.moved {
            self.read_receipt(&conv, c.user_id, out.last_read_seq_id).await;
        }
        Ok(MarkReadResponse { unread_count: out.unread_count, last_read_seq_id: out.last_read_seq_id })
    }

    /// `read-receipt` to the other members (not for large rooms); best effort.
    async fn read_receipt(&self, conv: &Conversation, user_id: i64, seq_id: i64) {
        let trace = codec::new_trace_id();
        let receipt = ReadReceipt { conversation_id: conv.id.clone(), user_id, seq_id };
        let result: AppResult<()> = async {
            let event = MessageEvent {
                conversation_id: conv.id.clone(),
                event: Some(message_event::Event::Read(receipt.clone())),
                timestamp_ms: now_ms(),
            };
            self.bus.produce(vec![codec::encode(gochat_infra::bus::topics::MESSAGE_EVENTS, conv.id.clone(), &event, &trace)]).await?;
            if self.is_large(conv) {
                return Ok(());
            }
            let others: Vec<i64> = self.all_member_ids(&conv.id).await?.into_iter().filter(|id| *id != user_id).collect();
            let presence = self.presence_of(&others).await?;
            push::push(self.bus.as_ref(), &conv.id, &trace, &presence, &Payload::ReadReceipt(receipt), "", None).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(conversation_id = %conv.id, error = %e, "read receipt not sent");
        }
    }

    pub async fn list_members(&self, q: ListMembersRequest) -> AppResult<MemberList> {
        let c = caller(q.caller)?;
        if let Some(role) = q.role
            && !(MEMBER..=OWNER).contains(&role)
        {
            return Err(AppError::validation("role must be 1, 2 or 3"));
        }
        let (conv, _) = self.member_view(&c, &q.conversation_id).await?;
        let req = r::ListMembersRequest { conversation_id: conv.id, page: q.page, size: q.size, role: q.role };
        let page = rpc(self.repo.list_members(Request::new(req))).await?;
        Ok(MemberList { members: page.members, has_more: page.has_more })
    }

    pub async fn add_members(&self, q: AddMembersRequest) -> AppResult<MemberList> {
        let c = caller(q.caller)?;
        if q.user_ids.is_empty() {
            return Err(AppError::validation("members must not be empty"));
        }
        let conv = self.conversation(&q.conversation_id).await?;
        let me = self.membership(&conv.id, c.user_id).await?;
        let ids: Vec<i64> = q.user_ids.iter().copied().collect::<HashSet<_>>().into_iter().collect();
        match conv.r#type {
            WORLD => {
                if ids != [c.user_id] {
                    return Err(AppError::forbidden("you can only add yourself to the world room"));
                }
            }
            GROUP => {
                let me = me.ok_or_else(crate::not_a_member)?;
                if me.role < ADMIN {
                    return Err(AppError::forbidden("only the owner or an admin can add members"));
                }
                no_guests(&c)?;
                if conv.member_count as u64 + ids.len() as u64 > self.config.get().chat.max_group_members {
                    return Err(AppError::validation(format!("a group has at most {} members", self.config.get().chat.max_group_members)));
                }
            }
            _ => return Err(AppError::forbidden("members of a single chat cannot change")),
        }
        let users = self.users(ids.clone()).await?;
        if users.len() != ids.len() {
            return Err(AppError::not_found("some users do not exist"));
        }
        if conv.r#type == GROUP && users.iter().any(|u| u.is_guest) {
            return Err(AppError::forbidden("guests cannot be added to groups"));
        }
        let now = now_ms();
        let members = ids
            .iter()
            .map(|id| Member { conversation_id: conv.id.clone(), user_id: *id, role: MEMBER, joined_at_ms: now, ..Default::default() })
            .collect();
        let added = rpc(self.repo.add_members(Request::new(r::AddMembersRequest { conversation_id: conv.id.clone(), members }))).await?;
        let mut out = Vec::new();
        for id in added.added_user_ids {
            if let Some(m) = self.membership(&conv.id, id).await? {
                out.push(m);
            }
        }
        Ok(MemberList { members: out, has_more: false })
    }

    pub async fn remove_member(&self, q: MemberRef) -> AppResult<()> {
        let c = caller(q.caller)?;
        let (conv, me) = self.member_view(&c, &q.conversation_id).await?;
        if conv.r#type == SINGLE {
            return Err(AppError::forbidden("members of a single chat cannot change"));
        }
        if q.user_id == c.user_id {
            if me.role == OWNER {
                return Err(AppError::forbidden("the owner cannot leave; transfer ownership or delete the group"));
            }
        } else {
            let target = self.membership(&conv.id, q.user_id).await?.ok_or_else(|| AppError::not_found("that user is not a member"))?;
            let allowed = conv.r#type == GROUP && (me.role == OWNER || (me.role == ADMIN && target.role == MEMBER));
            if !allowed {
                return Err(AppError::forbidden("your role cannot remove this member"));
            }
        }
        rpc(self.repo.remove_member(Request::new(r::MemberKey { conversation_id: conv.id, user_id: q.user_id }))).await?;
        Ok(())
    }

    pub async fn update_member_role(&self, q: UpdateMemberRoleRequest) -> AppResult<Member> {
        let c = caller(q.caller)?;
        if !(MEMBER..=ADMIN).contains(&q.role) {
            return Err(AppError::validation("role must be 1 (member) or 2 (admin)"));
        }
        let (conv, me) = self.member_view(&c, &q.conversation_id).await?;
        if conv.r#type != GROUP || me.role != OWNER {
            return Err(AppError::forbidden("only the group owner can change roles"));
        }
        if q.user_id == c.user_id {
            return Err(AppError::forbidden("the owner's role cannot change"));
        }
        let req = r::UpdateMemberRoleRequest { conversation_id: conv.id, user_id: q.user_id, role: q.role };
        rpc(self.repo.update_member_role(Request::new(req)))
            .await
            .map_err(|e| if e.code == ErrorCode::NotFound { AppError::not_found("that user is not a member") } else { e })
    }
}
