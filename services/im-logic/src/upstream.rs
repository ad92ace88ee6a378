//! The `logic.upstream.group` consumer: client messages the gateways
//! produced to `gochat.messages.upstream`.
//!
//! Records of one partition are handled in order (one conversation lives in
//! one partition, so its messages keep their order) with one durable write
//! per partition per batch ([`Logic::send_batch`]); partitions of a batch are
//! handled concurrently. Offsets are committed after the whole batch is
//! done. A business error (not a member, too large, ...) goes back to the
//! sending connection as an `error` frame; a backend outage is retried
//! until it passes, without committing; an undecodable record goes to the
//! dead-letter topic.

use std::collections::BTreeMap;
use std::time::Duration;

use gochat_infra::bus::{Consumer, Record, groups, topics};
use gochat_infra::codec;
use gochat_infra::error::AppError;
use gochat_infra::shutdown::Shutdown;
use gochat_proto::events::{DownstreamMessage, ErrorReply, UpstreamMessage, downstream_message::Payload};
use gochat_proto::logic::{Caller, SendMessageRequest};

use crate::Logic;
use crate::send::BatchReads;

const BATCH: usize = 512;

/// Consumes until shutdown; returns after committing what was handled.
pub async fn run(logic: Logic, shutdown: Shutdown) -> Result<(), AppError> {
    let mut consumer = logic.bus.subscribe(groups::LOGIC_UPSTREAM, &[topics::UPSTREAM]).await?;
    tracing::info!("upstream consumer started");
    while !shutdown.is_triggered() {
        let records = tokio::select! {
            _ = shutdown.wait() => break,
            r = consumer.poll(BATCH, Duration::from_millis(500)) => r?,
        };
        if records.is_empty() {
            continue;
        }
        if !handle_batch(&logic, &records, &shutdown).await {
            // Stopping mid-batch: leave it uncommitted for the next consumer.
            break;
        }
        commit(consumer.as_mut(), &records).await;
    }
    tracing::info!("upstream consumer stopped");
    Ok(())
}

async fn commit(consumer: &mut dyn Consumer, records: &[Record]) {
    if let Err(e) = consumer.commit(records).await {
        // Not fatal: the records are delivered again and handled idempotently.
        tracing::warn!(error = %e, "upstream commit failed");
    }
}

/// Items of one partition, in order, each with its trace id.
type Traced<T> = Vec<(T, String)>;

/// Handles a batch; false when shutdown interrupted it.
async fn handle_batch(logic: &Logic, records: &[Record], shutdown: &Shutdown) -> bool {
    let mut by_partition: BTreeMap<(&str, u32), Vec<(UpstreamMessage, String)>> = BTreeMap::new();
    for r in records {
        let ups = by_partition.entry((r.topic.as_str(), r.partition)).or_default();
        match codec::decode::<UpstreamMessage>(r) {
            Ok(up) => ups.push((up, codec::trace_id(r))),
            Err(e) => {
                let error = format!("undecodable UpstreamMessage: {e}");
                codec::send_to_dlq(logic.bus.as_ref(), &logic.metrics, r, groups::LOGIC_UPSTREAM, &error).await
            }
        }
    }
    // Each record's request is built once; one set of reads
    // (conversations, memberships, senders, stored ids) serves the whole
    // batch, shared by its partitions.
    let partitions: Vec<(Traced<UpstreamMessage>, Traced<SendMessageRequest>)> = by_partition
        .into_values()
        .map(|ups| {
            let requests = ups.iter().map(|(up, trace)| (request(up), trace.clone())).collect();
            (ups, requests)
        })
        .collect();
    let all: Vec<&SendMessageRequest> = partitions.iter().flat_map(|(_, reqs)| reqs.iter().map(|(r, _)| r)).collect();
    let reads = logic.batch_reads(&all).await;
    drop(all);
    let tasks = partitions.into_iter().map(|(ups, requests)| handle_partition(logic, ups, requests, &reads, shutdown));
    futures::future::join_all(tasks).await.into_iter().all(|done| done)
}

/// Attempts for one record while a backend is down (about 20 s in all);
/// then the sender is told to retry, so one record cannot hold its
/// partition (and the consumer's commits) for long.
const MAX_ATTEMPTS: u32 = 9;

fn request(up: &UpstreamMessage) -> SendMessageRequest {
    SendMessageRequest {
        caller: Some(Caller { user_id: up.user_id, is_guest: up.is_guest }),
        conversation_id: up.conversation_id.clone(),
        message_type: up.message_type,
        content: up.content.clone(),
        client_msg_id: up.client_msg_id.clone(),
        conn_id: Some(up.conn_id.clone()),
        gateway_id: Some(up.gateway_id.clone()),
        extra: None,
    }
}

/// One partition's records, in order, with one durable write for the lot;
/// false when shutdown interrupted it (not done).
async fn handle_partition(
    logic: &Logic,
    ups: Vec<(UpstreamMessage, String)>,
    requests: Vec<(SendMessageRequest, String)>,
    reads: &BatchReads,
    shutdown: &Shutdown,
) -> bool {
    let results = logic.send_batch(requests, reads, "ws").await;
    for ((up, trace), result) in ups.iter().zip(results) {
        match result {
            Ok(_) => {}
            // A backend is down: this one again on its own, with backoff.
            Err(e) if e.code.is_retryable() => {
                if !retry(logic, up, trace, shutdown).await {
                    return false;
                }
            }
            Err(e) => reply_error(logic, up, trace, &e).await,
        }
    }
    true
}

/// Retries one send with backoff; false when shutdown interrupted it.
async fn retry(logic: &Logic, up: &UpstreamMessage, trace: &str, shutdown: &Shutdown) -> bool {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..MAX_ATTEMPTS {
        if shutdown.is_triggered() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        match logic.send_message(request(up), "ws", trace).await {
            Ok(_) => return true,
            Err(e) if e.code.is_retryable() => tracing::warn!(error = %e, trace_id = %trace, attempt, "send failed, retrying"),
            Err(e) => {
                reply_error(logic, up, trace, &e).await;
                return true;
            }
        }
    }
    reply_error(logic, up, trace, &AppError::unavailable("the message could not be accepted now; retry")).await;
    true
}

/// Tells the sending connection why its message was refused.
async fn reply_error(logic: &Logic, up: &UpstreamMessage, trace: &str, e: &AppError) {
    let reply = DownstreamMessage {
        target_user_ids: vec![],
        exclude_conn_id: String::new(),
        payload: Some(Payload::Error(ErrorReply {
            conn_id: up.conn_id.clone(),
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
            client_msg_id: up.client_msg_id.clone(),
        })),
        ack: None,
    };
    let rec = codec::encode(topics::downstream(&up.gateway_id), up.conversation_id.clone(), &reply, trace);
    if let Err(err) = logic.bus.produce(vec![rec]).await {
        tracing::warn!(error = %err, "error reply not sent");
    }
}
