//! im-task: the asynchronous half of the pipeline.
//!
//! - **persist** (`task.persist.group` on `gochat.messages.persist`): writes
//!   messages in batches through `Repo::BatchSaveMessages` — the single
//!   writer of `messages` — and commits offsets only after the write.
//!   Writes are idempotent on `(conversation_id, seq_id)`, so redelivery
//!   after a crash stores nothing twice.
//! - **fanout** (`task.fanout.group` on `gochat.tasks.fanout`): pages
//!   through the members of a large group or the world room, looks up
//!   presence per page and produces one downstream record per gateway.
//! - Undecodable records go to `gochat.dlq` with the error and their source.
//!
//! # Layout
//! - [`Task`]: shared handles; [`run_persist`] and [`run_fanout`]: the consumers.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use gochat_infra::bus::{Bus, Consumer, Record, groups, topics};
use gochat_infra::config::LiveConfig;
use gochat_infra::error::{AppError, AppResult};
use gochat_infra::shutdown::Shutdown;
use gochat_infra::telemetry::Metrics;
use gochat_infra::{codec, push, rpc};
use gochat_proto::events::{FanoutTask, PersistMessage, downstream_message::Payload};
use gochat_proto::repo::repo_server::Repo;
use gochat_proto::repo::{BatchSaveMessagesRequest, BatchSaveMessagesResponse, ListMemberIdsRequest, UserIds};
use tonic::Request;

/// Handles shared by the task consumers.
#[derive(Clone)]
pub struct Task {
    repo: Arc<dyn Repo>,
    bus: Arc<dyn Bus>,
    config: LiveConfig,
    metrics: Arc<Metrics>,
}

impl Task {
    pub fn new(repo: Arc<dyn Repo>, bus: Arc<dyn Bus>, config: LiveConfig, metrics: Arc<Metrics>) -> Self {
        Self { repo, bus, config, metrics }
    }

    async fn dead_letter(&self, record: &Record, group: &str, error: &str) {
        codec::send_to_dlq(self.bus.as_ref(), &self.metrics, record, group, error).await;
    }

    /// Runs `op` until it succeeds, retrying backend outages with backoff.
    /// Gives up (returns the error) on a non-retryable error or at shutdown.
    async fn retry<T, F, Fut>(&self, what: &str, shutdown: &Shutdown, mut op: F) -> AppResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = AppResult<T>>,
    {
        let mut backoff = Duration::from_millis(50);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.code.is_retryable() && !shutdown.is_triggered() => {
                    tracing::warn!(error = %e, what, "retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait() => return Err(e),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn consume<F, Fut>(task: &Task, group: &str, topic: &str, max: usize, shutdown: &Shutdown, mut handle: F) -> AppResult<()>
where
    F: FnMut(Vec<Record>) -> Fut,
    Fut: std::future::Future<Output = AppResult<()>>,
{
    let mut consumer: Box<dyn Consumer> = task.bus.subscribe(group, &[topic]).await?;
    tracing::info!(group, "consumer started");
    while !shutdown.is_triggered() {
        let records = tokio::select! {
            _ = shutdown.wait() => break,
            r = consumer.poll(max, Duration::from_millis(500)) => r?,
        };
        if records.is_empty() {
            continue;
        }
        let n = records.len() as u64;
        match handle(records.clone()).await {
            Ok(()) => {
                task.metrics.bus_records.with_label_values(&[group, "ok"]).inc_by(n);
                if let Err(e) = consumer.commit(&records).await {
                    tracing::warn!(group, error = %e, "commit failed; records will be delivered again");
                }
            }
            // Not committed: a restart (or another instance) handles them again.
            Err(e) => {
                tracing::warn!(group, error = %e, "batch not done; stopping without commit");
                return Err(e);
            }
        }
    }
    tracing::info!(group, "consumer stopped");
    Ok(())
}

/// The persist consumer: batches of messages into the store.
pub async fn run_persist(task: Task, shutdown: Shutdown) -> AppResult<()> {
    let batch = task.config.get().task.persist_batch;
    let t = task.clone();
    consume(&task, groups::TASK_PERSIST, topics::PERSIST, batch, &shutdown, |records| {
        let task = t.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut messages = Vec::with_capacity(records.len());
            let mut sources = Vec::with_capacity(records.len());
            for r in &records {
                match codec::decode::<PersistMessage>(r) {
                    Ok(PersistMessage { message: Some(mut m) }) if !m.conversation_id.is_empty() && m.seq_id > 0 => {
                        m.sender = None;
                        messages.push(m);
                        sources.push(r);
                    }
                    Ok(_) => task.dead_letter(r, groups::TASK_PERSIST, "PersistMessage without a valid message").await,
                    Err(e) => task.dead_letter(r, groups::TASK_PERSIST, &format!("undecodable PersistMessage: {e}")).await,
                }
            }
            if messages.is_empty() {
                return Ok(());
            }
            let save = |batch: Vec<gochat_proto::common::Message>| {
                let task = task.clone();
                async move { rpc(task.repo.batch_save_messages(Request::new(BatchSaveMessagesRequest { messages: batch }))).await }
            };
            let out = match task.retry("batch save", &shutdown, || save(messages.clone())).await {
                Ok(out) => out,
                // Outage or shutdown: leave the batch uncommitted for the next run.
                Err(e) if e.code.is_retryable() => return Err(e),
                // The batch breaks a rule of the store: save one by one and
                // dead-letter only the messages that cannot be stored, so one
                // bad record cannot hold up (or stop) the pipeline.
                Err(e) => {
                    tracing::warn!(error = %e, n = messages.len(), "batch refused; saving messages one by one");
                    let mut total = BatchSaveMessagesResponse::default();
                    for (m, r) in messages.into_iter().zip(sources) {
                        match task.retry("save", &shutdown, || save(vec![m.clone()])).await {
                            Ok(one) => {
                                total.inserted += one.inserted;
                                total.duplicates += one.duplicates;
                            }
                            Err(e) if e.code.is_retryable() => return Err(e),
                            Err(e) => task.dead_letter(r, groups::TASK_PERSIST, &format!("cannot store message: {e}")).await,
                        }
                    }
                    total
                }
            };
            task.metrics.messages_persisted.with_label_values(&["inserted"]).inc_by(out.inserted.max(0) as u64);
            task.metrics.messages_persisted.with_label_values(&["duplicate"]).inc_by(out.duplicates.max(0) as u64);
            Ok(())
        }
    })
    .await
}

/// The fan-out consumer: large groups and the world room.
pub async fn run_fanout(task: Task, shutdown: Shutdown) -> AppResult<()> {
    let t = task.clone();
    consume(&task, groups::TASK_FANOUT, topics::FANOUT, 64, &shutdown, |records| {
        let task = t.clone();
        let shutdown = shutdown.clone();
        async move {
            for r in &records {
                let ft = match codec::decode::<FanoutTask>(r) {
                    Ok(FanoutTask { message: Some(m), exclude_user_ids, exclude_conn_id }) => (m, exclude_user_ids, exclude_conn_id),
                    Ok(_) => {
                        task.dead_letter(r, groups::TASK_FANOUT, "FanoutTask without a message").await;
                        continue;
                    }
                    Err(e) => {
                        task.dead_letter(r, groups::TASK_FANOUT, &format!("undecodable FanoutTask: {e}")).await;
                        continue;
                    }
                };
                let trace = codec::trace_id(r);
                match task.retry("fan-out", &shutdown, || fan_out(&task, &ft.0, &ft.1, &ft.2, &trace)).await {
                    Ok(()) => {}
                    Err(e) if e.code.is_retryable() => return Err(e),
                    Err(e) => task.dead_letter(r, groups::TASK_FANOUT, &format!("fan-out failed: {e}")).await,
                }
            }
            Ok(())
        }
    })
    .await
}

/// Pages through the members and pushes to those online. Re-running it
/// after a partial failure may deliver some copies twice; clients drop
/// duplicates by message id (at-least-once, API.md).
async fn fan_out(
    task: &Task,
    message: &gochat_proto::common::Message,
    exclude_users: &[i64],
    exclude_conn: &str,
    trace: &str,
) -> AppResult<()> {
    let payload = Payload::Message(message.clone());
    let mut after = 0;
    loop {
        let req = ListMemberIdsRequest {
            conversation_id: message.conversation_id.clone(),
            after_user_id: after,
            limit: task.config.get().task.fanout_page as i32,
        };
        let page = rpc(task.repo.list_member_ids(Request::new(req))).await?;
        if let Some(last) = page.user_ids.last() {
            after = *last;
        }
        let ids: Vec<i64> = page.user_ids.into_iter().filter(|id| !exclude_users.contains(id)).collect();
        if !ids.is_empty() {
            let presence = rpc(task.repo.get_presence(Request::new(UserIds { user_ids: ids }))).await?.entries;
            let n = push::push(task.bus.as_ref(), &message.conversation_id, trace, &presence, &payload, exclude_conn, None)
                .await
                .map_err(AppError::from)?;
            task.metrics.fanout_deliveries.with_label_values(&["downstream"]).inc_by(n as u64);
        }
        if !page.has_more {
            return Ok(());
        }
    }
}
