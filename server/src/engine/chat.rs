//! The chat service: what a connection or a REST call can do to a room's live
//! stream (post, open with or without a resume point, close, relay events),
//! independent of how messages are sequenced and fanned out (see [`crate::bus`]).
//!
//! Opening a room is exact: the connection's cursor holds live messages
//! (`Resuming`) before the hub subscribes it, the room's newest seq is read
//! after, and the replay of what was missed plus the held messages newer than
//! it are written in order. No message is lost or repeated in between.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::bus::{Audience, Bus, BusError};
use crate::engine::hub::{Connection, Hub, Outbound, Replay};
use crate::model::{Author, Id, Message, MessageKind, Room, RoomKind, Session};
use crate::store::{Store, StoreError};
use crate::sync::lock;
use crate::wire::frames::{PresenceStatus, ServerFrame, encode};

pub use crate::bus::MAX_RESUME;
/// Typing and read frames per user per second, after a burst.
const EVENTS_PER_SEC: NonZeroU32 = NonZeroU32::new(5).unwrap();
const EVENT_BURST: NonZeroU32 = NonZeroU32::new(20).unwrap();
/// How long a membership the store confirmed is trusted for posting. A
/// removal reaches other pods as an eviction message; if that is lost, the
/// removed user can post for at most this long.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(5);
/// How often a pod re-reads the membership of every room open on it and
/// stops delivering to connections whose user is no longer a member (or
/// whose room is gone), eviction message or not.
pub const MEMBERSHIP_SWEEP: Duration = Duration::from_secs(10);
/// After a membership check found the store unreachable, how long posts
/// trust the subscription without asking it again (a check waits for the
/// driver's timeout, seconds, when the store is down).
const STORE_PROBE: Duration = Duration::from_secs(10);
/// Join, leave, resume, auth and ping frames per user per second, after a
/// burst big enough for several tabs reopening dozens of rooms at once.
const CONTROL_PER_SEC: NonZeroU32 = NonZeroU32::new(20).unwrap();
const CONTROL_BURST: NonZeroU32 = NonZeroU32::new(200).unwrap();
/// Reads whose cost grows with the room (a search, history by `offset`), in
/// units per user per second, after a burst: see [`Chat::take_read`].
const READS_PER_SEC: NonZeroU32 = NonZeroU32::new(10).unwrap();
const READ_BURST: NonZeroU32 = NonZeroU32::new(100).unwrap();
/// A resume costs one more control frame per this many bytes it read: a
/// replay of 2 MiB is the work of 32 frames, not one.
const REPLAY_BYTES_PER_FRAME: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("you are not in this room")]
    NotSubscribed,
    #[error("no such room")]
    NoSuchRoom,
    #[error("too many messages; retry in {0:?}")]
    RateLimited(Duration),
    #[error("missed more than {MAX_RESUME} messages; load them with the history API, then resume")]
    TooFarBehind,
    #[error("no such message in this room")]
    NoSuchMessage,
    #[error("no such attachment of yours in this room")]
    NoSuchAttachment,
    #[error("{0}")]
    NotAllowed(&'static str),
    #[error("{0}")]
    TooManyReactions(&'static str),
    #[error("messaging is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<BusError> for ChatError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::Store(e) => ChatError::Store(e),
            BusError::Unavailable(detail) => ChatError::Unavailable(detail),
            BusError::Internal(detail) => ChatError::Store(StoreError::Internal(detail)),
        }
    }
}

/// What a member posts: text, files, or both; maybe in a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub content: String,
    /// A reply in the thread of the message at this seq.
    pub reply_to: Option<u64>,
    /// Files uploaded to the room by the sender.
    pub attachments: Vec<Id>,
}

/// What a change does to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Its new text.
    Edit(String),
    Delete,
    /// The sender's reaction, an emoji, added or taken back.
    React(String),
    Unreact(String),
}

/// A membership change made through the REST API, for its system message.
#[derive(Debug, Clone, Copy)]
pub enum Membership<'a> {
    Added { by: &'a str },
    Left,
    Removed { by: &'a str },
}

pub struct Chat {
    store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    bus: Arc<dyn Bus>,
    limiter: DefaultKeyedRateLimiter<Id>,
    /// Typing and read markers: not stored, but fanned out to the whole room,
    /// so they get a budget of their own.
    event_limiter: DefaultKeyedRateLimiter<Id>,
    /// Join, leave, resume, auth and ping: each costs a store read, a replay
    /// or a fan-out of presence, so they are budgeted too.
    control_limiter: DefaultKeyedRateLimiter<Id>,
    /// Searches and history read by offset: their cost grows with the
    /// rooms' size, so they have a budget of their own, charged by cost.
    read_limiter: DefaultKeyedRateLimiter<Id>,
    /// (room, user) memberships the store confirmed, and when.
    confirmed_members: Mutex<HashMap<(Id, Id), Instant>>,
    /// Until when the store is taken to be down (see `confirm_member`).
    store_down_until: Mutex<Option<Instant>>,
    pod: String,
}

impl Chat {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        pod: &str,
        per_sec: u32,
        burst: u32,
    ) -> Self {
        let per_sec = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            store,
            hub,
            bus,
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            event_limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(EVENTS_PER_SEC).allow_burst(EVENT_BURST),
            ),
            control_limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(CONTROL_PER_SEC).allow_burst(CONTROL_BURST),
            ),
            read_limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(READS_PER_SEC).allow_burst(READ_BURST),
            ),
            confirmed_members: Mutex::default(),
            store_down_until: Mutex::default(),
            pod: pod.to_owned(),
        }
    }

    /// Takes one message of `user`'s budget for a REST change that posts a
    /// system message or changes rooms (create, join, leave, add, remove,
    /// promote, delete, open a direct room): looping over them would
    /// otherwise flood a room with system messages.
    pub fn take_change(&self, user: Id) -> Result<(), ChatError> {
        Self::take(&self.limiter, user)
    }

    /// Takes one control frame (join, leave, resume, auth, ping) of `user`'s budget.
    pub fn take_control(&self, user: Id) -> Result<(), ChatError> {
        Self::take(&self.control_limiter, user)
    }

    /// Takes `units` of `user`'s read budget (at most the whole burst), or
    /// says how long to wait: a search costs 5, a history page 1 per 1,000
    /// messages its `offset` skips.
    pub fn take_read(&self, user: Id, units: u32) -> Result<(), ChatError> {
        let units = NonZeroU32::new(units.min(READ_BURST.get())).unwrap_or(NonZeroU32::MIN);
        match self.read_limiter.check_key_n(&user, units) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ChatError::RateLimited(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // Never more than the burst: unreachable, and no reason to refuse.
            Err(_) => Ok(()),
        }
    }

    /// Charges `user`'s control budget for a replay that read `bytes`, or
    /// empties it when it has less left: the next frames then wait.
    fn charge_replay(&self, user: Id, bytes: usize) {
        let mut owed = u32::try_from(bytes / REPLAY_BYTES_PER_FRAME).unwrap_or(u32::MAX);
        let mut step = owed.min(CONTROL_BURST.get());
        while let Some(cells) = NonZeroU32::new(step.min(owed)) {
            match self.control_limiter.check_key_n(&user, cells) {
                Ok(Ok(())) => owed -= cells.get(),
                // Fewer left than that: take what there is, halving.
                _ => step /= 2,
            }
        }
    }

    pub fn bus_name(&self) -> &'static str {
        self.bus.name()
    }

    /// Takes one token of `key`'s budget in `limiter`, or says how long to wait.
    fn take(limiter: &DefaultKeyedRateLimiter<Id>, key: Id) -> Result<(), ChatError> {
        limiter.check_key(&key).map_err(|not_until| {
            ChatError::RateLimited(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }

    /// Relays a member's typing or read frame to a room open on `connection`,
    /// within the user's event budget.
    pub async fn relay_from(
        &self,
        connection: &Connection,
        room: Id,
        frame: &ServerFrame,
    ) -> Result<(), ChatError> {
        if !self.hub.is_subscribed(room, connection.id) {
            return Err(ChatError::NotSubscribed);
        }
        Self::take(&self.event_limiter, connection.user)?;
        self.relay(room, frame).await;
        Ok(())
    }

    /// Drops rate-limiter state of users idle long enough to have a full bucket.
    pub fn forget_idle_users(&self) {
        self.limiter.retain_recent();
        self.event_limiter.retain_recent();
        self.control_limiter.retain_recent();
        self.read_limiter.retain_recent();
        lock(&self.confirmed_members).retain(|_, at| at.elapsed() < MEMBERSHIP_TTL);
    }

    /// Posts a member's message from `connection`. A retry with the same
    /// `client_id` returns the message stored the first time.
    pub async fn post(
        &self,
        connection: &Connection,
        room: Id,
        post: Post,
        client_id: Option<String>,
    ) -> Result<Message, ChatError> {
        let Post {
            content,
            reply_to,
            attachments,
        } = post;
        self.admit(connection, room).await?;
        if let Some(parent) = reply_to {
            // Threads are one level deep, as in most chats: a reply answers a
            // message of the room's main line.
            self.live_text_message(room, parent)
                .await?
                .filter(|m| m.reply_to.is_none())
                .ok_or(ChatError::NoSuchMessage)?;
        }
        let attachments = self.attachments(room, connection.user, attachments).await?;
        let (mentions, mentions_room) = self.mentions(room, connection.user, &content).await;
        let draft = Message {
            reply_to,
            mentions,
            mentions_room,
            attachments,
            ..draft(room, &connection.author(), MessageKind::Text, content)
        };
        self.append_from(connection, draft, client_id).await
    }

    /// The files `ids` names, each uploaded by `sender` into `room` (a file
    /// is posted where it was uploaded, by who uploaded it; anything else
    /// would let one room's members read another's).
    async fn attachments(
        &self,
        room: Id,
        sender: Id,
        ids: Vec<Id>,
    ) -> Result<Vec<crate::model::AttachedFile>, ChatError> {
        let mut files: Vec<crate::model::AttachedFile> = Vec::with_capacity(ids.len());
        for id in ids {
            if files.iter().any(|f| f.id == id) {
                continue;
            }
            let attachment = self
                .store
                .attachment(id)
                .await?
                .filter(|a| a.room_id == room && a.user_id == sender)
                .ok_or(ChatError::NoSuchAttachment)?;
            files.push(attachment.file);
        }
        // Sent before the message goes out, so a file a message names never
        // expires; one that expired meanwhile is no file to send.
        let ids: Vec<Id> = files.iter().map(|f| f.id).collect();
        if !ids.is_empty() && self.store.mark_sent(&ids).await? < ids.len() as u64 {
            return Err(ChatError::NoSuchAttachment);
        }
        Ok(files)
    }

    /// The text message at `seq` in `room`, from the room's recent log or
    /// the store, if there is one.
    async fn text_message(&self, room: Id, seq: u64) -> Result<Option<Message>, ChatError> {
        Ok(self
            .bus
            .missed(room, seq.saturating_sub(1), seq, usize::MAX)
            .await?
            .into_iter()
            .flatten()
            .find(|m| m.seq == seq && m.kind == MessageKind::Text))
    }

    /// The text message at `seq` as it is now (its changes applied), unless
    /// it was deleted: a deleted message takes no edit, reaction or reply
    /// (they were stored, sent and indexed). Its changes are looked up in
    /// the store, so one made in the last moment, not persisted yet, is
    /// missed, and while the store is down the message counts as it was
    /// posted, as chat goes on without it.
    async fn live_text_message(&self, room: Id, seq: u64) -> Result<Option<Message>, ChatError> {
        let Some(mut message) = self.text_message(room, seq).await? else {
            return Ok(None);
        };
        match self.store.changes_of(room, &[seq]).await {
            Ok(changes) => {
                crate::model::apply_changes(std::slice::from_mut(&mut message), &changes)
            }
            Err(e) => {
                tracing::warn!(error = %e, room_id = %room, seq, "cannot tell how a message was changed");
            }
        }
        Ok(Some(message).filter(|m| !m.deleted))
    }

    /// The members `content` mentions (`@username`, not the sender), and
    /// whether it calls the whole room (`@room`: its owner's and admins'
    /// right; anyone else's is plain text). Best effort: while the database
    /// cannot say, the message goes out without mentions rather than not
    /// at all.
    async fn mentions(&self, room: Id, sender: Id, content: &str) -> (Vec<Id>, bool) {
        let mentioned = crate::mention::mentioned(content);
        if mentioned.names.is_empty() && !mentioned.room {
            return (Vec::new(), false);
        }
        let room = match self.store.room(room).await {
            Ok(Some(room)) => room,
            Ok(None) => return (Vec::new(), false),
            Err(e) => {
                tracing::warn!(error = %e, room_id = %room, "cannot resolve mentions");
                return (Vec::new(), false);
            }
        };
        let mut members = Vec::new();
        for name in &mentioned.names {
            match self.store.user_by_username(name).await {
                Ok(Some(user)) if user.id != sender && room.is_member(user.id) => {
                    members.push(user.id)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, room_id = %room.id, "cannot resolve a mention");
                    break;
                }
            }
        }
        (members, mentioned.room && room.can_manage_members(sender))
    }

    /// What every write to a room checks first: the room open on this
    /// connection, the sender's message rate, and their membership.
    async fn admit(&self, connection: &Connection, room: Id) -> Result<(), ChatError> {
        if !self.hub.is_subscribed(room, connection.id) {
            return Err(ChatError::NotSubscribed);
        }
        Self::take(&self.limiter, connection.user)?;
        self.confirm_member(room, connection.user).await
    }

    /// Appends a message or a change from `connection` to its room's stream.
    async fn append_from(
        &self,
        connection: &Connection,
        draft: Message,
        client_id: Option<String>,
    ) -> Result<Message, ChatError> {
        // A client_id names one message (or change) of one sender in one room.
        let dedupe = client_id.map(|c| format!("{}:{c}", connection.user));
        Ok(self.bus.append(draft, dedupe).await?)
    }

    /// Changes the message at `target` in `room` from `connection`: a new
    /// text (its author only), or a deletion (its author, or the room's
    /// owner or an admin). The change is itself appended to the room's
    /// stream with a seq of its own, so live delivery, acks, dedupe by
    /// `client_id` and resume carry it exactly as they carry messages.
    pub async fn change(
        &self,
        connection: &Connection,
        room: Id,
        target: u64,
        change: Change,
        client_id: Option<String>,
    ) -> Result<Message, ChatError> {
        self.admit(connection, room).await?;
        let original = self
            .live_text_message(room, target)
            .await?
            .ok_or(ChatError::NoSuchMessage)?;
        let own = original.user_id == connection.user;
        let (kind, content) = match change {
            Change::Edit(_) if !own => {
                return Err(ChatError::NotAllowed("only its author can edit a message"));
            }
            Change::Edit(content) => (MessageKind::Edit, content),
            Change::Delete => {
                if !own {
                    let room = self.store.room(room).await?.ok_or(ChatError::NoSuchRoom)?;
                    if !room.can_manage_members(connection.user) {
                        return Err(ChatError::NotAllowed(
                            "only its author, the room's owner or an admin can delete a message",
                        ));
                    }
                }
                (MessageKind::Delete, String::new())
            }
            // Any member may react to a message that is there, within a
            // bounded set of reactions per message and per member.
            Change::React(emoji) => {
                check_reactions(&original, connection.user, &emoji)?;
                (MessageKind::React, emoji)
            }
            Change::Unreact(emoji) => (MessageKind::Unreact, emoji),
        };
        let draft = Message {
            target_seq: Some(target),
            ..draft(room, &connection.author(), kind, content)
        };
        let appended = self.append_from(connection, draft, client_id).await?;
        if kind == MessageKind::Delete && !original.attachments.is_empty() {
            // A deleted message's files go with it. Best effort: the
            // deletion stands either way, and the room's deletion would
            // still take them.
            let ids: Vec<Id> = original.attachments.iter().map(|f| f.id).collect();
            if let Err(e) = self.store.delete_attachments(&ids).await {
                tracing::warn!(error = %e, room_id = %room, "cannot delete a deleted message's files");
            }
        }
        Ok(appended)
    }

    /// Whether `user` is still a member of `room`, from the store at most
    /// [`MEMBERSHIP_TTL`] ago. The live subscription alone is not proof: it
    /// ends on other pods only when the eviction message arrives. A user found
    /// removed is evicted here and now. While the store is unreachable the
    /// subscription is trusted, so a database outage does not stop chat.
    async fn confirm_member(&self, room: Id, user: Id) -> Result<(), ChatError> {
        let fresh = lock(&self.confirmed_members)
            .get(&(room, user))
            .is_some_and(|at| at.elapsed() < MEMBERSHIP_TTL);
        if fresh {
            return Ok(());
        }
        // While the database is known to be down, do not wait for it on
        // every post: one post probes it per STORE_PROBE.
        if lock(&self.store_down_until).is_some_and(|until| Instant::now() < until) {
            return Ok(());
        }
        let member = match self.store.room(room).await {
            Ok(Some(current)) if current.kind == RoomKind::Direct && current.is_member(user) => {
                // The other one may have blocked this one since.
                let other = current.members.iter().find(|m| **m != user).copied();
                let blocked = match other {
                    Some(other) => self
                        .store
                        .user(other)
                        .await?
                        .is_some_and(|o| o.blocked.contains(&user)),
                    None => false,
                };
                if blocked {
                    return Err(ChatError::NotAllowed(
                        "the other member of this direct room blocked you",
                    ));
                }
                true
            }
            Ok(current) => current.is_some_and(|r| r.is_member(user)),
            // Chat goes on while the database is down (messages wait in the
            // persist stream); so does the live subscription's word for it.
            // No removal can be made meanwhile: it needs the database too.
            Err(StoreError::Unavailable(_)) => {
                *lock(&self.store_down_until) = Some(Instant::now() + STORE_PROBE);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if member {
            lock(&self.confirmed_members).insert((room, user), Instant::now());
            Ok(())
        } else {
            lock(&self.confirmed_members).remove(&(room, user));
            tracing::info!(room_id = %room, user_id = %user, "a removed member was still subscribed: evicted");
            self.hub.evict(room, Some(user));
            Err(ChatError::NotSubscribed)
        }
    }

    /// Forgets which rooms `user` was confirmed a member of, so their next
    /// post asks the store again: someone blocked them, and their direct
    /// room must stop taking their messages now (see `confirm_member`).
    pub fn reconfirm(&self, user: Id) {
        lock(&self.confirmed_members).retain(|(_, member), _| *member != user);
    }

    /// Re-reads the membership of every room open on this pod and stops
    /// delivery to whoever is no longer in it: the guarantee that a removed
    /// member stops reading does not rest on an eviction message arriving.
    /// One store read per open room per [`MEMBERSHIP_SWEEP`].
    pub async fn sweep_memberships(&self) {
        for room in self.hub.open_rooms() {
            if lock(&self.store_down_until).is_some_and(|until| Instant::now() < until) {
                return;
            }
            let current = match self.store.room(room).await {
                Ok(current) => current,
                Err(e) => {
                    tracing::warn!(room_id = %room, error = %e, "membership sweep: cannot read the room");
                    if matches!(e, StoreError::Unavailable(_)) {
                        *lock(&self.store_down_until) = Some(Instant::now() + STORE_PROBE);
                    }
                    continue;
                }
            };
            for connection in self.hub.subscribers(room) {
                if !current
                    .as_ref()
                    .is_some_and(|r| r.is_member(connection.user))
                {
                    tracing::info!(room_id = %room, user_id = %connection.user, "membership sweep: evicted a non-member");
                    self.hub.evict(room, Some(connection.user));
                }
            }
        }
    }

    /// Posts a server message about `about` (joins, leaves, room events).
    pub async fn post_system(
        &self,
        room: Id,
        about: &Author,
        content: String,
    ) -> Result<Message, ChatError> {
        Ok(self
            .bus
            .append(draft(room, about, MessageKind::System, content), None)
            .await?)
    }

    /// The room if `user` may see it.
    pub async fn visible_room(&self, room: Id, user: Id) -> Result<Room, ChatError> {
        self.store
            .room(room)
            .await?
            .filter(|r| r.is_visible_to(user))
            .ok_or(ChatError::NoSuchRoom)
    }

    /// Makes `author` a member of a room they can see (public rooms are open),
    /// announcing the join with a system message. Already a member: no change.
    pub async fn ensure_member(&self, room: Id, author: &Author) -> Result<Room, ChatError> {
        let room = self.visible_room(room, author.id).await?;
        if room.is_member(author.id) {
            return Ok(room);
        }
        // Joining posts a system message: it spends the message budget,
        // however the join came (REST, a `join` frame, `/ws?room_id=`).
        Self::take(&self.limiter, author.id)?;
        let room = self
            .store
            .add_member(room.id, author.id)
            .await?
            .ok_or(ChatError::NoSuchRoom)?;
        self.post_system(
            room.id,
            author,
            format!("{} joined the room", author.username),
        )
        .await?;
        Ok(room)
    }

    /// Announces a membership change made over REST, and stops live delivery to
    /// someone who is no longer a member, on every pod.
    pub async fn membership_changed(
        &self,
        room: Id,
        who: &Author,
        change: Membership<'_>,
    ) -> Result<(), ChatError> {
        let content = match change {
            Membership::Added { by } => format!("{} was added by {by}", who.username),
            Membership::Left => format!("{} left the room", who.username),
            Membership::Removed { by } => format!("{} was removed by {by}", who.username),
        };
        if !matches!(change, Membership::Added { .. }) {
            self.bus.evict(room, Some(who.id)).await;
        }
        self.post_system(room, who, content).await?;
        Ok(())
    }

    /// Sends `frame` to every connection of `audience`, on every pod: a
    /// change to their room lists, or to someone's profile.
    pub async fn notify(&self, audience: Audience, frame: &ServerFrame) {
        self.bus.notify(audience, encode(frame)).await;
    }

    /// The room is gone: nobody receives it any more.
    pub async fn room_deleted(&self, room: Id) {
        self.bus.evict(room, None).await;
    }

    /// Starts live delivery of `room` to `connection`. With `resume_after`, first
    /// replays the messages after that seq; without, answers `joined` with the
    /// room's newest seq.
    pub async fn open(
        &self,
        connection: &Arc<Connection>,
        room: Id,
        resume_after: Option<u64>,
    ) -> Result<(), ChatError> {
        let was_open = self.hub.is_subscribed(room, connection.id);
        let first_here = self
            .hub
            .user_subscriptions(room, connection.user)
            .is_empty();
        connection.send(Outbound::Resuming { room });
        self.hub.subscribe(room, connection);
        let opened = self
            .replay(
                connection.user,
                room,
                resume_after,
                connection.max_replay_bytes(),
            )
            .await;
        let (frame, replay, upto) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                connection.send(Outbound::Reset { room });
                if !was_open {
                    self.hub.unsubscribe(room, connection.id);
                    self.release(room).await;
                }
                return Err(e);
            }
        };
        connection.send(Outbound::Replayed(Box::new(Replay {
            room,
            frame,
            replay,
            upto,
        })));
        self.session_changed(connection).await;
        if first_here {
            self.announce(room, connection, PresenceStatus::Online)
                .await;
        }
        Ok(())
    }

    /// Subscribes this pod to the room, then reads where the room is and what
    /// the client missed.
    async fn replay(
        &self,
        user: Id,
        room: Id,
        resume_after: Option<u64>,
        max_bytes: usize,
    ) -> Result<
        (
            axum::extract::ws::Utf8Bytes,
            Vec<(u64, axum::extract::ws::Utf8Bytes)>,
            u64,
        ),
        ChatError,
    > {
        self.bus.subscribe(room).await?;
        let upto = self.bus.newest_seq(room).await?;
        let Some(after) = resume_after else {
            return Ok((
                encode(&ServerFrame::Joined {
                    room_id: room,
                    last_seq: upto,
                }),
                Vec::new(),
                upto,
            ));
        };
        let missed = self.bus.missed(room, after, upto, max_bytes).await?;
        let Some(mut missed) = missed else {
            self.charge_replay(user, max_bytes);
            return Err(ChatError::TooFarBehind);
        };
        crate::model::as_now(&mut missed);
        let replay: Vec<_> = missed.iter().map(|m| (m.seq, encode(m))).collect();
        let bytes = replay.iter().map(|(_, frame)| frame.len()).sum::<usize>();
        self.charge_replay(user, bytes);
        // Bigger than the connection may queue: the client pages history instead.
        if bytes > max_bytes {
            return Err(ChatError::TooFarBehind);
        }
        let frame = encode(&ServerFrame::Resumed {
            room_id: room,
            from_seq: after,
            last_seq: upto,
        });
        Ok((frame, replay, upto))
    }

    /// Stops live delivery of `room` to `connection` (the `leave` frame).
    pub async fn close(&self, connection: &Connection, room: Id) {
        let was_open = self.hub.is_subscribed(room, connection.id);
        self.hub.unsubscribe(room, connection.id);
        connection.send(Outbound::left(
            room,
            encode(&ServerFrame::Left { room_id: room }),
        ));
        // Leaving a room one never opened changes nothing, and must tell
        // nobody: it could otherwise announce presence into any room id.
        if !was_open {
            return;
        }
        self.session_changed(connection).await;
        self.left(room, connection).await;
    }

    /// A connection closed: forget it, tell its rooms if its user is gone,
    /// and, if it was their last anywhere, record when they were last seen.
    pub async fn disconnected(&self, connection: &Connection) {
        self.bus
            .session_closed(connection.user, &self.session_id(connection))
            .await;
        for room in self.hub.unregister(connection.id) {
            self.left(room, connection).await;
        }
        // Another tab on this pod answers it without asking Redis; when
        // Redis cannot say, this pod's word stands.
        let here = !self
            .hub
            .sessions(&self.pod, |c| c.user == connection.user)
            .is_empty();
        let gone = !here
            && self
                .bus
                .sessions_of(connection.user)
                .await
                .map_or(true, |sessions| sessions.is_empty());
        if gone
            && let Err(e) = self
                .store
                .set_last_seen(connection.user, crate::model::now())
                .await
        {
            tracing::warn!(error = %e, user_id = %connection.user, "cannot record when a user was last seen");
        }
    }

    /// A connection opened or changed rooms: update the cluster-wide list.
    pub async fn session_changed(&self, connection: &Connection) {
        let id = connection.id;
        if let Some(session) = self.hub.sessions(&self.pod, |c| c.id == id).pop() {
            self.bus.session_changed(&session).await;
        }
    }

    fn session_id(&self, connection: &Connection) -> String {
        format!("{}/{}", self.pod, connection.id)
    }

    /// `user`'s live connections on every pod.
    pub async fn sessions_of(&self, user: Id) -> Result<Vec<Session>, ChatError> {
        Ok(self.bus.sessions_of(user).await?)
    }

    async fn left(&self, room: Id, connection: &Connection) {
        if self
            .hub
            .user_subscriptions(room, connection.user)
            .is_empty()
        {
            self.announce(room, connection, PresenceStatus::Offline)
                .await;
        }
        self.release(room).await;
    }

    /// Unsubscribes this pod from a room none of its connections want.
    async fn release(&self, room: Id) {
        if self.hub.subscribers(room).is_empty() {
            self.bus.unsubscribe(room).await;
        }
    }

    async fn announce(&self, room: Id, connection: &Connection, status: PresenceStatus) {
        let frame = ServerFrame::Presence {
            room_id: room,
            user_id: connection.user,
            username: connection.username.clone(),
            status,
        };
        self.relay(room, &frame).await;
    }

    /// Relays a seq-less event (typing, read marker, presence) to the room.
    pub async fn relay(&self, room: Id, frame: &ServerFrame) {
        self.bus.publish_event(room, encode(frame)).await;
    }
}

/// Whether `user` may add `emoji` to `message` (its reactions as they are
/// now): a reaction already there may always be joined or repeated; a new
/// one only while the message shows fewer than [`MAX_REACTIONS`] and the
/// member has added fewer than [`MAX_REACTIONS_PER_USER`].
fn check_reactions(message: &Message, user: Id, emoji: &str) -> Result<(), ChatError> {
    use crate::model::{MAX_REACTIONS, MAX_REACTIONS_PER_USER};
    let mine = message
        .reactions
        .values()
        .filter(|users| users.contains(&user))
        .count();
    match message.reactions.get(emoji) {
        Some(users) if users.contains(&user) => Ok(()),
        _ if mine >= MAX_REACTIONS_PER_USER => Err(ChatError::TooManyReactions(
            "you have added the most reactions one member may add to a message",
        )),
        Some(_) => Ok(()),
        None if message.reactions.len() >= MAX_REACTIONS => Err(ChatError::TooManyReactions(
            "this message has the most distinct reactions a message may have",
        )),
        None => Ok(()),
    }
}

fn draft(room: Id, author: &Author, kind: MessageKind, content: String) -> Message {
    Message::new(kind, room, author.id, author.username.clone(), content)
}
