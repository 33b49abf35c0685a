//! The engine on its own: a `Chat` over the in-process bus and the embedded
//! store in a temporary directory, connections on loopback sockets. No
//! server, no Redis, no other process; the API and cluster suites drive the
//! same code through real clients.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounter};
use tokio::net::{TcpListener, TcpStream};

use super::{Change, Chat, ChatError, Post};
use crate::bus::local::LocalBus;
use crate::engine::hub::{Connection, Hub, HubLimits};
use crate::model::{HistoryQuery, Id, Room, User, now};
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;

struct Engine {
    chat: Chat,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    /// The client ends of the connections, kept open for the test's length.
    clients: Vec<TcpStream>,
    _dir: tempfile::TempDir,
}

impl Engine {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let hub = Arc::new(Hub::new(
            HubLimits::default(),
            IntCounter::new("frames", "frames").unwrap(),
            Histogram::with_opts(HistogramOpts::new("latency", "latency")).unwrap(),
        ));
        let bus = Arc::new(LocalBus::new(store.clone(), hub.clone(), "test"));
        let latency = Histogram::with_opts(HistogramOpts::new("append", "append")).unwrap();
        let chat = Chat::new(store.clone(), hub.clone(), bus, "test", 1000, 1000, latency);
        Self {
            chat,
            store,
            hub,
            clients: Vec::new(),
            _dir: dir,
        }
    }

    async fn user(&self, name: &str) -> User {
        let user = User {
            id: Id::new(),
            username: name.into(),
            email: format!("{name}@example.com"),
            password_hash: String::new(),
            display_name: None,
            avatar_url: None,
            avatar_color: None,
            created_at: now(),
            last_seen_at: None,
            blocked: Vec::new(),
        };
        self.store.create_user(&user).await.unwrap();
        user
    }

    async fn room(&self, owner: &User, private: bool, members: &[&User]) -> Id {
        let mut room = Room::new_group("general".into(), String::new(), private, owner.id);
        room.members.extend(members.iter().map(|m| m.id));
        self.store.create_room(&room).await.unwrap();
        room.id
    }

    /// A live connection of `user` (its socket's other end kept by the test).
    async fn connect(&mut self, user: &User) -> Arc<Connection> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        self.clients.push(client);
        self.hub
            .register(
                user.id,
                user.username.clone(),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                Arc::new(server),
            )
            .unwrap()
    }

    async fn say(
        &self,
        connection: &Connection,
        room: Id,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<crate::model::Message, ChatError> {
        self.reply(connection, room, text, None, client_id).await
    }

    async fn reply(
        &self,
        connection: &Connection,
        room: Id,
        text: &str,
        reply_to: Option<u64>,
        client_id: Option<&str>,
    ) -> Result<crate::model::Message, ChatError> {
        let post = Post {
            content: text.into(),
            reply_to,
            attachments: Vec::new(),
        };
        self.chat
            .post(connection, room, post, client_id.map(str::to_owned))
            .await
    }
}

#[tokio::test]
async fn posts_are_numbered_stored_before_the_answer_and_retries_are_the_same_message() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let room = engine.room(&alice, false, &[]).await;
    let connection = engine.connect(&alice).await;
    engine.chat.join(&connection, room).await.unwrap();

    let first = engine
        .say(&connection, room, "hello", Some("c1"))
        .await
        .unwrap();
    let retried = engine
        .say(&connection, room, "hello", Some("c1"))
        .await
        .unwrap();
    let second = engine.say(&connection, room, "again", None).await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!((retried.id, retried.seq), (first.id, first.seq));

    let stored = engine
        .store
        .messages(room, HistoryQuery::After { seq: 0, limit: 10 })
        .await
        .unwrap();
    let texts: Vec<&str> = stored.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["hello", "again"], "stored once each, in order");
}

#[tokio::test]
async fn a_room_must_be_open_and_a_private_one_is_for_its_members() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let eve = engine.user("eve").await;
    let public = engine.room(&alice, false, &[]).await;
    let private = engine.room(&alice, true, &[]).await;
    let connection = engine.connect(&eve).await;

    assert!(matches!(
        engine.say(&connection, public, "hi", None).await,
        Err(ChatError::NotSubscribed)
    ));
    // A public room: joining makes eve a member, and her post goes in.
    engine.chat.join(&connection, public).await.unwrap();
    assert_eq!(
        engine
            .say(&connection, public, "hi", None)
            .await
            .unwrap()
            .seq,
        2
    );
    assert!(matches!(
        engine.chat.join(&connection, private).await,
        Err(ChatError::NoSuchRoom)
    ));
    assert!(matches!(
        engine.chat.resume(&connection, private, 0).await,
        Err(ChatError::NoSuchRoom)
    ));
    assert!(!engine.hub.is_subscribed(private, connection.id));
    assert!(matches!(
        engine.say(&connection, private, "let me in", None).await,
        Err(ChatError::NotSubscribed)
    ));
    assert!(
        engine
            .store
            .messages(private, HistoryQuery::After { seq: 0, limit: 10 })
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn only_authors_edit_and_each_member_reacts_a_bounded_number_of_times() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let bob = engine.user("bob").await;
    let room = engine.room(&alice, false, &[&bob]).await;
    let alice_on = engine.connect(&alice).await;
    let bob_on = engine.connect(&bob).await;
    engine.chat.join(&alice_on, room).await.unwrap();
    engine.chat.join(&bob_on, room).await.unwrap();
    let message = engine.say(&alice_on, room, "hello", None).await.unwrap();

    let edit = |text: &str| Change::Edit(text.into());
    assert!(matches!(
        engine
            .chat
            .change(&bob_on, room, message.seq, edit("mine now"), None)
            .await,
        Err(ChatError::NotAllowed(_))
    ));
    let edited = engine
        .chat
        .change(&alice_on, room, message.seq, edit("hello all"), None)
        .await
        .unwrap();
    assert_eq!(edited.target_seq, Some(message.seq));

    let emoji = [
        "👍", "❤️", "😂", "🎉", "🙏", "🔥", "👀", "😮", "😢", "🚀", "✅",
    ];
    let mut refused = 0;
    for e in emoji {
        match engine
            .chat
            .change(&bob_on, room, message.seq, Change::React(e.into()), None)
            .await
        {
            Ok(_) => {}
            Err(ChatError::TooManyReactions(_)) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(
        refused,
        emoji.len() - crate::model::MAX_REACTIONS_PER_USER,
        "one member's reactions stop at the bound"
    );
}

#[tokio::test]
async fn a_resume_replays_what_was_missed_as_it_is_now() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let room = engine.room(&alice, false, &[]).await;
    let connection = engine.connect(&alice).await;
    engine.chat.join(&connection, room).await.unwrap();
    let kept = engine.say(&connection, room, "kept", None).await.unwrap();
    let gone = engine.say(&connection, room, "secret", None).await.unwrap();
    engine
        .chat
        .change(&connection, room, gone.seq, Change::Delete, None)
        .await
        .unwrap();

    let (_, replay, upto) = engine
        .chat
        .replay(alice.id, room, Some(0), 1 << 20)
        .await
        .unwrap();
    assert_eq!(upto, 3);
    let seqs: Vec<u64> = replay.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [kept.seq, gone.seq, 3], "no gap in the seqs");
    let text: String = replay.iter().map(|(_, frame)| frame.as_str()).collect();
    assert!(text.contains("kept"));
    assert!(
        !text.contains("secret"),
        "a deleted message replays without its text: {text}"
    );
}

#[tokio::test]
async fn a_member_is_known_until_evicted_and_a_lost_eviction_is_swept() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let bob = engine.user("bob").await;
    let room = engine.room(&alice, true, &[&bob]).await;
    let bob_on = engine.connect(&bob).await;
    engine.chat.join(&bob_on, room).await.unwrap();
    engine.say(&bob_on, room, "hi", None).await.unwrap();

    // Removed in the store with no eviction (as if its message were lost):
    // this pod still knows bob as a member, so his posts do not wait for
    // the store ...
    engine.store.remove_member(room, bob.id).await.unwrap();
    engine.say(&bob_on, room, "still", None).await.unwrap();
    // ... until the sweep finds him gone and evicts him.
    engine.chat.sweep_memberships().await;
    assert!(matches!(
        engine.say(&bob_on, room, "sneaky", None).await,
        Err(ChatError::NotSubscribed)
    ));

    // An eviction that arrives is at once.
    let carol = engine.user("carol").await;
    engine.store.add_member(room, carol.id).await.unwrap();
    let carol_on = engine.connect(&carol).await;
    engine.chat.join(&carol_on, room).await.unwrap();
    engine.say(&carol_on, room, "hello", None).await.unwrap();
    engine.store.remove_member(room, carol.id).await.unwrap();
    engine
        .chat
        .membership_changed(room, &carol_on.author(), super::Membership::Left)
        .await
        .unwrap();
    assert!(matches!(
        engine.say(&carol_on, room, "gone", None).await,
        Err(ChatError::NotSubscribed)
    ));
}

#[tokio::test]
async fn a_block_stops_the_blocked_member_s_posts_in_the_direct_room() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let mallory = engine.user("mallory").await;
    let dm = Room::new_direct(alice.id, mallory.id, String::new());
    engine.store.create_room(&dm).await.unwrap();
    let mallory_on = engine.connect(&mallory).await;
    engine.chat.join(&mallory_on, dm.id).await.unwrap();
    engine.say(&mallory_on, dm.id, "hey", None).await.unwrap();

    let blocked = crate::model::ProfileUpdate {
        blocked: Some(vec![mallory.id]),
        ..Default::default()
    };
    engine
        .store
        .update_profile(alice.id, &blocked)
        .await
        .unwrap();
    // As another pod sees it: the block reaches it with the sweep.
    engine.say(&mallory_on, dm.id, "hey?", None).await.unwrap();
    engine.chat.sweep_memberships().await;
    assert!(matches!(
        engine.say(&mallory_on, dm.id, "hey!", None).await,
        Err(ChatError::NotAllowed(_))
    ));
    // Where the block was made it is at once.
    let unblocked = crate::model::ProfileUpdate {
        blocked: Some(Vec::new()),
        ..Default::default()
    };
    engine
        .store
        .update_profile(alice.id, &unblocked)
        .await
        .unwrap();
    engine.say(&mallory_on, dm.id, "sorry", None).await.unwrap();
    engine
        .store
        .update_profile(alice.id, &blocked)
        .await
        .unwrap();
    engine.chat.reconfirm(mallory.id);
    assert!(matches!(
        engine.say(&mallory_on, dm.id, "again", None).await,
        Err(ChatError::NotAllowed(_))
    ));
}

#[tokio::test]
async fn replies_answer_live_messages_of_the_main_line_known_here_or_in_the_store() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let room = engine.room(&alice, false, &[]).await;
    let connection = engine.connect(&alice).await;
    // Before this pod listens to the room: only the store knows this one.
    let old = crate::model::Message {
        seq: 1,
        ..crate::model::Message::new(
            crate::model::MessageKind::Text,
            room,
            alice.id,
            "alice".into(),
            "from before".into(),
        )
    };
    engine.store.insert_message(&old, None).await.unwrap();
    engine.chat.join(&connection, room).await.unwrap();
    let parent = engine
        .say(&connection, room, "a question", None)
        .await
        .unwrap();
    assert_eq!(parent.seq, 2);

    let answer = engine
        .reply(&connection, room, "an answer", Some(parent.seq), None)
        .await
        .unwrap();
    assert_eq!(answer.reply_to, Some(parent.seq));
    engine
        .reply(&connection, room, "to the old one", Some(1), None)
        .await
        .unwrap();
    for (seq, why) in [
        (answer.seq, "a reply opens no thread"),
        (99, "no such message yet"),
    ] {
        assert!(
            matches!(
                engine.reply(&connection, room, "?", Some(seq), None).await,
                Err(ChatError::NoSuchMessage)
            ),
            "{why}"
        );
    }
    engine
        .chat
        .change(&connection, room, parent.seq, Change::Delete, None)
        .await
        .unwrap();
    assert!(matches!(
        engine
            .reply(&connection, room, "too late", Some(parent.seq), None)
            .await,
        Err(ChatError::NoSuchMessage)
    ));
}

#[tokio::test]
async fn mentions_resolve_members_known_here_and_ask_the_store_for_others() {
    let mut engine = Engine::new();
    let alice = engine.user("alice").await;
    let bob = engine.user("bob").await;
    let carol = engine.user("carol").await;
    let room = engine.room(&alice, false, &[&bob]).await;
    let connection = engine.connect(&alice).await;
    engine.chat.join(&connection, room).await.unwrap();

    let text = "@bob @Carol @alice @nobody";
    let message = engine.say(&connection, room, text, None).await.unwrap();
    assert_eq!(
        message.mentions,
        [bob.id],
        "carol is no member, alice the sender"
    );

    // Bob leaves in the store alone (as if his eviction were lost): this
    // pod still knows him as a member, so mentioning him asks nothing ...
    engine.store.remove_member(room, bob.id).await.unwrap();
    engine.store.add_member(room, carol.id).await.unwrap();
    let mentions = async |text: &str| {
        engine
            .say(&connection, room, text, None)
            .await
            .unwrap()
            .mentions
    };
    assert_eq!(mentions("@bob").await, [bob.id]);
    // ... while one it does not know reads the room, which tells it all.
    assert_eq!(mentions("@bob @carol").await, [carol.id]);
    engine.chat.sweep_memberships().await;
    assert_eq!(mentions("@bob").await, Vec::<Id>::new());
}
