//! The embedded store's own tests; the contract suite
//! (`server/tests/api/store_contract.rs`) holds it to the MongoDB store.

use super::*;
use crate::model::MessageKind;
use crate::store::SearchQuery;
use redb::ReadableTableMetadata;

fn query(terms: &[&str]) -> SearchQuery {
    SearchQuery {
        terms: terms.iter().map(|t| t.to_string()).collect(),
        from: None,
        before: None,
        limit: 10,
    }
}

fn seqs(found: &[Message]) -> std::collections::BTreeSet<u64> {
    found.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn search_finds_word_starts_and_a_database_from_before_the_index_is_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let room = Id::new();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let texts = [
            "we deploy on friday",
            "redeploy later",
            "Déjà vu, Friday",
            "friday in the second bucket",
            "friday in the fourth, deploy too",
            "friday, far ahead",
        ];
        let batch: Vec<(Message, Option<String>)> = texts
            .iter()
            // The last seq is past what buckets tell apart, and a
            // search seeks over the empty buckets before it.
            .zip([1, 2, 3, 300, 1000, 1 << 45])
            .map(|(text, seq)| {
                let message = Message::new(
                    MessageKind::Text,
                    room,
                    Id::new(),
                    "a".into(),
                    (*text).into(),
                );
                (Message { seq, ..message }, None)
            })
            .collect();
        store.insert_messages(&batch).await.unwrap();
        let found = store.search(&[room], &query(&["depl"])).await.unwrap();
        assert_eq!(
            seqs(&found),
            [1, 1000].into(),
            "a word start, not inside 'redeploy'"
        );
        let found = store.search(&[room], &query(&["fri", "dé"])).await.unwrap();
        assert_eq!(seqs(&found), [3].into());
        let found = store.search(&[room], &query(&["friday"])).await.unwrap();
        assert_eq!(
            seqs(&found),
            [1, 3, 300, 1000, 1 << 45].into(),
            "every bucket"
        );
        let newest = SearchQuery {
            limit: 2,
            ..query(&["friday"])
        };
        let found = store.search(&[room], &newest).await.unwrap();
        assert_eq!(seqs(&found), [1000, 1 << 45].into(), "the newest first");
        assert!(
            store
                .search(&[Id::new()], &query(&["depl"]))
                .await
                .unwrap()
                .is_empty()
        );
    }
    // As a database written before the index existed.
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(SEARCH_WORDS).unwrap();
        tx.open_table(META).unwrap().remove("search_index").unwrap();
        tx.commit().unwrap();
    }
    let indexed = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let found = store.search(&[room], &query(&["friday"])).await.unwrap();
        assert_eq!(found.len(), 5, "indexed when opened");
        let tx = store.db.begin_read().unwrap();
        tx.open_table(SEARCH_WORDS).unwrap().len().unwrap()
    };
    // As a database with the first layout (room, word, seq): indexed
    // anew, the old keys gone.
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        let mut old_key = room.bytes().to_vec();
        old_key.extend_from_slice(b"friday\0");
        old_key.extend_from_slice(&3u64.to_be_bytes());
        tx.open_table(SEARCH_WORDS)
            .unwrap()
            .insert(old_key.as_slice(), ())
            .unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("search_index", "words-1")
            .unwrap();
        tx.commit().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let found = store.search(&[room], &query(&["friday"])).await.unwrap();
    assert_eq!(found.len(), 5);
    let tx = store.db.begin_read().unwrap();
    assert_eq!(
        tx.open_table(SEARCH_WORDS).unwrap().len().unwrap(),
        indexed,
        "the old layout's keys are gone"
    );
}

#[tokio::test]
async fn clicks_that_cancel_out_leave_nothing_to_load_and_a_deletion_blanks_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (room, bob) = (Id::new(), Id::new());
    let record = |kind, seq: u64, content: &str, target: Option<u64>| Message {
        seq,
        target_seq: target,
        ..Message::new(kind, room, bob, "bob".into(), content.into())
    };
    let mut batch = vec![(record(MessageKind::Text, 1, "secret plans", None), None)];
    for seq in 2..1002 {
        let kind = if seq % 2 == 0 {
            MessageKind::React
        } else {
            MessageKind::Unreact
        };
        batch.push((record(kind, seq, "👍", Some(1)), None));
    }
    batch.push((record(MessageKind::React, 1002, "🎉", Some(1)), None));
    batch.push((
        record(MessageKind::Edit, 1003, "covert plans", Some(1)),
        None,
    ));
    batch.push((record(MessageKind::Edit, 1004, "open plans", Some(1)), None));
    store.insert_messages(&batch).await.unwrap();
    let live: Vec<u64> = seqs(&store.changes_of(room, &[1]).await.unwrap())
        .into_iter()
        .collect();
    assert_eq!(
        live,
        [1002, 1004],
        "the reaction still there and the last edit"
    );
    assert!(
        store
            .search(&[room], &query(&["covert"]))
            .await
            .unwrap()
            .is_empty()
    );

    let delete = record(MessageKind::Delete, 1005, "", Some(1));
    store.insert_messages(&[(delete, None)]).await.unwrap();
    let live: Vec<u64> = seqs(&store.changes_of(room, &[1]).await.unwrap())
        .into_iter()
        .collect();
    assert_eq!(live, [1005]);
    for word in ["secret", "open", "plans"] {
        assert!(
            store
                .search(&[room], &query(&[word]))
                .await
                .unwrap()
                .is_empty(),
            "{word}"
        );
    }
    let stored = store
        .messages(
            room,
            HistoryQuery::After {
                seq: 0,
                limit: 2000,
            },
        )
        .await
        .unwrap();
    let texts: Vec<&Message> = stored
        .messages
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::Text | MessageKind::Edit))
        .collect();
    assert_eq!(texts.len(), 3);
    assert!(texts.iter().all(|m| m.content.is_empty()), "{texts:?}");
}

#[tokio::test]
async fn pages_read_the_main_line_and_an_older_database_gets_it_on_opening() {
    let dir = tempfile::tempdir().unwrap();
    let room = Id::new();
    let record = |kind, seq: u64, target: Option<u64>, reply_to: Option<u64>| {
        let message = Message::new(kind, room, Id::new(), "a".into(), format!("m{seq}"));
        Message {
            seq,
            target_seq: target,
            reply_to,
            ..message
        }
    };
    let mut batch = vec![(record(MessageKind::Text, 1, None, None), None)];
    for seq in 2..500 {
        let kind = if seq % 2 == 0 {
            MessageKind::React
        } else {
            MessageKind::Unreact
        };
        batch.push((
            Message {
                content: "👍".into(),
                ..record(kind, seq, Some(1), None)
            },
            None,
        ));
    }
    batch.push((record(MessageKind::Text, 500, None, Some(1)), None));
    batch.push((record(MessageKind::System, 501, None, None), None));
    batch.push((record(MessageKind::Text, 502, None, None), None));
    let latest = HistoryQuery::Latest {
        offset: 0,
        limit: 50,
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.insert_messages(&batch).await.unwrap();
        let page = store.messages(room, latest).await.unwrap();
        assert_eq!(seqs(&page.messages), [1, 501, 502].into());
        let older = HistoryQuery::BeforeSeq { seq: 502, limit: 1 };
        assert_eq!(
            seqs(&store.messages(room, older).await.unwrap().messages),
            [501].into()
        );
    }
    // As a database written before the index existed.
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(MAIN_LINE).unwrap();
        tx.open_table(META).unwrap().remove("main_line").unwrap();
        tx.commit().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let page = store.messages(room, latest).await.unwrap();
    assert_eq!(
        (seqs(&page.messages), page.total),
        ([1, 501, 502].into(), 3)
    );
}
