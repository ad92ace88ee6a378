//! Friend requests and friend lists. Accepting stores the friendship both
//! ways and opens (or reuses) the single chat between the two users.

use gochat_infra::error::{AppError, AppResult, ErrorCode};
use gochat_infra::rpc;
use gochat_proto::common::FriendRequest;
use gochat_proto::logic::*;
use gochat_proto::repo::{CreateFriendRequestRequest, FriendRequestId, SetFriendRequestStatusRequest, UserId};
use tonic::Request;

use crate::{Logic, SINGLE, caller, no_guests};

const MAX_MESSAGE: usize = 255;

impl Logic {
    pub async fn send_friend_request(&self, q: FriendRequestCreate) -> AppResult<FriendRequest> {
        let c = caller(q.caller)?;
        no_guests(&c)?;
        if q.target_user_id == c.user_id {
            return Err(AppError::validation("you cannot befriend yourself"));
        }
        if q.message.as_ref().is_some_and(|m| m.chars().count() > MAX_MESSAGE) {
            return Err(AppError::validation(format!("message must be at most {MAX_MESSAGE} characters")));
        }
        let target = self.user(q.target_user_id).await?.ok_or_else(|| AppError::not_found("user not found"))?;
        if target.is_guest {
            return Err(AppError::forbidden("guests cannot have friends"));
        }
        let req = CreateFriendRequestRequest { requester_id: c.user_id, target_id: target.id, message: q.message, id: self.ids.next_id() };
        let created = rpc(self.repo.create_friend_request(Request::new(req))).await?;
        // Return it with both users filled.
        rpc(self.repo.get_friend_request(Request::new(FriendRequestId { id: created.id }))).await
    }

    pub async fn list_friend_requests(&self, q: ListFriendRequestsRequest) -> AppResult<FriendRequestList> {
        let c = caller(q.caller)?;
        if let Some(s) = q.status
            && !(0..=3).contains(&s)
        {
            return Err(AppError::validation("status must be 0-3"));
        }
        let req = gochat_proto::repo::ListFriendRequestsRequest { user_id: c.user_id, received: q.received, status: q.status };
        Ok(FriendRequestList { requests: rpc(self.repo.list_friend_requests(Request::new(req))).await?.requests })
    }

    pub async fn handle_friend_request(&self, q: HandleFriendRequestRequest) -> AppResult<FriendRequest> {
        let c = caller(q.caller)?;
        no_guests(&c)?;
        let fr = rpc(self.repo.get_friend_request(Request::new(FriendRequestId { id: q.request_id })))
            .await
            .map_err(|e| if e.code == ErrorCode::NotFound { AppError::not_found("friend request not found") } else { e })?;
        if fr.target_id != c.user_id {
            return Err(AppError::forbidden("only the recipient can answer a friend request"));
        }
        if fr.status != 0 {
            return Err(AppError::validation("this request was already answered"));
        }
        let status = if q.accept { 1 } else { 2 };
        // Only from pending, in one statement: of two concurrent answers, one wins.
        let req = SetFriendRequestStatusRequest { id: fr.id, status, only_if_status: Some(0) };
        let updated = rpc(self.repo.set_friend_request_status(Request::new(req)))
            .await
            .map_err(|e| if e.code == ErrorCode::NotFound { AppError::validation("this request was already answered") } else { e })?;
        if q.accept {
            let create =
                CreateConversationRequest { caller: Some(c), r#type: SINGLE, members: vec![fr.requester_id], ..Default::default() };
            self.create_conversation(create).await?;
        }
        Ok(updated)
    }

    pub async fn list_friends(&self, c: Caller) -> AppResult<FriendList> {
        let c = caller(Some(c))?;
        Ok(FriendList { friends: rpc(self.repo.list_friends(Request::new(UserId { user_id: c.user_id }))).await?.friends })
    }
}
