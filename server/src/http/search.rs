//! `GET /api/search`: messages matching every word of a query, across the
//! rooms the caller can read (or one of them), ranked, with snippets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::extract::State;
use serde::Deserialize;

use super::caller::AuthUser;
use super::error::WireError;
use super::extract::{Query, parse_id};
use super::rooms::visible_room;
use crate::model::{HistoryQuery, Id, Message, MessageKind, Page, Room, apply_changes};
use crate::search::{score, snippet, terms};
use crate::state::AppState;
use crate::store::SearchQuery;
use crate::wire::views::{SearchHit, SearchView};

/// Rooms searched at most when no `room_id` narrows it.
const MAX_ROOMS: u64 = 1000;
/// Units of the caller's read budget a search takes (see `engine::chat::Limits::read`):
/// its cost grows with the rooms searched, 6 ms per 10,000 messages.
const SEARCH_COST: u32 = 5;
/// Candidates the store may return before ranking.
const CANDIDATES: u64 = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchParams {
    pub q: String,
    pub room_id: Option<String>,
    /// A user id: only their messages.
    pub from: Option<String>,
    /// An RFC 3339 time: only messages sent before it.
    pub before: Option<String>,
    pub limit: Option<u64>,
}

pub(crate) async fn search(
    State(state): State<AppState>,
    caller: AuthUser,
    Query(params): Query<SearchParams>,
) -> Result<axum::Json<SearchView>, WireError> {
    if params.q.chars().count() > 200 {
        return Err(WireError::validation("q", "at most 200 characters"));
    }
    let terms = terms(&params.q);
    if terms.is_empty() {
        return Err(WireError::validation(
            "q",
            "needs a word of at least two letters or digits",
        ));
    }
    let limit = params.limit.unwrap_or(20);
    if !(1..=50).contains(&limit) {
        return Err(WireError::validation("limit", "must be 1 to 50"));
    }
    let from = params
        .from
        .as_deref()
        .map(|id| parse_id(id, "user"))
        .transpose()?;
    let before = params
        .before
        .as_deref()
        .map(|at| {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map_err(|_| WireError::validation("before", "must be an RFC 3339 time"))
        })
        .transpose()?;
    state.chat.limits.read(caller.id, SEARCH_COST)?;
    // Private rooms the caller is not in are never searched.
    let rooms: Vec<Room> = match &params.room_id {
        Some(id) => vec![visible_room(&state, id, caller.id).await?],
        None => readable_rooms(&state, caller.id).await?,
    };
    let names: HashMap<Id, String> = rooms.iter().map(|r| (r.id, r.name.clone())).collect();
    let room_ids: Vec<Id> = rooms.iter().map(|r| r.id).collect();
    let query = SearchQuery {
        terms: terms.clone(),
        from,
        before,
        limit: CANDIDATES,
    };
    let candidates = state.store.search(&room_ids, &query).await?;
    let messages = current_messages(&state, candidates).await?;
    let mut results: Vec<SearchHit> = messages
        .into_iter()
        .filter(|m| !m.deleted)
        .filter_map(|message| {
            let score = score(&message.content, &terms)?;
            Some(SearchHit {
                snippet: snippet(&message.content, &terms),
                room_name: names.get(&message.room_id).cloned().unwrap_or_default(),
                message,
                score,
            })
        })
        .collect();
    results.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.message.timestamp.cmp(&a.message.timestamp))
    });
    results.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(axum::Json(SearchView { terms, results }))
}

async fn readable_rooms(state: &AppState, user: Id) -> Result<Vec<Room>, WireError> {
    let mut rooms = Vec::new();
    let mut offset = 0;
    while offset < MAX_ROOMS {
        let page = state
            .store
            .rooms_visible_to(user, Page { offset, limit: 100 })
            .await?;
        let got = page.rooms.len() as u64;
        rooms.extend(page.rooms);
        offset += 100;
        if got < 100 || offset >= page.total {
            break;
        }
    }
    Ok(rooms)
}

/// The text messages the candidates are or edit, as they are now.
async fn current_messages(
    state: &AppState,
    candidates: Vec<Message>,
) -> Result<Vec<Message>, WireError> {
    let mut wanted: BTreeMap<Id, BTreeSet<u64>> = BTreeMap::new();
    let mut found: HashMap<(Id, u64), Message> = HashMap::new();
    for candidate in candidates {
        match (candidate.kind, candidate.target_seq) {
            (MessageKind::Text, _) => {
                wanted
                    .entry(candidate.room_id)
                    .or_default()
                    .insert(candidate.seq);
                found.insert((candidate.room_id, candidate.seq), candidate);
            }
            (MessageKind::Edit, Some(target)) => {
                wanted.entry(candidate.room_id).or_default().insert(target);
            }
            _ => {}
        }
    }
    let mut current = Vec::new();
    for (room, seqs) in wanted {
        let mut messages = Vec::with_capacity(seqs.len());
        for seq in &seqs {
            match found.remove(&(room, *seq)) {
                Some(message) => messages.push(message),
                None => {
                    // An edit matched: its message, whose first text may not.
                    let query = HistoryQuery::After {
                        seq: seq.saturating_sub(1),
                        limit: 1,
                    };
                    let page = state.store.messages(room, query).await?;
                    messages.extend(
                        page.messages
                            .into_iter()
                            .filter(|m| m.seq == *seq && m.kind == MessageKind::Text),
                    );
                }
            }
        }
        let seqs: Vec<u64> = seqs.into_iter().collect();
        let changes = state.store.changes_of(room, &seqs).await?;
        apply_changes(&mut messages, &changes);
        current.extend(messages);
    }
    Ok(current)
}
