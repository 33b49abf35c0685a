//! The WebSocket protocol: every frame is a JSON object with a `type`.
//!
//! Parsing and content rules are pure so they are tested here, without a socket.
//! See docs/protocol.md for the full description.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::model::Id;
use crate::wire::errors::{ErrorCode, WireError};

/// Longest message content, in characters, after cleaning.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Most files one message carries.
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest `client_id`; it is an opaque retry key, not a payload.
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Post to a room; `client_id` makes retries safe (the same id is stored once).
    Message {
        room_id: Id,
        content: String,
        #[ts(optional)]
        client_id: Option<String>,
        /// A reply in the thread of the message at this seq.
        #[ts(optional)]
        reply_to: Option<u64>,
        /// Files uploaded to this room by the sender (`POST
        /// /api/rooms/{id}/attachments`), at most [`MAX_ATTACHMENTS`].
        #[serde(default)]
        #[ts(as = "Option<Vec<Id>>", optional)]
        attachments: Vec<Id>,
    },
    /// Replace the text of your message at `seq`.
    Edit {
        room_id: Id,
        seq: u64,
        content: String,
        #[ts(optional)]
        client_id: Option<String>,
    },
    /// Delete the message at `seq`: yours, or any if you own or administer the room.
    Delete {
        room_id: Id,
        seq: u64,
        #[ts(optional)]
        client_id: Option<String>,
    },
    /// Add your reaction `emoji` to the message at `seq`.
    React {
        room_id: Id,
        seq: u64,
        emoji: String,
        #[ts(optional)]
        client_id: Option<String>,
    },
    /// Take your reaction `emoji` back from the message at `seq`.
    Unreact {
        room_id: Id,
        seq: u64,
        emoji: String,
        #[ts(optional)]
        client_id: Option<String>,
    },
    Join {
        room_id: Id,
    },
    Leave {
        room_id: Id,
    },
    Typing {
        room_id: Id,
    },
    Read {
        room_id: Id,
        seq: u64,
    },
    /// Replay what came after `last_seq` in the room, then continue live.
    Resume {
        room_id: Id,
        last_seq: u64,
    },
    /// Replace the connection's token before it expires.
    Auth {
        token: String,
    },
    Ping,
}

/// `ClientFrame`'s tags (a test holds the two together), so an unknown
/// type is told apart from a known one with bad fields.
const KNOWN_TYPES: [&str; 12] = [
    "message", "edit", "delete", "react", "unreact", "join", "leave", "typing", "read", "resume",
    "auth", "ping",
];

/// Parses one text frame. Tells a malformed frame (not JSON, no `type`), an
/// unknown type, and a known type with bad fields apart, because clients fix
/// each differently.
pub fn parse(text: &str) -> Result<ClientFrame, WireError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| WireError::new(ErrorCode::MalformedFrame, "a frame must be a JSON object"))?;
    let kind = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::MalformedFrame,
                "a frame must have a string \"type\"",
            )
        })?;
    if !KNOWN_TYPES.contains(&kind) {
        return Err(WireError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type {kind:?}"),
        ));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value)
        .map_err(|e| WireError::new(ErrorCode::InvalidFrame, format!("{kind}: {e}")))
}

/// Cleans message content: control characters other than newline and tab are
/// removed (they can spoof terminals and UIs), surrounding whitespace trimmed,
/// then the result must be non-empty and at most [`MAX_CONTENT_CHARS`].
pub fn clean_content(raw: &str) -> Result<String, WireError> {
    let cleaned: String = raw
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return Err(WireError::new(
            ErrorCode::EmptyMessage,
            "the message is empty",
        ));
    }
    if cleaned.chars().count() > MAX_CONTENT_CHARS {
        return Err(WireError::new(
            ErrorCode::MessageTooLong,
            format!("a message may have at most {MAX_CONTENT_CHARS} characters"),
        ));
    }
    Ok(cleaned.to_owned())
}

/// A message's text and files: either may be empty, not both; at most
/// [`MAX_ATTACHMENTS`] files.
pub fn clean_post(raw: &str, attachments: &[Id]) -> Result<String, WireError> {
    if attachments.len() > MAX_ATTACHMENTS {
        return Err(WireError::new(
            ErrorCode::TooManyAttachments,
            format!("a message may carry at most {MAX_ATTACHMENTS} files"),
        ));
    }
    match clean_content(raw) {
        Err(e) if e.code == ErrorCode::EmptyMessage && !attachments.is_empty() => Ok(String::new()),
        other => other,
    }
}

/// A reaction: one emoji (a short run of pictographs, joiners and
/// modifiers), never letters, digits, spaces or control characters.
/// One emoji of Unicode's list (the `emojis` crate's, with skin tones and
/// ZWJ sequences), as fully qualified (`❤️`, not a bare `❤`, which is text,
/// as `©` is). Anything else (private-use characters, bidi overrides,
/// zero-width spaces, combining marks, several emoji) is refused.
pub fn check_emoji(emoji: &str) -> Result<(), WireError> {
    if emojis::get(emoji).is_some_and(|known| known.as_str() == emoji) {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::InvalidFrame,
            "emoji must be one emoji",
        ))
    }
}

pub fn check_client_id(client_id: Option<&str>) -> Result<(), WireError> {
    match client_id {
        Some(id)
            if id.is_empty()
                || id.chars().count() > MAX_CLIENT_ID_CHARS
                || id.chars().any(char::is_control) =>
        {
            Err(WireError::new(
                ErrorCode::InvalidFrame,
                format!("client_id must be 1 to {MAX_CLIENT_ID_CHARS} printable characters"),
            ))
        }
        _ => Ok(()),
    }
}

/// Serializes a frame once; every recipient shares the bytes.
pub fn encode<T: Serialize>(value: &T) -> axum::extract::ws::Utf8Bytes {
    let json = serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize a frame");
        r#"{"type":"error","code":"internal","message":"unserializable frame"}"#.to_owned()
    });
    axum::extract::ws::Utf8Bytes::from(json)
}

/// What the server sends besides chat messages (which are [`crate::model::Message`]s).
#[derive(Debug, Clone, PartialEq, Serialize, TS)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The sender's message is stored under `id` and `seq`.
    Ack {
        client_id: Option<String>,
        room_id: Id,
        id: Id,
        seq: u64,
    },
    /// `user_id` came online in, or went offline from, the room.
    Presence {
        room_id: Id,
        user_id: Id,
        username: String,
        status: PresenceStatus,
    },
    Typing {
        room_id: Id,
        user_id: Id,
        username: String,
    },
    Read {
        room_id: Id,
        user_id: Id,
        seq: u64,
    },
    /// The connection now receives the room's messages live; `last_seq` is the
    /// newest seq at that moment, so the client knows whether it missed any.
    Joined {
        room_id: Id,
        last_seq: u64,
    },
    Left {
        room_id: Id,
    },
    /// A resume is answered: the missed messages after `from_seq` follow.
    Resumed {
        room_id: Id,
        from_seq: u64,
        last_seq: u64,
    },
    /// A room entered the user's room list: created where they can see
    /// it, a direct room opened with them, or they were added to it.
    RoomAdded {
        room: crate::wire::views::RoomView,
    },
    /// Someone changed their profile (display name, avatar): everyone
    /// connected is told, as every one of them may show it.
    UserUpdated {
        user: crate::wire::views::UserView,
    },
    /// A room in the user's room list was renamed or described anew.
    RoomUpdated {
        room: crate::wire::views::RoomView,
    },
    /// A room left the user's room list: they were removed from (or left)
    /// a private room, or it was deleted.
    RoomRemoved {
        room_id: Id,
    },
    /// The connection's token was replaced; it is now valid until `exp`.
    Authenticated {
        exp: i64,
    },
    /// A frame refused; the connection stays open. `retryable`: the same
    /// frame may pass later (after `retry_after` seconds, when given).
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retryable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[ts(optional)]
        retry_after: Option<f64>,
    },
    Pong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

impl From<WireError> for ServerFrame {
    fn from(error: WireError) -> Self {
        ServerFrame::Error {
            code: error.code,
            retryable: error.code.retryable(),
            retry_after: error.retry_after_secs(),
            message: error.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_seed_clients_message() {
        let room = Id::new();
        let frame =
            parse(&json!({"type": "message", "room_id": room, "content": "hello"}).to_string())
                .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Message {
                room_id: room,
                content: "hello".into(),
                client_id: None,
                reply_to: None,
                attachments: Vec::new(),
            }
        );
    }

    #[test]
    fn parses_every_client_frame() {
        let room = Id::new();
        let cases = [
            (
                json!({"type": "join", "room_id": room}),
                ClientFrame::Join { room_id: room },
            ),
            (
                json!({"type": "leave", "room_id": room}),
                ClientFrame::Leave { room_id: room },
            ),
            (
                json!({"type": "typing", "room_id": room}),
                ClientFrame::Typing { room_id: room },
            ),
            (
                json!({"type": "read", "room_id": room, "seq": 4}),
                ClientFrame::Read {
                    room_id: room,
                    seq: 4,
                },
            ),
            (
                json!({"type": "resume", "room_id": room, "last_seq": 9}),
                ClientFrame::Resume {
                    room_id: room,
                    last_seq: 9,
                },
            ),
            (
                json!({"type": "auth", "token": "t"}),
                ClientFrame::Auth { token: "t".into() },
            ),
            (json!({"type": "ping"}), ClientFrame::Ping),
            (
                json!({"type": "message", "room_id": room, "content": "x", "client_id": "c1"}),
                ClientFrame::Message {
                    room_id: room,
                    content: "x".into(),
                    client_id: Some("c1".into()),
                    reply_to: None,
                    attachments: Vec::new(),
                },
            ),
            (
                json!({"type": "message", "room_id": room, "content": "x", "reply_to": 7}),
                ClientFrame::Message {
                    room_id: room,
                    content: "x".into(),
                    client_id: None,
                    reply_to: Some(7),
                    attachments: Vec::new(),
                },
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(parse(&json.to_string()).unwrap(), expected, "{json}");
        }
    }

    #[test]
    fn the_known_types_are_the_client_frames() {
        let declared = ClientFrame::inline(&ts_rs::Config::new());
        let tags: Vec<&str> = declared
            .split("\"type\": \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(tags, KNOWN_TYPES, "{declared}");
    }

    #[test]
    fn tells_malformed_unknown_and_invalid_frames_apart() {
        assert_eq!(
            parse("not json").unwrap_err().code,
            ErrorCode::MalformedFrame
        );
        assert_eq!(parse("[1,2]").unwrap_err().code, ErrorCode::MalformedFrame);
        assert_eq!(
            parse(r#"{"content":"no type"}"#).unwrap_err().code,
            ErrorCode::MalformedFrame
        );
        assert_eq!(
            parse(r#"{"type":"shout"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
        assert_eq!(
            parse(r#"{"type":"message","room_id":"nope","content":"x"}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            parse(r#"{"type":"message","room_id":{"$gt":""},"content":"x"}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            parse(r#"{"type":"read","room_id":"0123456789abcdef01234567","seq":-1}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn content_is_cleaned_and_bounded() {
        assert_eq!(
            clean_content("  hi\u{7}\u{1b}[31m there\n  ").unwrap(),
            "hi[31m there"
        );
        assert_eq!(
            clean_content("line 1\nline 2\ttab").unwrap(),
            "line 1\nline 2\ttab"
        );
        assert_eq!(
            clean_content(" \u{0} \n").unwrap_err().code,
            ErrorCode::EmptyMessage
        );
        assert!(clean_content(&"é".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert_eq!(
            clean_content(&"x".repeat(MAX_CONTENT_CHARS + 1))
                .unwrap_err()
                .code,
            ErrorCode::MessageTooLong
        );
    }

    #[test]
    fn client_ids_are_short_and_printable() {
        assert!(check_client_id(None).is_ok());
        assert!(check_client_id(Some("a1b2")).is_ok());
        assert!(check_client_id(Some("")).is_err());
        assert!(check_client_id(Some(&"x".repeat(65))).is_err());
        assert!(check_client_id(Some("a\nb")).is_err());
    }

    #[test]
    fn server_frames_have_their_type() {
        let error = serde_json::to_value(ServerFrame::from(WireError::rate_limited(
            "slow down",
            std::time::Duration::from_micros(499_800),
        )))
        .unwrap();
        assert_eq!(
            error,
            json!({"type": "error", "code": "rate_limited", "message": "slow down", "retryable": true, "retry_after": 0.5})
        );
        let error = serde_json::to_value(ServerFrame::from(WireError::forbidden("no"))).unwrap();
        assert_eq!(
            error,
            json!({"type": "error", "code": "forbidden", "message": "no"})
        );
        assert_eq!(
            serde_json::to_value(ServerFrame::Pong).unwrap(),
            json!({"type": "pong"})
        );
    }

    #[test]
    fn a_reaction_is_one_emoji() {
        for good in ["👍", "❤️", "👍🏽", "🧑‍💻", "🎉", "😂", "😮", "😢", "🇿🇦", "©️"]
        {
            assert!(check_emoji(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "ok",
            "👍 ",
            "é",
            "中",
            "\u{7}",
            "👍👍👍👍👍👍👍👍👍",
            "👍👍",
            "\u{a9}",
            "\u{e000}",
            "\u{202e}",
            "\u{200b}",
            "\u{301}",
            "👍\u{202e}",
            "\u{2063}",
        ] {
            assert!(check_emoji(bad).is_err(), "{bad:?}");
        }
    }
}
