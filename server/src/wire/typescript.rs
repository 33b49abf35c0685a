//! The web client's wire types, generated from the Rust ones (ts-rs), so the
//! two cannot drift: `web/src/protocol/wire.ts` is this module's output, and
//! a test fails when the committed file differs from it. After changing a
//! wire type, write the file anew with
//!
//! ```sh
//! CHAT_WRITE_WIRE_TS=1 cargo test -p chat-server --lib wire::typescript
//! ```

use ts_rs::{Config, TS};

use super::errors::ErrorCode;
use super::frames::{
    ClientFrame, MAX_ATTACHMENTS, MAX_CLIENT_ID_CHARS, MAX_CONTENT_CHARS, PresenceStatus,
    ServerFrame,
};
use super::views::{
    HistoryView, RoomView, RoomsPage, SearchHit, SearchView, SessionView, UserView,
};
use crate::model::{AttachedFile, MAX_REACTIONS, Message, MessageKind};
use crate::search::Snippet;

/// Where the generated file lives, from the server crate's directory.
const PATH: &str = "../web/src/protocol/wire.ts";

fn declare<T: TS + ?Sized>(cfg: &Config, out: &mut String) {
    if let Some(docs) = T::docs() {
        out.push_str(&docs);
    }
    out.push_str("export ");
    out.push_str(&T::decl(cfg));
    out.push_str("\n\n");
}

/// The whole of `web/src/protocol/wire.ts`.
fn bindings() -> String {
    // Seqs and sizes are u64 in Rust; a room would need 2^53 messages before
    // a JavaScript number lost one, so they are numbers, not bigints.
    let cfg = Config::new().with_large_int("number");
    let mut out = String::from(
        "// Generated from the server's wire types (server/src/wire/typescript.rs).\n\
         // Do not edit: change the Rust types, then run\n\
         // CHAT_WRITE_WIRE_TS=1 cargo test -p chat-server --lib wire::typescript\n\n",
    );
    declare::<ErrorCode>(&cfg, &mut out);
    declare::<MessageKind>(&cfg, &mut out);
    declare::<AttachedFile>(&cfg, &mut out);
    declare::<Message>(&cfg, &mut out);
    declare::<UserView>(&cfg, &mut out);
    declare::<RoomView>(&cfg, &mut out);
    declare::<RoomsPage>(&cfg, &mut out);
    declare::<HistoryView>(&cfg, &mut out);
    declare::<SessionView>(&cfg, &mut out);
    declare::<Snippet>(&cfg, &mut out);
    declare::<SearchHit>(&cfg, &mut out);
    declare::<SearchView>(&cfg, &mut out);
    declare::<PresenceStatus>(&cfg, &mut out);
    declare::<ServerFrame>(&cfg, &mut out);
    declare::<ClientFrame>(&cfg, &mut out);
    let retryable: Vec<String> = ErrorCode::ALL
        .iter()
        .filter(|code| code.retryable())
        .map(|code| format!("\"{code}\""))
        .collect();
    out.push_str(&format!(
        "/** Refusals that may pass when sent again unchanged. */\n\
         export const RETRYABLE: readonly ErrorCode[] = [{}];\n\n\
         /** Longest message text, in characters, after trimming. */\n\
         export const MAX_CONTENT_CHARS = {MAX_CONTENT_CHARS};\n\
         /** Most files one message carries. */\n\
         export const MAX_ATTACHMENTS = {MAX_ATTACHMENTS};\n\
         /** Longest `client_id`. */\n\
         export const MAX_CLIENT_ID_CHARS = {MAX_CLIENT_ID_CHARS};\n\
         /** Most distinct reactions one message shows. */\n\
         export const MAX_REACTIONS = {MAX_REACTIONS};\n",
        retryable.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_clients_wire_types_are_generated_from_the_servers() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PATH);
        let generated = bindings();
        if std::env::var_os("CHAT_WRITE_WIRE_TS").is_some() {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} differs from the server's wire types: run \
             CHAT_WRITE_WIRE_TS=1 cargo test -p chat-server --lib wire::typescript \
             and commit the result",
            path.display()
        );
    }
}
