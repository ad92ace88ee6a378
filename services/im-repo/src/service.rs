//! `Repo` over a store and a KV store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gochat_infra::error::AppError;
use gochat_infra::kv::{Kv, KvError, keys};
use gochat_infra::now_ms;
use gochat_infra::store::{HistoryDirection, Store, StoreError};
use gochat_proto::common::{Conversation, Member, User};
use gochat_proto::repo::repo_server::Repo;
use gochat_proto::repo::*;
use prost::Message as _;
use tonic::{Request, Response, Status};

/// The world room's fixed conversation id.
pub const WORLD_ID: &str = "world";

const USER_CACHE_TTL: Duration = Duration::from_secs(30 * 60);
/// Conversation rows, memberships and member-id lists: read on every send,
/// changed rarely. Every write that changes them deletes the key after the
/// database write (cache-aside), so the TTL only bounds memory.
const CONV_CACHE_TTL: Duration = Duration::from_secs(10 * 60);
/// Longer than any database read that could race a write.
const REINVALIDATE_AFTER: Duration = Duration::from_millis(500);
/// A send in flight holds its `client_msg_id` at most this long; an abandoned
/// send (crash, cancelled request) frees the id after it.
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// Most keys one batched read takes (the logic batches 512 messages).
const MAX_BATCH_KEYS: usize = 4096;

fn check_batch(n: usize) -> Result<(), Status> {
    if n > MAX_BATCH_KEYS {
        return Err(Status::invalid_argument(format!("{n} keys; at most {MAX_BATCH_KEYS} per call")));
    }
    Ok(())
}

/// Member-id lists are cached only for conversations up to this size.
const MEMBER_IDS_CACHE_MAX: usize = 1000;

fn idem_value(message_id: i64, seq_id: i64, conversation_id: &str) -> Bytes {
    Bytes::from(format!("{message_id}:{seq_id}:{conversation_id}"))
}

fn parse_idem_value(v: &[u8]) -> Option<(i64, i64, String)> {
    let mut parts = std::str::from_utf8(v).ok()?.splitn(3, ':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.to_string()))
}

/// The `Repo` service.
#[derive(Clone)]
pub struct RepoService {
    store: Arc<dyn Store>,
    kv: Arc<dyn Kv>,
}

type R<T> = Result<Response<T>, Status>;

fn db(e: StoreError) -> Status {
    AppError::from(e).to_status()
}

fn kv_err(e: KvError) -> Status {
    tracing::error!(error = %e, "kv error");
    AppError::unavailable("kv store unavailable").to_status()
}

fn ok<T>(v: T) -> R<T> {
    Ok(Response::new(v))
}

fn not_found(what: &str) -> Status {
    AppError::not_found(format!("{what} not found")).to_status()
}

fn limit(v: i32, default: u32, max: u32) -> u32 {
    if v <= 0 { default } else { (v as u32).min(max) }
}

impl RepoService {
    pub fn new(store: Arc<dyn Store>, kv: Arc<dyn Kv>) -> Self {
        Self { store, kv }
    }

    /// Creates the world room if it does not exist yet.
    pub async fn ensure_world(&self) -> Result<(), StoreError> {
        if self.store.get_conversation(WORLD_ID).await?.is_some() {
            return Ok(());
        }
        let now = now_ms();
        let conv = Conversation {
            id: WORLD_ID.into(),
            r#type: 3,
            name: Some("World".into()),
            description: Some("The public room everyone can join".into()),
            created_at_ms: now,
            updated_at_ms: now,
            ..Default::default()
        };
        self.store.create_conversation(&conv, &[]).await?;
        Ok(())
    }

    /// Copies the revocations kept in the store into the KV store (the
    /// embedded KV store starts empty after a restart).
    pub async fn load_revocations(&self) -> Result<usize, Status> {
        let now = now_ms();
        let rows = self.store.revoked_tokens(now).await.map_err(db)?;
        for (jti, exp) in &rows {
            let ttl = Duration::from_millis((exp - now).max(1000) as u64);
            self.kv.set(&keys::revoked(jti), Bytes::from(exp.to_string()), ttl).await.map_err(kv_err)?;
        }
        Ok(rows.len())
    }

    /// Reads `key` from the KV store and decodes it; a broken entry counts as a miss.
    async fn cached<T: prost::Message + Default>(&self, key: &str) -> Result<Option<T>, Status> {
        Ok(self.kv.get(key).await.map_err(kv_err)?.and_then(|b| T::decode(b.as_ref()).ok()))
    }

    async fn cache<T: prost::Message>(&self, key: &str, value: &T) -> Result<(), Status> {
        self.kv.set(key, Bytes::from(value.encode_to_vec()), CONV_CACHE_TTL).await.map_err(kv_err)
    }

    /// Deletes cached views of a conversation after a write, and once more a
    /// moment later: a reader that read the database before the write may
    /// put its old copy back in between ("delayed double delete").
    async fn invalidate(&self, conversation_id: &str, members: &[i64]) -> Result<(), Status> {
        let mut keys =
            vec![keys::conversation_info(conversation_id), keys::conversation_meta(conversation_id), keys::member_ids(conversation_id)];
        keys.extend(members.iter().map(|u| keys::member(conversation_id, *u)));
        self.kv.del(&keys).await.map_err(kv_err)?;
        let kv = self.kv.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REINVALIDATE_AFTER).await;
            if let Err(e) = kv.del(&keys).await {
                tracing::warn!(error = %e, "delayed cache invalidation failed");
            }
        });
        Ok(())
    }

    async fn users_cached(&self, ids: &[i64]) -> Result<Vec<User>, Status> {
        let cache_keys: Vec<String> = ids.iter().map(|id| keys::user_info(*id)).collect();
        let (mut found, missing) = self.cached_many::<User, _>(ids, &cache_keys).await?;
        if !missing.is_empty() {
            let mut fill = Vec::with_capacity(missing.len());
            for mut u in self.store.get_users(&missing).await.map_err(db)? {
                u.password_hash.clear();
                fill.push((keys::user_info(u.id), Bytes::from(u.encode_to_vec())));
                found.push(u);
            }
            self.kv.set_many(&fill, USER_CACHE_TTL).await.map_err(kv_err)?;
        }
        Ok(found)
    }

    /// Looks `cache_keys` (one per id) up in one round trip: the decoded hits,
    /// and the ids that missed. A broken entry counts as a miss and is read
    /// again from the database.
    async fn cached_many<T: prost::Message + Default, I: Clone>(
        &self,
        ids: &[I],
        cache_keys: &[String],
    ) -> Result<(Vec<T>, Vec<I>), Status> {
        let mut hits = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (id, value) in ids.iter().zip(self.kv.get_many(cache_keys).await.map_err(kv_err)?) {
            match value.and_then(|b| T::decode(b.as_ref()).ok()) {
                Some(v) => hits.push(v),
                None => missing.push(id.clone()),
            }
        }
        Ok((hits, missing))
    }
}

#[tonic::async_trait]
impl Repo for RepoService {
    async fn create_user(&self, req: Request<CreateUserRequest>) -> R<User> {
        let user = req.into_inner().user.ok_or_else(|| Status::invalid_argument("user missing"))?;
        ok(self.store.create_user(&user).await.map_err(db)?)
    }

    async fn get_users(&self, req: Request<UserIds>) -> R<Users> {
        ok(Users { users: self.users_cached(&req.into_inner().user_ids).await? })
    }

    async fn get_user_by_name(&self, req: Request<UserByNameRequest>) -> R<User> {
        let name = req.into_inner().username;
        self.store.get_user_by_name(&name).await.map_err(db)?.map(Response::new).ok_or_else(|| not_found("user"))
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> R<User> {
        let r = req.into_inner();
        let user = self
            .store
            .update_user_avatar(r.user_id, r.avatar_url.as_deref(), now_ms())
            .await
            .map_err(db)?
            .ok_or_else(|| not_found("user"))?;
        // Update the database, then delete the cache: a reader never keeps a stale copy for long.
        self.kv.del(&[keys::user_info(r.user_id)]).await.map_err(kv_err)?;
        ok(user)
    }

    async fn search_users(&self, req: Request<SearchUsersRequest>) -> R<Users> {
        let r = req.into_inner();
        ok(Users { users: self.store.search_users(&r.query, limit(r.limit, 10, 20)).await.map_err(db)? })
    }

    async fn create_conversation(&self, req: Request<CreateConversationRequest>) -> R<CreateConversationResponse> {
        let r = req.into_inner();
        let conv = r.conversation.ok_or_else(|| Status::invalid_argument("conversation missing"))?;
        let (conversation, created) = self.store.create_conversation(&conv, &r.members).await.map_err(db)?;
        if created {
            let ids: Vec<i64> = r.members.iter().map(|m| m.user_id).collect();
            self.invalidate(&conversation.id, &ids).await?;
        }
        ok(CreateConversationResponse { conversation: Some(conversation), created })
    }

    async fn get_conversation(&self, req: Request<ConversationId>) -> R<Conversation> {
        let id = req.into_inner().conversation_id;
        let key = keys::conversation_info(&id);
        if let Some(c) = self.cached::<Conversation>(&key).await? {
            return ok(c);
        }
        let conv = self.store.get_conversation(&id).await.map_err(db)?.ok_or_else(|| not_found("conversation"))?;
        self.cache(&key, &conv).await?;
        ok(conv)
    }

    async fn get_conversation_metas(&self, req: Request<ConversationIds>) -> R<Conversations> {
        let mut ids = req.into_inner().conversation_ids;
        check_batch(ids.len())?;
        ids.sort_unstable();
        ids.dedup();
        let cache_keys: Vec<String> = ids.iter().map(|id| keys::conversation_meta(id)).collect();
        let (mut conversations, missing) = self.cached_many::<Conversation, _>(&ids, &cache_keys).await?;
        if !missing.is_empty() {
            let found = self.store.get_conversations(&missing).await.map_err(db)?;
            // A cold cache usually means cold sequence counters too (first
            // use, or a restart of the embedded mode): seed them here from
            // the same rows, as NextSeq would one query each. Seeding only
            // sets a missing counter, so this never moves one.
            futures::future::try_join_all(found.iter().map(|c| self.kv.seq_seed(&c.id, c.last_seq_id))).await.map_err(kv_err)?;
            let mut fill = Vec::new();
            for mut conv in found {
                conv.last_message_id = None;
                conv.last_seq_id = 0;
                conv.updated_at_ms = 0;
                fill.push((keys::conversation_meta(&conv.id), Bytes::from(conv.encode_to_vec())));
                conversations.push(conv);
            }
            self.kv.set_many(&fill, CONV_CACHE_TTL).await.map_err(kv_err)?;
        }
        ok(Conversations { conversations })
    }

    async fn update_conversation(&self, req: Request<UpdateConversationRequest>) -> R<Conversation> {
        let r = req.into_inner();
        let conv = self
            .store
            .update_conversation(&r.conversation_id, r.name.as_deref(), r.avatar_url.as_deref(), r.description.as_deref(), now_ms())
            .await
            .map_err(db)?
            .ok_or_else(|| not_found("conversation"))?;
        self.invalidate(&r.conversation_id, &[]).await?;
        ok(conv)
    }

    async fn list_user_conversations(&self, req: Request<ListUserConversationsRequest>) -> R<ConversationPage> {
        let r = req.into_inner();
        let size = limit(r.size, 20, 100);
        let page = r.page.max(1) as u32;
        let p = self.store.list_user_conversations(r.user_id, (page - 1) * size, size, r.r#type).await.map_err(db)?;
        ok(ConversationPage { conversations: p.items, has_more: p.has_more })
    }

    async fn get_member(&self, req: Request<MemberKey>) -> R<Member> {
        let r = req.into_inner();
        let key = keys::member(&r.conversation_id, r.user_id);
        // Cached both ways: an empty value means "not a member".
        if let Some(bytes) = self.kv.get(&key).await.map_err(kv_err)? {
            if bytes.is_empty() {
                return Err(not_found("member"));
            }
            if let Ok(m) = Member::decode(bytes.as_ref()) {
                return ok(m);
            }
        }
        match self.store.get_member(&r.conversation_id, r.user_id).await.map_err(db)? {
            Some(m) => {
                self.cache(&key, &m).await?;
                ok(m)
            }
            None => {
                self.kv.set(&key, Bytes::new(), CONV_CACHE_TTL).await.map_err(kv_err)?;
                Err(not_found("member"))
            }
        }
    }

    async fn get_members(&self, req: Request<MemberKeys>) -> R<Members> {
        let mut wanted: Vec<(String, i64)> = req.into_inner().keys.into_iter().map(|k| (k.conversation_id, k.user_id)).collect();
        check_batch(wanted.len())?;
        wanted.sort_unstable();
        wanted.dedup();
        let cache_keys: Vec<String> = wanted.iter().map(|(c, u)| keys::member(c, *u)).collect();
        // As for one: an empty cached value means "not a member".
        let mut members = Vec::new();
        let mut missing = Vec::new();
        for (key, value) in wanted.into_iter().zip(self.kv.get_many(&cache_keys).await.map_err(kv_err)?) {
            match value {
                Some(bytes) if bytes.is_empty() => {}
                Some(bytes) => match Member::decode(bytes.as_ref()) {
                    Ok(m) => members.push(m),
                    Err(_) => missing.push(key),
                },
                None => missing.push(key),
            }
        }
        if !missing.is_empty() {
            let found = self.store.get_members(&missing).await.map_err(db)?;
            let mut fill: Vec<(String, Bytes)> = Vec::with_capacity(missing.len());
            for (c, u) in &missing {
                let m = found.iter().find(|m| m.conversation_id == *c && m.user_id == *u);
                fill.push((keys::member(c, *u), m.map(|m| Bytes::from(m.encode_to_vec())).unwrap_or_default()));
            }
            self.kv.set_many(&fill, CONV_CACHE_TTL).await.map_err(kv_err)?;
            members.extend(found);
        }
        ok(Members { members })
    }

    async fn get_member_id_lists(&self, req: Request<ConversationIds>) -> R<MemberIdLists> {
        let mut ids = req.into_inner().conversation_ids;
        check_batch(ids.len())?;
        ids.sort_unstable();
        ids.dedup();
        // The same cache entries as ListMemberIds' whole first page.
        let cache_keys: Vec<String> = ids.iter().map(|id| keys::member_ids(id)).collect();
        let mut lists = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (id, value) in ids.into_iter().zip(self.kv.get_many(&cache_keys).await.map_err(kv_err)?) {
            match value.and_then(|b| MemberIdPage::decode(b.as_ref()).ok()).filter(|p| !p.has_more) {
                Some(page) => lists.push(MemberIdList { conversation_id: id, user_ids: page.user_ids }),
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            let found = self.store.member_id_lists(&missing, MEMBER_IDS_CACHE_MAX as u32).await.map_err(db)?;
            let fill: Vec<(String, Bytes)> = found
                .iter()
                .map(|(id, user_ids)| {
                    let page = MemberIdPage { user_ids: user_ids.clone(), has_more: false };
                    (keys::member_ids(id), Bytes::from(page.encode_to_vec()))
                })
                .collect();
            self.kv.set_many(&fill, CONV_CACHE_TTL).await.map_err(kv_err)?;
            lists.extend(found.into_iter().map(|(conversation_id, user_ids)| MemberIdList { conversation_id, user_ids }));
        }
        ok(MemberIdLists { lists })
    }

    async fn list_members(&self, req: Request<ListMembersRequest>) -> R<MemberPage> {
        let r = req.into_inner();
        let size = limit(r.size, 50, 200);
        let page = r.page.max(1) as u32;
        let p = self.store.list_members(&r.conversation_id, (page - 1) * size, size, r.role).await.map_err(db)?;
        ok(MemberPage { members: p.items, has_more: p.has_more })
    }

    async fn list_member_ids(&self, req: Request<ListMemberIdsRequest>) -> R<MemberIdPage> {
        let r = req.into_inner();
        let lim = limit(r.limit, 1000, 10_000);
        // Whole small member lists are cached (the inline push path reads them on every send).
        let whole = r.after_user_id == 0;
        let key = keys::member_ids(&r.conversation_id);
        if whole
            && let Some(page) = self.cached::<MemberIdPage>(&key).await?
            && page.user_ids.len() <= lim as usize
        {
            return ok(page);
        }
        let p = self.store.list_member_ids(&r.conversation_id, r.after_user_id, lim).await.map_err(db)?;
        let page = MemberIdPage { user_ids: p.items, has_more: p.has_more };
        if whole && !page.has_more && page.user_ids.len() <= MEMBER_IDS_CACHE_MAX {
            self.cache(&key, &page).await?;
        }
        ok(page)
    }

    async fn add_members(&self, req: Request<AddMembersRequest>) -> R<AddMembersResponse> {
        let r = req.into_inner();
        let (added, count) = self.store.add_members(&r.conversation_id, &r.members).await.map_err(db)?;
        self.invalidate(&r.conversation_id, &added).await?;
        ok(AddMembersResponse { added_user_ids: added, member_count: count })
    }

    async fn remove_member(&self, req: Request<MemberKey>) -> R<RemoveMemberResponse> {
        let r = req.into_inner();
        let (removed, count) = self.store.remove_member(&r.conversation_id, r.user_id).await.map_err(db)?;
        self.invalidate(&r.conversation_id, &[r.user_id]).await?;
        ok(RemoveMemberResponse { removed, member_count: count })
    }

    async fn update_member_role(&self, req: Request<UpdateMemberRoleRequest>) -> R<Member> {
        let r = req.into_inner();
        let m = self
            .store
            .update_member_role(&r.conversation_id, r.user_id, r.role, now_ms())
            .await
            .map_err(db)?
            .ok_or_else(|| not_found("member"))?;
        self.invalidate(&r.conversation_id, &[r.user_id]).await?;
        ok(m)
    }

    async fn batch_save_messages(&self, req: Request<BatchSaveMessagesRequest>) -> R<BatchSaveMessagesResponse> {
        let r = req.into_inner();
        let out = self.store.save_messages(&r.messages).await.map_err(db)?;
        // A sender has read their own messages: move their pointers along.
        let mut own: std::collections::BTreeMap<(i64, &str), i64> = std::collections::BTreeMap::new();
        for m in &r.messages {
            let e = own.entry((m.sender_id, m.conversation_id.as_str())).or_default();
            *e = (*e).max(m.seq_id);
        }
        let pointers: Vec<(i64, String, i64)> = own.iter().map(|((u, c), s)| (*u, c.to_string(), *s)).collect();
        self.store.advance_read_pointers(&pointers, now_ms()).await.map_err(db)?;
        // The stored conversations' last message and seq moved on (their
        // `conv:meta` entries hold neither and stay).
        let convs: std::collections::BTreeSet<&str> = r.messages.iter().map(|m| m.conversation_id.as_str()).collect();
        self.kv.del(&convs.into_iter().map(keys::conversation_info).collect::<Vec<_>>()).await.map_err(kv_err)?;
        ok(BatchSaveMessagesResponse { inserted: out.inserted as i32, duplicates: out.duplicates as i32 })
    }

    async fn get_history(&self, req: Request<HistoryRequest>) -> R<HistoryResponse> {
        let r = req.into_inner();
        let dir = match r.after_seq {
            Some(after) => HistoryDirection::After(after),
            None => HistoryDirection::Before(r.before_seq),
        };
        let p = self.store.history(&r.conversation_id, dir, limit(r.limit, 50, 100)).await.map_err(db)?;
        ok(HistoryResponse { messages: p.items, has_more: p.has_more })
    }

    async fn find_message_by_client_id(&self, req: Request<ClientMsgKey>) -> R<FindMessageResponse> {
        let r = req.into_inner();
        ok(FindMessageResponse { message: self.store.find_message_by_client_id(r.sender_id, &r.client_msg_id).await.map_err(db)? })
    }

    async fn find_messages_by_client_ids(&self, req: Request<ClientMsgKeys>) -> R<FoundMessages> {
        let keys: Vec<(i64, String)> = req.into_inner().keys.into_iter().map(|k| (k.sender_id, k.client_msg_id)).collect();
        if keys.len() > 10_000 {
            return Err(AppError::validation("at most 10000 keys per lookup").to_status());
        }
        ok(FoundMessages { messages: self.store.find_messages_by_client_ids(&keys).await.map_err(db)? })
    }

    async fn update_read_pointer(&self, req: Request<ReadPointerRequest>) -> R<ReadPointerResponse> {
        let r = req.into_inner();
        let conv = self.store.get_conversation(&r.conversation_id).await.map_err(db)?.ok_or_else(|| not_found("conversation"))?;
        // Storage lags the live seq counter (a client may mark a message read
        // that it received before it was stored), so the cap is the higher of
        // the two; nothing beyond it exists.
        let live = self.kv.seq_current(&r.conversation_id).await.map_err(kv_err)?.unwrap_or(0);
        let newest = conv.last_seq_id.max(live);
        let (last_read, moved) = if r.seq_id <= 0 {
            (self.store.read_pointer(r.user_id, &r.conversation_id).await.map_err(db)?, false)
        } else {
            self.store.update_read_pointer(r.user_id, &r.conversation_id, r.seq_id.min(newest), now_ms()).await.map_err(db)?
        };
        ok(ReadPointerResponse { last_read_seq_id: last_read, unread_count: (conv.last_seq_id - last_read).max(0), moved })
    }

    async fn create_friend_request(&self, req: Request<CreateFriendRequestRequest>) -> R<gochat_proto::common::FriendRequest> {
        let r = req.into_inner();
        let now = now_ms();
        let fr = gochat_proto::common::FriendRequest {
            id: r.id,
            requester_id: r.requester_id,
            target_id: r.target_id,
            status: 0,
            message: r.message,
            created_at_ms: now,
            updated_at_ms: now,
            requester: None,
            target: None,
        };
        ok(self.store.create_friend_request(&fr).await.map_err(db)?)
    }

    async fn get_friend_request(&self, req: Request<FriendRequestId>) -> R<gochat_proto::common::FriendRequest> {
        let id = req.into_inner().id;
        self.store.get_friend_request(id).await.map_err(db)?.map(Response::new).ok_or_else(|| not_found("friend request"))
    }

    async fn list_friend_requests(&self, req: Request<ListFriendRequestsRequest>) -> R<FriendRequests> {
        let r = req.into_inner();
        ok(FriendRequests { requests: self.store.list_friend_requests(r.user_id, r.received, r.status).await.map_err(db)? })
    }

    async fn set_friend_request_status(&self, req: Request<SetFriendRequestStatusRequest>) -> R<gochat_proto::common::FriendRequest> {
        let r = req.into_inner();
        self.store
            .set_friend_request_status(r.id, r.status, r.only_if_status, now_ms())
            .await
            .map_err(db)?
            .map(Response::new)
            .ok_or_else(|| not_found("friend request"))
    }

    async fn list_friends(&self, req: Request<UserId>) -> R<Friends> {
        let user = req.into_inner().user_id;
        let mut friends = self.store.list_friends(user).await.map_err(db)?;
        let ids: Vec<i64> = friends.iter().map(|f| f.friend_id).collect();
        let online: std::collections::HashSet<i64> =
            self.kv.presence_get(&ids).await.map_err(kv_err)?.into_iter().map(|e| e.user_id).collect();
        for f in &mut friends {
            f.online = online.contains(&f.friend_id);
        }
        ok(Friends { friends })
    }

    async fn are_friends(&self, req: Request<UserPair>) -> R<BoolValue> {
        let r = req.into_inner();
        ok(BoolValue { value: self.store.are_friends(r.a, r.b).await.map_err(db)? })
    }

    async fn next_seq(&self, req: Request<ConversationId>) -> R<SeqValue> {
        let id = req.into_inner().conversation_id;
        if let Some(seq) = self.kv.seq_incr(&id).await.map_err(kv_err)? {
            return ok(SeqValue { seq_id: seq });
        }
        // Missing counter (first use, or the KV store lost it): seed it from
        // the highest stored seq. SET NX keeps concurrent seeders consistent.
        let conv = self.store.get_conversation(&id).await.map_err(db)?.ok_or_else(|| not_found("conversation"))?;
        self.kv.seq_seed(&id, conv.last_seq_id).await.map_err(kv_err)?;
        let seq =
            self.kv.seq_incr(&id).await.map_err(kv_err)?.ok_or_else(|| AppError::unavailable("sequence counter vanished").to_status())?;
        ok(SeqValue { seq_id: seq })
    }

    async fn claim_idempotency(&self, req: Request<IdempotencyClaim>) -> R<IdempotencyResult> {
        let r = req.into_inner();
        let key = keys::idempotency(r.user_id, &r.client_msg_id);
        let ttl = Duration::from_millis(r.ttl_ms.max(1000) as u64);
        // Value: empty while the first send is in flight, then "message_id:seq_id:conversation_id".
        match self.kv.set_nx(&key, Bytes::new(), CLAIM_TTL.min(ttl)).await.map_err(kv_err)? {
            None => {
                // Not in the KV store; the message may still be stored from
                // before (the KV store forgets after its TTL or a restart).
                // The database is the truth.
                let stored = if r.store_checked {
                    None
                } else {
                    self.store.find_message_by_client_id(r.user_id, &r.client_msg_id).await.map_err(db)?
                };
                if let Some(m) = stored {
                    self.kv.set(&key, idem_value(m.id, m.seq_id, &m.conversation_id), ttl).await.map_err(kv_err)?;
                    return ok(IdempotencyResult {
                        claimed: false,
                        message_id: m.id,
                        seq_id: m.seq_id,
                        pending: false,
                        conversation_id: m.conversation_id,
                    });
                }
                ok(IdempotencyResult { claimed: true, ..Default::default() })
            }
            Some(v) if v.is_empty() => ok(IdempotencyResult { claimed: false, pending: true, ..Default::default() }),
            Some(v) => match parse_idem_value(&v) {
                Some((message_id, seq_id, conversation_id)) => {
                    ok(IdempotencyResult { claimed: false, message_id, seq_id, pending: false, conversation_id })
                }
                None => Err(AppError::internal("corrupt idempotency record").to_status()),
            },
        }
    }

    async fn set_idempotency(&self, req: Request<IdempotencyRecord>) -> R<Empty> {
        let r = req.into_inner();
        let key = keys::idempotency(r.user_id, &r.client_msg_id);
        if r.release {
            self.kv.del(&[key]).await.map_err(kv_err)?;
        } else {
            let ttl = Duration::from_millis(r.ttl_ms.max(1000) as u64);
            self.kv.set(&key, idem_value(r.message_id, r.seq_id, &r.conversation_id), ttl).await.map_err(kv_err)?;
        }
        ok(Empty {})
    }

    async fn presence_online(&self, req: Request<PresenceChange>) -> R<PresenceCount> {
        let r = req.into_inner();
        let entry = r.entry.ok_or_else(|| Status::invalid_argument("entry missing"))?;
        let n = self.kv.presence_add(&entry, Duration::from_millis(r.ttl_ms.max(1000) as u64)).await.map_err(kv_err)?;
        ok(PresenceCount { connections: n as i64 })
    }

    async fn presence_offline(&self, req: Request<PresenceChange>) -> R<PresenceCount> {
        let r = req.into_inner();
        let entry = r.entry.ok_or_else(|| Status::invalid_argument("entry missing"))?;
        let n = self.kv.presence_remove(entry.user_id, &entry.conn_id).await.map_err(kv_err)?;
        ok(PresenceCount { connections: n as i64 })
    }

    async fn presence_refresh(&self, req: Request<PresenceRefreshRequest>) -> R<Empty> {
        let r = req.into_inner();
        self.kv.presence_refresh(&r.entries, Duration::from_millis(r.ttl_ms.max(1000) as u64)).await.map_err(kv_err)?;
        ok(Empty {})
    }

    async fn get_presence(&self, req: Request<UserIds>) -> R<PresenceResponse> {
        let ids = req.into_inner().user_ids;
        ok(PresenceResponse { entries: self.kv.presence_get(&ids).await.map_err(kv_err)? })
    }

    async fn revoke_token(&self, req: Request<RevokeTokenRequest>) -> R<RevokeTokenResponse> {
        let r = req.into_inner();
        let now = now_ms();
        // The store first: a revocation is not reported done until it would
        // survive a restart, and its write lock makes "first" well defined.
        let newly_revoked = self.store.revoke_token(&r.jti, r.expires_at_ms, now).await.map_err(db)?;
        let ttl_ms = (r.expires_at_ms - now).max(1000) as u64;
        self.kv
            .set(&keys::revoked(&r.jti), Bytes::from(r.expires_at_ms.to_string()), Duration::from_millis(ttl_ms))
            .await
            .map_err(kv_err)?;
        ok(RevokeTokenResponse { newly_revoked })
    }

    async fn is_token_revoked(&self, req: Request<TokenId>) -> R<BoolValue> {
        let jti = req.into_inner().jti;
        ok(BoolValue { value: self.kv.get(&keys::revoked(&jti)).await.map_err(kv_err)?.is_some() })
    }

    async fn list_revoked_tokens(&self, _req: Request<Empty>) -> R<RevokedTokens> {
        let rows = self.kv.scan_prefix(keys::REVOKED_PREFIX).await.map_err(kv_err)?;
        let tokens = rows
            .into_iter()
            .map(|(k, v)| RevokeTokenRequest {
                jti: k.trim_start_matches(keys::REVOKED_PREFIX).to_string(),
                expires_at_ms: std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            })
            .collect();
        ok(RevokedTokens { tokens })
    }
}

#[cfg(test)]
mod tests {
    use gochat_infra::kv::memory::MemoryKv;
    use gochat_infra::store::sqlite::SqliteStore;

    use super::*;

    async fn repo() -> RepoService {
        let store = SqliteStore::open_in_memory().await.expect("store");
        RepoService::new(Arc::new(store), Arc::new(MemoryKv::new()))
    }

    fn user(id: i64) -> User {
        User { id, username: format!("u{id}"), created_at_ms: 1, updated_at_ms: 1, ..Default::default() }
    }

    fn member(conv: &str, user_id: i64) -> Member {
        Member { conversation_id: conv.into(), user_id, role: 1, joined_at_ms: 1, ..Default::default() }
    }

    async fn group(r: &RepoService, id: &str, members: &[i64]) {
        let conversation = Conversation { id: id.into(), r#type: 2, created_at_ms: 1, updated_at_ms: 1, ..Default::default() };
        let members = members.iter().map(|u| member(id, *u)).collect();
        r.create_conversation(Request::new(CreateConversationRequest { conversation: Some(conversation), members })).await.expect("create");
    }

    fn message(id: i64, conv: &str, seq: i64) -> gochat_proto::common::Message {
        gochat_proto::common::Message {
            id,
            conversation_id: conv.into(),
            sender_id: 1,
            message_type: 1,
            content: "x".into(),
            seq_id: seq,
            created_at_ms: 10,
            ..Default::default()
        }
    }

    async fn metas(r: &RepoService, ids: &[&str]) -> Vec<Conversation> {
        let req = ConversationIds { conversation_ids: ids.iter().map(|s| s.to_string()).collect() };
        let mut out = r.get_conversation_metas(Request::new(req)).await.expect("metas").into_inner().conversations;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    async fn members(r: &RepoService, keys: &[(&str, i64)]) -> Vec<(String, i64)> {
        let keys = keys.iter().map(|(c, u)| MemberKey { conversation_id: c.to_string(), user_id: *u }).collect();
        let mut out: Vec<(String, i64)> = r
            .get_members(Request::new(MemberKeys { keys }))
            .await
            .expect("members")
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.conversation_id, m.user_id))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn metas_stay_cached_while_messages_are_stored_and_seed_sequences() {
        let r = repo().await;
        for id in [1, 2] {
            r.store.create_user(&user(id)).await.expect("user");
        }
        group(&r, "g", &[1, 2]).await;
        r.batch_save_messages(Request::new(BatchSaveMessagesRequest { messages: vec![message(100, "g", 7)] })).await.expect("save");

        // Read from the database: last_* left out, and the counter seeded from last_seq_id 7.
        let m = metas(&r, &["g", "nope"]).await;
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].last_seq_id, m[0].last_message_id, m[0].member_count), (0, None, 2));
        let seq = r.next_seq(Request::new(ConversationId { conversation_id: "g".into() })).await.expect("seq").into_inner().seq_id;
        assert_eq!(seq, 8, "seeded from the stored messages");

        // Storing messages leaves the meta entry; a cache miss never moves a live counter back.
        r.batch_save_messages(Request::new(BatchSaveMessagesRequest { messages: vec![message(101, "g", 8)] })).await.expect("save");
        assert!(r.kv.get(&keys::conversation_meta("g")).await.expect("kv").is_some(), "not invalidated by messages");
        r.kv.del(&[keys::conversation_meta("g")]).await.expect("del");
        metas(&r, &["g"]).await;
        let seq = r.next_seq(Request::new(ConversationId { conversation_id: "g".into() })).await.expect("seq").into_inner().seq_id;
        assert_eq!(seq, 9, "seeding only sets a missing counter");

        // A membership change drops it: the new member count shows.
        r.store.create_user(&user(3)).await.expect("user");
        r.add_members(Request::new(AddMembersRequest { conversation_id: "g".into(), members: vec![member("g", 3)] })).await.expect("add");
        assert_eq!(metas(&r, &["g"]).await[0].member_count, 3);
    }

    #[tokio::test]
    async fn members_cache_not_a_member_until_a_membership_write() {
        let r = repo().await;
        for id in [1, 2, 3] {
            r.store.create_user(&user(id)).await.expect("user");
        }
        group(&r, "g", &[1, 2]).await;
        assert_eq!(members(&r, &[("g", 1), ("g", 3), ("g", 1), ("x", 1)]).await, vec![("g".into(), 1)]);
        // "Not a member" is cached (empty value) and answered from the cache.
        assert_eq!(r.kv.get(&keys::member("g", 3)).await.expect("kv"), Some(Bytes::new()));
        assert_eq!(members(&r, &[("g", 3)]).await, vec![]);
        r.add_members(Request::new(AddMembersRequest { conversation_id: "g".into(), members: vec![member("g", 3)] })).await.expect("add");
        assert_eq!(members(&r, &[("g", 3)]).await, vec![("g".into(), 3)], "the add invalidated the negative entry");
        r.remove_member(Request::new(MemberKey { conversation_id: "g".into(), user_id: 1 })).await.expect("remove");
        assert_eq!(members(&r, &[("g", 1), ("g", 2)]).await, vec![("g".into(), 2)], "a removed member is gone at once");

        let lists = r
            .get_member_id_lists(Request::new(ConversationIds { conversation_ids: vec!["g".into(), "x".into()] }))
            .await
            .expect("lists")
            .into_inner()
            .lists;
        assert_eq!(lists.len(), 1);
        assert_eq!((lists[0].conversation_id.as_str(), lists[0].user_ids.clone()), ("g", vec![2, 3]));
        let too_many = ConversationIds { conversation_ids: vec!["g".into(); MAX_BATCH_KEYS + 1] };
        let err = r.get_member_id_lists(Request::new(too_many)).await.expect_err("over the cap");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
