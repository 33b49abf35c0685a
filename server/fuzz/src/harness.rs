//! What each fuzz target does with its input: exactly what the server does
//! with the same bytes from a client, minus the I/O. Shared, by path, with
//! server/tests/fuzz_corpus.rs, which replays the committed corpus on stable.
//! Every function must return without panicking for any input.

use std::time::Duration;

use chat_server::auth::TokenIssuer;
use chat_server::http::auth::{LoginRequest, PasswordChange, RefreshRequest, RegisterRequest};
use chat_server::http::messages::{HistoryParams, history_query};
use chat_server::http::rooms::{CreateRoomRequest, PageQuery, page_limit};
use chat_server::http::users::ProfileRequest;
use chat_server::model::Id;
use chat_server::validate;
use chat_server::wire::frames::{self as protocol, ClientFrame};

/// A WebSocket text frame, as the reader task handles it.
pub fn ws_frame(data: &[u8]) {
    // tungstenite refuses invalid UTF-8 before the parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientFrame::Message {
        content, client_id, ..
    }) = protocol::parse(text)
    {
        let _ = protocol::clean_content(&content);
        let _ = protocol::check_client_id(client_id.as_deref());
    }
}

/// A JSON request body: the first byte picks the endpoint, the rest is the body.
pub fn json_bodies(data: &[u8]) {
    let Some((which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<RegisterRequest>(body) {
                let _ = validate::username(&r.username);
                let _ = validate::email(&r.email);
                let _ = validate::password(&r.password);
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<LoginRequest>(body) {
                let _ = validate::email(&r.email);
            }
        }
        2 => {
            let _ = serde_json::from_slice::<RefreshRequest>(body);
        }
        3 => {
            if let Ok(r) = serde_json::from_slice::<PasswordChange>(body) {
                let _ = validate::password(&r.new_password);
            }
        }
        4 => {
            if let Ok(r) = serde_json::from_slice::<CreateRoomRequest>(body) {
                let _ = validate::text("name", &r.name, 1, 64);
                let _ = validate::text("description", &r.description, 0, 500);
            }
        }
        5 => {
            if let Ok(r) = serde_json::from_slice::<ProfileRequest>(body) {
                if let Some(Some(name)) = &r.display_name {
                    let _ = validate::text("display_name", name, 1, 64);
                }
                if let Some(Some(url)) = &r.avatar_url {
                    let _ = validate::avatar_url(url);
                }
            }
        }
        _ => {
            let _ = serde_json::from_slice::<serde_json::Value>(body);
        }
    }
}

/// A query string and a path id, as the history, room list and every
/// `{id}` route read them.
pub fn query_and_ids(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = text.parse::<Id>();
    if let Ok(params) = serde_urlencoded::from_str::<HistoryParams>(text) {
        let _ = history_query(&params);
    }
    if let Ok(page) = serde_urlencoded::from_str::<PageQuery>(text) {
        let _ = page_limit(page.limit);
    }
}

/// A bearer token, as every authenticated request and `auth` frame checks it.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let issuer = TokenIssuer::new(
        b"fuzzing-key-fuzzing-key-fuzzing-key!",
        Duration::from_secs(900),
    );
    let _ = issuer.verify(token);
}
