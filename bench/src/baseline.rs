//! The raw batch-insert rate of a MongoDB server: what the persist pipeline
//! is compared with, and what each index of the `messages` collection costs
//! the server per document.
//!
//! Documents have the shape of the server's `messages` collection (see
//! server/src/store/mongo/documents.rs), with the indexes asked for among the
//! server's own (server/src/store/mongo/indexes.rs), and batches are written
//! the way the persist worker writes them: one batch at a time, unordered. So
//! the ratio of the two rates is what the pipeline (stream reads, acks,
//! decoding) costs on top of the writes it cannot avoid.

use std::time::{Duration, Instant};

use anyhow::Context;
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use serde_json::{Value, json};

use crate::system;

const ROOMS: usize = 20;

/// A secondary index of the server's `messages` collection, as
/// server/src/store/mongo/indexes.rs makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageIndex {
    /// None: the `_id` index alone.
    None,
    /// `room_seq_unique`: history, and a seq names one message of its room.
    Seq,
    /// `room_dedupe_unique`: partial, unique; a sender's key names one message.
    Dedupe,
    /// `room_reply_to_seq`: sparse; a thread's replies.
    Reply,
    /// `room_target_seq`: sparse; the changes of a message.
    Change,
}

impl MessageIndex {
    fn model(self) -> Option<IndexModel> {
        let (keys, options) = match self {
            Self::None => return None,
            Self::Seq => (
                doc! {"room_id": 1, "seq": 1},
                IndexOptions::builder()
                    .unique(true)
                    .name("room_seq_unique".to_owned())
                    .build(),
            ),
            Self::Dedupe => (
                doc! {"room_id": 1, "dedupe": 1},
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! {"dedupe": {"$exists": true}})
                    .name("room_dedupe_unique".to_owned())
                    .build(),
            ),
            Self::Reply => (
                doc! {"room_id": 1, "reply_to": 1, "seq": 1},
                IndexOptions::builder()
                    .sparse(true)
                    .name("room_reply_to_seq".to_owned())
                    .build(),
            ),
            Self::Change => (
                doc! {"room_id": 1, "target_seq": 1},
                IndexOptions::builder()
                    .sparse(true)
                    .name("room_target_seq".to_owned())
                    .build(),
            ),
        };
        Some(IndexModel::builder().keys(keys).options(options).build())
    }
}

/// What to insert, and whose CPU to read meanwhile.
pub struct Options {
    pub duration: Duration,
    /// Documents per `insert_many`.
    pub batch: usize,
    pub indexes: Vec<MessageIndex>,
    /// Processes (LABEL, PID) whose CPU per inserted document is reported:
    /// the MongoDB server's, to see what each index costs it.
    pub cpu_pids: Vec<(String, u32)>,
}

/// Inserts message documents for `options.duration` and returns the rate as a JSON
/// summary. When `uri` names a database, into its `messages` collection (with
/// new room ids, beside what is there: a collection the size of the server's
/// costs what the server's costs); otherwise into a scratch database, dropped
/// afterwards.
pub async fn run(uri: &str, options: &Options) -> anyhow::Result<Value> {
    let client = Client::with_uri_str(uri)
        .await
        .context("connecting to MongoDB")?;
    let (database, scratch) = match client.default_database() {
        Some(database) => (database, false),
        None => (
            client.database(&format!("chat_bench_baseline_{}", std::process::id())),
            true,
        ),
    };
    let messages = database.collection::<Document>("messages");
    let models: Vec<IndexModel> = options.indexes.iter().filter_map(|i| i.model()).collect();
    if !models.is_empty() {
        messages
            .create_indexes(models)
            .await
            .context("creating the indexes")?;
    }
    let existing = messages
        .estimated_document_count()
        .await
        .context("counting documents")?;
    let rooms: Vec<ObjectId> = (0..ROOMS).map(|_| ObjectId::new()).collect();
    let user = ObjectId::new();
    let mut seq = [0i64; ROOMS];
    let mut inserted = 0u64;
    let cpu_before: Vec<_> = options
        .cpu_pids
        .iter()
        .map(|(_, pid)| system::cpu_time(*pid))
        .collect();
    let started = Instant::now();
    while started.elapsed() < options.duration {
        let batch: Vec<_> = (0..options.batch)
            .map(|i| {
                let room = i % ROOMS;
                seq[room] += 1;
                doc! {
                    "_id": ObjectId::new(),
                    "room_id": rooms[room],
                    "seq": seq[room],
                    "type": "text",
                    "user_id": user,
                    "username": "bench-user",
                    // Like the load's messages: a send time in microseconds.
                    "content": format!("{:016}", started.elapsed().as_micros()),
                    "created_at": DateTime::now(),
                    // Like the load's messages, each sent with a client_id.
                    "dedupe": format!("b{}", inserted + i as u64),
                }
            })
            .collect();
        messages
            .insert_many(batch)
            .ordered(false)
            .await
            .context("insert_many")?;
        inserted += options.batch as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu: serde_json::Map<String, Value> = options
        .cpu_pids
        .iter()
        .zip(cpu_before)
        .map(|((label, pid), before)| {
            let used = before.zip(system::cpu_time(*pid)).map(|(b, a)| a.since(b));
            let per_document = |seconds: f64| seconds * 1e6 / inserted.max(1) as f64;
            let figures = used.map(|u| {
                json!({
                    "cpu_us_per_document": per_document(u.total()),
                    "user_cpu_us_per_document": per_document(u.user),
                    "system_cpu_us_per_document": per_document(u.system),
                })
            });
            (label.clone(), figures.unwrap_or(Value::Null))
        })
        .collect();
    if scratch && let Err(e) = database.drop().await {
        eprintln!("chat-bench: could not drop the scratch database: {e}");
    }
    Ok(json!({
        "mode": "insert_baseline",
        "database": database.name(),
        "documents_before": existing,
        "batch": options.batch,
        "indexes": options.indexes.iter().map(|i| format!("{i:?}").to_lowercase()).collect::<Vec<_>>(),
        "cpu": cpu,
        "inserted": inserted,
        "duration_s": seconds,
        "inserts_per_sec": inserted as f64 / seconds,
    }))
}
