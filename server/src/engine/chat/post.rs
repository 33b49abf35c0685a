//! Posting and changing messages: admission (the room open on the
//! connection, the sender's budget, the membership), replies, attachments,
//! mentions, and edits, deletions and reactions of a message as it is now.

use super::{Change, Chat, ChatError, Post, draft};
use crate::engine::hub::Connection;
use crate::model::{Id, Message, MessageKind};

impl Chat {
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
            self.check_parent(room, parent).await?;
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

    /// Whether a reply may answer the message at `parent`: threads are one
    /// level deep, as in most chats, so it must be a text message of the
    /// room's main line, and not deleted. This pod knows for the room's
    /// recent messages (see `engine::admission`); for older ones it asks.
    async fn check_parent(&self, room: Id, parent: u64) -> Result<(), ChatError> {
        let answerable = match self.hub.admissions.answerable(room, parent) {
            Some(known) => known,
            None => self
                .live_text_message(room, parent)
                .await?
                .is_some_and(|m| m.reply_to.is_none()),
        };
        if answerable {
            Ok(())
        } else {
            Err(ChatError::NoSuchMessage)
        }
    }

    /// The files `ids` names, each uploaded by `sender` into `room` (a file
    /// is posted where it was uploaded, by who uploaded it; anything else
    /// would let one room's members read another's).
    pub(super) async fn attachments(
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
    pub(super) async fn text_message(
        &self,
        room: Id,
        seq: u64,
    ) -> Result<Option<Message>, ChatError> {
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
    pub(super) async fn live_text_message(
        &self,
        room: Id,
        seq: u64,
    ) -> Result<Option<Message>, ChatError> {
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
    /// right; anyone else's is plain text). Names and members this pod knows
    /// (see `engine::admission`) need no read; the room is read only for a
    /// member not known here and for `@room`. Best effort: while the
    /// database cannot say, the message goes out without what it could not
    /// resolve rather than not at all.
    pub(super) async fn mentions(&self, room: Id, sender: Id, content: &str) -> (Vec<Id>, bool) {
        let mentioned = crate::mention::mentioned(content);
        if mentioned.names.is_empty() && !mentioned.room {
            return (Vec::new(), false);
        }
        // Each mentioned user, and whether this pod knows them as a member.
        let mut named: Vec<(Id, bool)> = Vec::new();
        for name in &mentioned.names {
            match self.user_id(name).await {
                Ok(Some(user)) if user != sender => {
                    named.push((user, self.hub.admissions.is_admitted(room, user)));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, room_id = %room, "cannot resolve a mention");
                    break;
                }
            }
        }
        let known = |named: Vec<(Id, bool)>| named.into_iter().filter(|n| n.1).map(|n| n.0);
        if named.iter().all(|(_, known)| *known) && !mentioned.room {
            return (known(named).collect(), false);
        }
        let room = match self.store.room(room).await {
            Ok(Some(room)) => room,
            Ok(None) => return (Vec::new(), false),
            Err(e) => {
                tracing::warn!(error = %e, room_id = %room, "cannot resolve mentions");
                return (known(named).collect(), false);
            }
        };
        let members = named
            .into_iter()
            .filter(|(user, _)| room.is_member(*user))
            .map(|(user, _)| user)
            .collect();
        (members, mentioned.room && room.can_manage_members(sender))
    }

    /// The user named `username` (lower-cased), from this pod's usernames
    /// or, the first time, the store.
    async fn user_id(&self, username: &str) -> Result<Option<Id>, crate::store::StoreError> {
        if let Some(id) = self.usernames.get(username) {
            return Ok(Some(id));
        }
        let id = self.store.user_by_username(username).await?.map(|u| u.id);
        if let Some(id) = id {
            self.usernames.insert(username.to_owned(), id);
        }
        Ok(id)
    }

    /// What every write to a room checks first: the room open on this
    /// connection, the sender's message rate, and their membership.
    pub(super) async fn admit(&self, connection: &Connection, room: Id) -> Result<(), ChatError> {
        if !self.hub.is_subscribed(room, connection.id) {
            return Err(ChatError::NotSubscribed);
        }
        self.limits.message(connection.user)?;
        self.confirm_member(room, connection.user).await
    }

    /// Appends a message or a change from `connection` to its room's stream.
    pub(super) async fn append_from(
        &self,
        connection: &Connection,
        draft: Message,
        client_id: Option<String>,
    ) -> Result<Message, ChatError> {
        // A client_id names one message (or change) of one sender in one room.
        let dedupe = client_id.map(|c| format!("{}:{c}", connection.user));
        self.append(draft, dedupe).await
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
