//! Connections reported by gateways, and `online-status` to friends.
//!
//! A user is online while any connection of theirs is in presence. The
//! first connection and the last disconnection tell the user's online
//! friends. Entries expire unless the gateway refreshes them (about three
//! heartbeats), so a crashed gateway's users go offline by themselves.

use std::time::Duration;

use gochat_infra::error::{AppError, AppResult};
use gochat_infra::{codec, push, rpc};
use gochat_proto::common::PresenceEntry;
use gochat_proto::events::{OnlineStatus, downstream_message::Payload};
use gochat_proto::logic::{ConnectionEvent, PresenceRefresh};
use gochat_proto::repo::{PresenceChange, PresenceRefreshRequest, UserId, UserIds};
use tonic::Request;

use crate::Logic;

impl Logic {
    fn presence_ttl(&self) -> Duration {
        self.config.get().heartbeat() * 3 + Duration::from_secs(5)
    }

    /// Live connections of these users.
    pub(crate) async fn presence_of(&self, users: &[i64]) -> AppResult<Vec<PresenceEntry>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        Ok(rpc(self.repo.get_presence(Request::new(UserIds { user_ids: users.to_vec() }))).await?.entries)
    }

    pub async fn connection_opened(&self, ev: ConnectionEvent) -> AppResult<()> {
        let entry = valid_entry(ev.entry)?;
        let ttl_ms = self.presence_ttl().as_millis() as i64;
        let user_id = entry.user_id;
        let n = rpc(self.repo.presence_online(Request::new(PresenceChange { entry: Some(entry), ttl_ms }))).await?.connections;
        if n == 1 {
            self.announce(user_id, true).await;
        }
        Ok(())
    }

    pub async fn connection_closed(&self, ev: ConnectionEvent) -> AppResult<()> {
        let entry = valid_entry(ev.entry)?;
        let user_id = entry.user_id;
        let n = rpc(self.repo.presence_offline(Request::new(PresenceChange { entry: Some(entry), ttl_ms: 0 }))).await?.connections;
        if n == 0 {
            self.announce(user_id, false).await;
        }
        Ok(())
    }

    pub async fn refresh_presence(&self, r: PresenceRefresh) -> AppResult<()> {
        let ttl_ms = self.presence_ttl().as_millis() as i64;
        rpc(self.repo.presence_refresh(Request::new(PresenceRefreshRequest { entries: r.entries, ttl_ms }))).await?;
        Ok(())
    }

    /// Tells the user's online friends; best effort (a missed status is
    /// corrected by the friend list's `online` flag on the next fetch).
    async fn announce(&self, user_id: i64, online: bool) {
        let result: AppResult<()> = async {
            let friends: Vec<i64> =
                rpc(self.repo.list_friends(Request::new(UserId { user_id }))).await?.friends.iter().map(|f| f.friend_id).collect();
            let presence = self.presence_of(&friends).await?;
            let payload = Payload::OnlineStatus(OnlineStatus { user_id, online });
            push::push(self.bus.as_ref(), &user_id.to_string(), &codec::new_trace_id(), &presence, &payload, "", None).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(user_id, online, error = %e, "online status not announced");
        }
    }
}

fn valid_entry(e: Option<PresenceEntry>) -> AppResult<PresenceEntry> {
    e.filter(|e| e.user_id > 0 && !e.conn_id.is_empty() && !e.gateway_id.is_empty())
        .ok_or_else(|| AppError::validation("presence entry needs user_id, conn_id and gateway_id"))
}
