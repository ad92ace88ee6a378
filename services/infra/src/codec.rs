//! Protobuf records on the bus, each with a `trace_id` header so one message
//! can be followed through gateway, logic, task and back in the logs.

use bytes::Bytes;
use prost::Message;

use crate::bus::{OutRecord, Record};

/// Header carrying the trace id.
pub const TRACE_HEADER: &str = "trace_id";

/// A new random trace id (16 hex chars).
pub fn new_trace_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Encodes `msg` as a record for `topic` with `key` and the trace id.
pub fn encode<M: Message>(topic: impl Into<String>, key: impl Into<Bytes>, msg: &M, trace_id: &str) -> OutRecord {
    OutRecord::new(topic, key, Bytes::from(msg.encode_to_vec())).header(TRACE_HEADER, Bytes::copy_from_slice(trace_id.as_bytes()))
}

/// Decodes a record's value.
pub fn decode<M: Message + Default>(record: &Record) -> Result<M, prost::DecodeError> {
    M::decode(record.value.as_ref())
}

/// The record's trace id, or a fresh one if it has none (or a broken one).
pub fn trace_id(record: &Record) -> String {
    record
        .header(TRACE_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|s| !s.is_empty() && s.len() <= 64)
        .map(str::to_string)
        .unwrap_or_else(new_trace_id)
}

/// The `gochat.dlq` record for a record that `group` could not process.
pub fn dead_letter(record: &Record, group: &str, error: &str) -> OutRecord {
    let dl = gochat_proto::events::DeadLetter {
        source_topic: record.topic.clone(),
        source_partition: record.partition as i32,
        source_offset: record.offset as i64,
        key: record.key.to_vec(),
        value: record.value.to_vec(),
        error: error.to_string(),
        consumer_group: group.to_string(),
        timestamp_ms: crate::now_ms(),
    };
    encode(crate::bus::topics::DLQ, record.key.clone(), &dl, &trace_id(record))
}

/// Sends a record that `group` cannot process to `gochat.dlq` (logged and
/// counted); a failure to do so is logged, the caller goes on either way.
pub async fn send_to_dlq(bus: &dyn crate::bus::Bus, metrics: &crate::telemetry::Metrics, record: &Record, group: &str, error: &str) {
    tracing::error!(topic = %record.topic, partition = record.partition, offset = record.offset, group, error, "dead-lettering record");
    metrics.dead_letters.with_label_values(&[&record.topic]).inc();
    if let Err(e) = bus.produce(vec![dead_letter(record, group, error)]).await {
        tracing::error!(error = %e, "dead-letter produce failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gochat_proto::events::UpstreamMessage;

    #[test]
    fn round_trip_keeps_value_and_trace() {
        let msg = UpstreamMessage { user_id: 9, content: "hi".into(), ..Default::default() };
        let out = encode("t", "conv", &msg, "abc");
        let rec = Record {
            topic: out.topic.clone(),
            partition: 0,
            offset: 0,
            key: out.key.clone(),
            value: out.value.clone(),
            headers: out.headers.clone(),
            timestamp_ms: 0,
        };
        assert_eq!(decode::<UpstreamMessage>(&rec).expect("decodes"), msg);
        assert_eq!(trace_id(&rec), "abc");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let rec = Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: Bytes::new(),
            value: Bytes::from_static(&[0xff, 0xff, 0xff]),
            headers: vec![],
            timestamp_ms: 0,
        };
        assert!(decode::<UpstreamMessage>(&rec).is_err());
        assert_eq!(trace_id(&rec).len(), 16);
    }
}
