//! The store contract: one set of tests written against the `Store` trait and
//! run on both implementations (the embedded store in a temporary directory,
//! MongoDB through the stand-in), for each policy the two implement apart:
//! which records a history page shows, dedupe by key, how changes settle and
//! a deletion blanks every copy, what a search covers, who shares a room, and
//! the profile fields. No chat server runs: the store alone, so a failure
//! names the store and the policy.

use std::sync::Arc;

use chat_server::model::{HistoryQuery, Id, Message, MessageKind, ProfileUpdate, Room, User};
use chat_server::store::embedded::EmbeddedStore;
use chat_server::store::mongo::MongoStore;
use chat_server::store::{Inserted, SearchQuery, Store};

/// Runs one async contract test against both stores, as two tests.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let dir = tempfile::tempdir().expect("a directory for the store");
                let store = super::EmbeddedStore::open(dir.path()).expect("open the embedded store");
                super::$name(std::sync::Arc::new(store)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mongodb() {
                super::$name(super::mongodb().await).await
            }
        }
    )*};
}

on_both_stores!(
    history_pages_show_messages_and_a_resume_reads_everything,
    a_dedupe_key_stores_a_message_once,
    a_batch_stores_each_key_once_and_may_come_twice,
    changes_settle_and_a_deletion_blanks_every_copy,
    search_covers_text_and_edits_of_the_rooms_asked,
    room_mates_are_everyone_who_shares_a_room,
    a_block_list_is_kept_through_other_profile_changes,
);

/// A database of its own on the shared stand-in (or CHAT_TEST_MONGODB_URI).
async fn mongodb() -> Arc<MongoStore> {
    let db = format!("contract_{}", Id::new());
    Arc::new(
        MongoStore::connect(&crate::common::mongodb_uri(), &db)
            .await
            .expect("connect to MongoDB"),
    )
}

fn record(room: Id, kind: MessageKind, seq: u64, content: &str, target: Option<u64>) -> Message {
    Message {
        seq,
        target_seq: target,
        ..Message::new(kind, room, Id::new(), "alice".into(), content.into())
    }
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

async fn page(store: &Arc<impl Store + ?Sized>, room: Id, query: HistoryQuery) -> (Vec<u64>, u64) {
    let page = store.messages(room, query).await.expect("a history page");
    (seqs(&page.messages), page.total)
}

async fn history_pages_show_messages_and_a_resume_reads_everything(store: Arc<impl Store>) {
    let room = Id::new();
    let reply = Message {
        reply_to: Some(1),
        ..record(room, MessageKind::Text, 4, "a reply", None)
    };
    let batch = vec![
        record(room, MessageKind::Text, 1, "hello", None),
        record(room, MessageKind::System, 2, "bob joined", None),
        record(room, MessageKind::Edit, 3, "hello!", Some(1)),
        reply,
        record(room, MessageKind::Text, 5, "bye", None),
    ];
    let batch: Vec<(Message, Option<String>)> = batch.into_iter().map(|m| (m, None)).collect();
    store.insert_messages(&batch).await.unwrap();
    // Pages: messages of the main line, not changes or replies; the total counts them.
    let latest = HistoryQuery::Latest {
        offset: 0,
        limit: 10,
    };
    assert_eq!(page(&store, room, latest).await, (vec![1, 2, 5], 3));
    let older = HistoryQuery::Latest {
        offset: 1,
        limit: 1,
    };
    assert_eq!(page(&store, room, older).await.0, [2]);
    let back = HistoryQuery::BeforeSeq { seq: 5, limit: 10 };
    assert_eq!(page(&store, room, back).await.0, [1, 2]);
    let past = HistoryQuery::Latest {
        offset: 100,
        limit: 10,
    };
    assert_eq!(page(&store, room, past).await, (vec![], 3));
    // A resume: everything in the stream after the seq, in order.
    let resume = HistoryQuery::After { seq: 0, limit: 10 };
    assert_eq!(page(&store, room, resume).await.0, [1, 2, 3, 4, 5]);
    let some = HistoryQuery::After { seq: 2, limit: 2 };
    assert_eq!(page(&store, room, some).await.0, [3, 4]);
    assert_eq!(store.newest_seq(room).await.unwrap(), 5);
    assert_eq!(store.replies(room, 1, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.reply_counts(room, &[1, 5]).await.unwrap().get(&1),
        Some(&1)
    );
    assert_eq!(
        store.newest_seq(Id::new()).await.unwrap(),
        0,
        "an empty room"
    );
}

async fn a_dedupe_key_stores_a_message_once(store: Arc<impl Store>) {
    let room = Id::new();
    let first = record(room, MessageKind::Text, 1, "once", None);
    store
        .insert_messages(&[(first.clone(), Some("alice:c1".into()))])
        .await
        .unwrap();
    // The same key under another seq (a retry a bus appended again): skipped.
    let retry = record(room, MessageKind::Text, 2, "once", None);
    store
        .insert_messages(&[(retry.clone(), Some("alice:c1".into()))])
        .await
        .unwrap();
    let resume = HistoryQuery::After { seq: 0, limit: 10 };
    assert_eq!(page(&store, room, resume).await.0, [1]);
    let found = store.deduplicated(room, "alice:c1").await.unwrap();
    assert_eq!(found.map(|m| m.seq), Some(1));
    assert!(
        store
            .deduplicated(Id::new(), "alice:c1")
            .await
            .unwrap()
            .is_none(),
        "per room"
    );
    let again = store
        .insert_message(&Message { seq: 3, ..retry }, Some("alice:c1"))
        .await
        .unwrap();
    assert!(matches!(again, Inserted::Duplicate(m) if m.seq == 1));
    let rewritten = store.insert_message(&first, None).await.unwrap();
    assert!(matches!(rewritten, Inserted::Existing(m) if m.content == "once"));
}

/// The persist worker's batches: a key twice in one batch keeps its first
/// seq, and a batch written twice (its acknowledgement lost) is stored once.
async fn a_batch_stores_each_key_once_and_may_come_twice(store: Arc<impl Store>) {
    let room = Id::new();
    let batch = [
        (
            record(room, MessageKind::Text, 1, "a", None),
            Some("alice:k1".to_owned()),
        ),
        (record(room, MessageKind::Text, 2, "b", None), None),
        (
            record(room, MessageKind::Text, 3, "a", None),
            Some("alice:k1".to_owned()),
        ),
        (
            record(room, MessageKind::Text, 4, "c", None),
            Some("alice:k2".to_owned()),
        ),
    ];
    store.insert_messages(&batch).await.unwrap();
    store.insert_messages(&batch).await.unwrap();
    let resume = HistoryQuery::After { seq: 0, limit: 10 };
    assert_eq!(page(&store, room, resume).await.0, [1, 2, 4]);
    let found = store.deduplicated(room, "alice:k2").await.unwrap();
    assert_eq!(found.map(|m| m.seq), Some(4));
}

/// A key is remembered for the dedupe window, then names nothing: a new
/// message may use it (a client that reuses its ids much later).
async fn a_dedupe_key_is_free_again_after_the_window(store: Arc<impl Store>) {
    let room = Id::new();
    let first = record(room, MessageKind::Text, 1, "first", None);
    store
        .insert_messages(&[(first, Some("alice:k".into()))])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(store.deduplicated(room, "alice:k").await.unwrap().is_none());
    let later = record(room, MessageKind::Text, 2, "later", None);
    store
        .insert_messages(&[(later, Some("alice:k".into()))])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let single = record(room, MessageKind::Text, 3, "single", None);
    let inserted = store
        .insert_message(&single, Some("alice:k"))
        .await
        .unwrap();
    assert_eq!(inserted, Inserted::New);
    let resume = HistoryQuery::After { seq: 0, limit: 10 };
    assert_eq!(page(&store, room, resume).await.0, [1, 2, 3]);
    let found = store.deduplicated(room, "alice:k").await.unwrap();
    assert_eq!(found.map(|m| m.seq), Some(3));
}

mod a_dedupe_key_is_free_again_after_the_window {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        let dir = tempfile::tempdir().expect("a directory for the store");
        let store = super::EmbeddedStore::open(dir.path())
            .expect("open the embedded store")
            .with_dedupe_ttl(WINDOW);
        super::a_dedupe_key_is_free_again_after_the_window(std::sync::Arc::new(store)).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mongodb() {
        let store = std::sync::Arc::unwrap_or_clone(super::mongodb().await).with_dedupe_ttl(WINDOW);
        super::a_dedupe_key_is_free_again_after_the_window(std::sync::Arc::new(store)).await
    }
}

async fn changes_settle_and_a_deletion_blanks_every_copy(store: Arc<impl Store>) {
    let room = Id::new();
    let bob = Id::new();
    let by_bob = |mut m: Message| {
        m.user_id = bob;
        m
    };
    let mut batch = vec![record(room, MessageKind::Text, 1, "secret plans", None)];
    // 200 clicks on and off, one reaction left, two edits.
    for seq in 2..202 {
        let kind = if seq % 2 == 0 {
            MessageKind::React
        } else {
            MessageKind::Unreact
        };
        batch.push(by_bob(record(room, kind, seq, "👍", Some(1))));
    }
    batch.push(by_bob(record(room, MessageKind::React, 202, "🎉", Some(1))));
    batch.push(by_bob(record(room, MessageKind::React, 203, "🎉", Some(1))));
    batch.push(record(
        room,
        MessageKind::Edit,
        204,
        "covert plans",
        Some(1),
    ));
    batch.push(record(room, MessageKind::Edit, 205, "open plans", Some(1)));
    // One at a time, as the persist worker may deliver them, and as a batch.
    let (single, rest) = batch.split_at(100);
    for message in single {
        store.insert_message(message, None).await.unwrap();
    }
    let rest: Vec<(Message, Option<String>)> = rest.iter().cloned().map(|m| (m, None)).collect();
    store.insert_messages(&rest).await.unwrap();
    let live = store.changes_of(room, &[1]).await.unwrap();
    assert_eq!(
        seqs(&live),
        [202, 205],
        "the reaction still there, once, and the last edit"
    );
    let words = |terms: &[&str]| SearchQuery {
        terms: terms.iter().map(|t| (*t).to_owned()).collect(),
        from: None,
        before: None,
        limit: 10,
    };
    assert!(
        store
            .search(&[room], &words(&["covert"]))
            .await
            .unwrap()
            .is_empty(),
        "replaced"
    );

    store
        .insert_messages(&[(record(room, MessageKind::Delete, 206, "", Some(1)), None)])
        .await
        .unwrap();
    // Written again, as a replayed batch is: the same outcome.
    store
        .insert_messages(&[(record(room, MessageKind::Delete, 206, "", Some(1)), None)])
        .await
        .unwrap();
    assert_eq!(seqs(&store.changes_of(room, &[1]).await.unwrap()), [206]);
    for word in ["secret", "open", "plans"] {
        let found = store.search(&[room], &words(&[word])).await.unwrap();
        assert!(
            found.iter().all(|m| m.content.is_empty()),
            "{word}: {found:?}"
        );
    }
    let stored = store
        .messages(
            room,
            HistoryQuery::After {
                seq: 0,
                limit: 1000,
            },
        )
        .await
        .unwrap()
        .messages;
    let texts: Vec<&Message> = stored
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::Text | MessageKind::Edit))
        .collect();
    assert_eq!(texts.len(), 3);
    assert!(texts.iter().all(|m| m.content.is_empty()), "{texts:?}");
}

async fn search_covers_text_and_edits_of_the_rooms_asked(store: Arc<impl Store>) {
    let (room, other) = (Id::new(), Id::new());
    let carol = Id::new();
    let from_carol = Message {
        user_id: carol,
        ..record(room, MessageKind::Text, 3, "deploy on monday", None)
    };
    let batch = vec![
        record(room, MessageKind::Text, 1, "we deploy on friday", None),
        record(room, MessageKind::Edit, 2, "we ship on friday", Some(1)),
        from_carol,
        record(other, MessageKind::Text, 1, "deploy elsewhere", None),
    ];
    let batch: Vec<(Message, Option<String>)> = batch.into_iter().map(|m| (m, None)).collect();
    store.insert_messages(&batch).await.unwrap();
    let query = |terms: &[&str], from: Option<Id>| SearchQuery {
        terms: terms.iter().map(|t| (*t).to_owned()).collect(),
        from,
        before: None,
        limit: 10,
    };
    let mut found = seqs(
        &store
            .search(&[room], &query(&["deploy"], None))
            .await
            .unwrap(),
    );
    found.sort_unstable();
    assert_eq!(found, [1, 3], "the rooms asked, not the other");
    let edited = store
        .search(&[room], &query(&["ship"], None))
        .await
        .unwrap();
    assert_eq!(seqs(&edited), [2], "an edit's words find it");
    let carols = store
        .search(&[room], &query(&["deploy"], Some(carol)))
        .await
        .unwrap();
    assert_eq!(seqs(&carols), [3]);
    assert!(
        store
            .search(&[], &query(&["deploy"], None))
            .await
            .unwrap()
            .is_empty()
    );
}

fn person(name: &str) -> User {
    User {
        id: Id::new(),
        username: name.to_owned(),
        email: format!("{name}@example.com"),
        password_hash: "$argon2id$not-a-real-hash".into(),
        display_name: None,
        avatar_url: None,
        avatar_color: None,
        created_at: chat_server::model::now(),
        last_seen_at: None,
        blocked: Vec::new(),
    }
}

async fn room_mates_are_everyone_who_shares_a_room(store: Arc<impl Store>) {
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(person);
    for user in [&alice, &bob, &carol, &dave] {
        store.create_user(user).await.unwrap();
    }
    let group = Room::new_group("g".into(), String::new(), true, alice.id);
    store.create_room(&group).await.unwrap();
    store.add_member(group.id, bob.id).await.unwrap();
    let direct = Room::new_direct(alice.id, carol.id, "alice, carol".into());
    store.direct_room(&direct).await.unwrap();
    let mut mates = store.room_mates(alice.id).await.unwrap();
    mates.sort();
    let mut expected = vec![alice.id, bob.id, carol.id];
    expected.sort();
    assert_eq!(mates, expected, "dave shares nothing with alice");
    store.remove_member(group.id, bob.id).await.unwrap();
    assert!(!store.room_mates(alice.id).await.unwrap().contains(&bob.id));
}

async fn a_block_list_is_kept_through_other_profile_changes(store: Arc<impl Store>) {
    let alice = person("alice");
    store.create_user(&alice).await.unwrap();
    let (mallory, eve) = (Id::new(), Id::new());
    let blocked = ProfileUpdate {
        blocked: Some(vec![mallory, eve]),
        ..ProfileUpdate::default()
    };
    let updated = store
        .update_profile(alice.id, &blocked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.blocked, [mallory, eve]);
    let renamed = ProfileUpdate {
        display_name: Some(Some("Alice".into())),
        ..ProfileUpdate::default()
    };
    store.update_profile(alice.id, &renamed).await.unwrap();
    let read = store.user(alice.id).await.unwrap().unwrap();
    assert_eq!(
        (read.blocked.as_slice(), read.display_name.as_deref()),
        ([mallory, eve].as_slice(), Some("Alice"))
    );
    let cleared = ProfileUpdate {
        blocked: Some(Vec::new()),
        ..ProfileUpdate::default()
    };
    store.update_profile(alice.id, &cleared).await.unwrap();
    assert!(
        store
            .user(alice.id)
            .await
            .unwrap()
            .unwrap()
            .blocked
            .is_empty()
    );
}
