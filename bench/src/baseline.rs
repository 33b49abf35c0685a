//! The raw batch-insert rate of a MongoDB server: what the persist pipeline
//! is compared with.
//!
//! Documents have the shape and index of the server's `messages` collection
//! (see server/src/store/mongo.rs), and batches are written the way the persist
//! worker writes them: one batch at a time, unordered, of the worker's size. So
//! the ratio of the two rates is what the pipeline (stream reads, acks,
//! decoding) costs on top of the writes it cannot avoid.

use std::time::{Duration, Instant};

use anyhow::Context;
use mongodb::bson::{DateTime, doc, oid::ObjectId};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use serde_json::{Value, json};

/// The persist worker's batch (PERSIST_BATCH in server/src/bus/redis.rs).
pub const BATCH: usize = 500;
const ROOMS: usize = 20;

/// Inserts message documents for `duration` and returns the rate as a JSON
/// summary. When `uri` names a database, into its `messages` collection (with
/// new room ids, beside what is there: a collection the size of the server's
/// costs what the server's costs); otherwise into a scratch database, dropped
/// afterwards.
pub async fn run(uri: &str, duration: Duration) -> anyhow::Result<Value> {
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
    let messages = database.collection::<mongodb::bson::Document>("messages");
    messages
        .create_index(
            IndexModel::builder()
                .keys(doc! {"room_id": 1, "seq": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("room_seq_unique".to_owned())
                        .build(),
                )
                .build(),
        )
        .await
        .context("creating the (room_id, seq) index")?;
    let existing = messages
        .estimated_document_count()
        .await
        .context("counting documents")?;
    let rooms: Vec<ObjectId> = (0..ROOMS).map(|_| ObjectId::new()).collect();
    let user = ObjectId::new();
    let mut seq = [0i64; ROOMS];
    let mut inserted = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let batch: Vec<_> = (0..BATCH)
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
                }
            })
            .collect();
        messages
            .insert_many(batch)
            .ordered(false)
            .await
            .context("insert_many")?;
        inserted += BATCH as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    if scratch && let Err(e) = database.drop().await {
        eprintln!("chat-bench: could not drop the scratch database: {e}");
    }
    Ok(json!({
        "mode": "insert_baseline",
        "database": database.name(),
        "documents_before": existing,
        "batch": BATCH,
        "inserted": inserted,
        "duration_s": seconds,
        "inserts_per_sec": inserted as f64 / seconds,
    }))
}
