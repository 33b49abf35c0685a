//! The in-process bus for a single server (no CHAT_REDIS_URL).
//!
//! Each room has a sequencing lock. Under it a message gets the next `seq`, is
//! written to the store (it is acked only after the write), and is handed to the
//! hub, so every subscriber sees a room's messages in seq order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use super::{Audience, Bus, BusError, Deliver};
use crate::model::{Id, Message, Session};
use crate::store::{Inserted, Store};
use crate::sync::lock;
use crate::wire::frames::encode;

type Sequencer = Arc<tokio::sync::Mutex<Option<u64>>>;

pub(crate) struct LocalBus {
    store: Arc<dyn Store>,
    hub: Arc<dyn Deliver>,
    sequencers: Mutex<HashMap<Id, Sequencer>>,
    pod: String,
}

impl LocalBus {
    pub(crate) fn new(store: Arc<dyn Store>, hub: Arc<dyn Deliver>, pod: &str) -> Self {
        Self {
            store,
            hub,
            sequencers: Mutex::default(),
            pod: pod.to_owned(),
        }
    }

    fn sequencer(&self, room: Id) -> Sequencer {
        lock(&self.sequencers).entry(room).or_default().clone()
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn name(&self) -> &'static str {
        "local"
    }

    /// Retries are deduped by the store, under the room's sequencing lock: the
    /// key is written with the message, so two concurrent retries, or a retry
    /// after a restart, find the first one.
    async fn append(&self, draft: Message, dedupe: Option<String>) -> Result<Message, BusError> {
        let room = draft.room_id;
        let sequencer = self.sequencer(room);
        let mut newest = sequencer.lock().await;
        let mut seq = match *newest {
            Some(seq) => seq + 1,
            None => self.store.newest_seq(room).await? + 1,
        };
        let message = loop {
            let message = Message {
                seq,
                ..draft.clone()
            };
            match self
                .store
                .insert_message(&message, dedupe.as_deref())
                .await?
            {
                Inserted::New => break message,
                Inserted::Duplicate(earlier) => return Ok(*earlier),
                // Another process wrote this seq (two servers on one store without
                // Redis): take the next free one rather than lose the message.
                Inserted::Existing(_) => seq = self.store.newest_seq(room).await? + 1,
            }
        };
        *newest = Some(seq);
        let frame = encode(&message);
        self.hub.message(
            room,
            seq,
            Some(message.timestamp),
            message.thread_role(),
            frame,
        );
        Ok(message)
    }

    async fn newest_seq(&self, room: Id) -> Result<u64, BusError> {
        let sequencer = self.sequencer(room);
        let mut newest = sequencer.lock().await;
        let seq = match *newest {
            Some(seq) => seq,
            None => self.store.newest_seq(room).await?,
        };
        *newest = Some(seq);
        Ok(seq)
    }

    async fn missed(
        &self,
        room: Id,
        after: u64,
        upto: u64,
        max_bytes: usize,
    ) -> Result<Option<Vec<Message>>, BusError> {
        let mut budget = super::ReadBudget::new(max_bytes);
        super::stored_between(
            self.store.as_ref(),
            room,
            after,
            upto.saturating_add(1),
            &mut budget,
        )
        .await
    }

    async fn subscribe(&self, _room: Id) -> Result<(), BusError> {
        Ok(())
    }

    async fn unsubscribe(&self, _room: Id) {}

    async fn publish_event(&self, room: Id, frame: Utf8Bytes) {
        self.hub.event(room, frame);
    }

    async fn notify(&self, audience: Audience, frame: Utf8Bytes) {
        self.hub.notice(&audience, &frame);
    }

    async fn evict(&self, room: Id, user: Option<Id>) {
        self.hub.evict(room, user);
        if user.is_none() {
            lock(&self.sequencers).remove(&room);
        }
    }

    async fn session_changed(&self, _session: &Session) {}

    async fn session_closed(&self, _user: Id, _connection_id: &str) {}

    async fn sessions_of(&self, user: Id) -> Result<Vec<Session>, BusError> {
        Ok(self.hub.sessions(&self.pod, Some(user)))
    }
}
