//! Push routing shared by logic and task: given the live connections of the
//! target users (presence), produce one downstream record per gateway that
//! holds any of them, carrying the payload once and that gateway's users.

use std::collections::BTreeMap;

use gochat_proto::common::PresenceEntry;
use gochat_proto::events::{AckTarget, DownstreamMessage, downstream_message::Payload};

use crate::bus::{Bus, BusError, OutRecord, topics};
use crate::codec;

/// The sender's connection, to receive the ack.
#[derive(Debug, Clone)]
pub struct AckRoute {
    pub gateway_id: String,
    pub ack: AckTarget,
}

/// Builds the downstream records for `payload` to the users in `presence`
/// (and the ack, which goes to its gateway even when no target is there).
pub fn downstream_records(
    key: &str,
    trace_id: &str,
    presence: &[PresenceEntry],
    payload: &Payload,
    exclude_conn_id: &str,
    ack: Option<&AckRoute>,
) -> Vec<OutRecord> {
    let mut per_gateway: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in presence {
        let users = per_gateway.entry(e.gateway_id.as_str()).or_default();
        if !users.contains(&e.user_id) {
            users.push(e.user_id);
        }
    }
    if let Some(a) = ack {
        per_gateway.entry(a.gateway_id.as_str()).or_default();
    }
    per_gateway
        .into_iter()
        .map(|(gw, users)| {
            let msg = DownstreamMessage {
                target_user_ids: users,
                exclude_conn_id: exclude_conn_id.to_string(),
                payload: Some(payload.clone()),
                ack: ack.filter(|a| a.gateway_id == gw).map(|a| a.ack.clone()),
            };
            codec::encode(topics::downstream(gw), key.to_string(), &msg, trace_id)
        })
        .collect()
}

/// Produces [`downstream_records`]; returns how many gateways were addressed.
pub async fn push(
    bus: &dyn Bus,
    key: &str,
    trace_id: &str,
    presence: &[PresenceEntry],
    payload: &Payload,
    exclude_conn_id: &str,
    ack: Option<&AckRoute>,
) -> Result<usize, BusError> {
    let records = downstream_records(key, trace_id, presence, payload, exclude_conn_id, ack);
    let n = records.len();
    if n > 0 {
        bus.produce(records).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_proto::events::OnlineStatus;
    use prost::Message;

    fn e(user: i64, conn: &str, gw: &str) -> PresenceEntry {
        PresenceEntry { user_id: user, conn_id: conn.into(), gateway_id: gw.into() }
    }

    #[test]
    fn one_record_per_gateway_with_its_users_once() {
        let presence = [e(1, "a", "g1"), e(1, "b", "g1"), e(2, "c", "g2"), e(3, "d", "g1")];
        let payload = Payload::OnlineStatus(OnlineStatus { user_id: 9, online: true });
        let ack = AckRoute { gateway_id: "g3".into(), ack: AckTarget { conn_id: "x".into(), ..Default::default() } };
        let recs = downstream_records("k", "t", &presence, &payload, "", Some(&ack));
        assert_eq!(recs.len(), 3);
        let decoded: Vec<(String, DownstreamMessage)> =
            recs.iter().map(|r| (r.topic.clone(), DownstreamMessage::decode(r.value.as_ref()).expect("decodes"))).collect();
        assert_eq!(decoded[0].0, "gochat.messages.downstream.g1");
        assert_eq!(decoded[0].1.target_user_ids, vec![1, 3]);
        assert!(decoded[0].1.ack.is_none());
        assert_eq!(decoded[2].0, "gochat.messages.downstream.g3");
        assert!(decoded[2].1.target_user_ids.is_empty());
        assert_eq!(decoded[2].1.ack.as_ref().map(|a| a.conn_id.as_str()), Some("x"));
    }
}
