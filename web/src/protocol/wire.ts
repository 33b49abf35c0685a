// Generated from the server's wire types (server/src/wire/typescript.rs).
// Do not edit: change the Rust types, then run
// CHAT_WRITE_WIRE_TS=1 cargo test -p chat-server --lib wire::typescript

/**
 * Why a request or frame was refused.
 */
export type ErrorCode = "malformed_frame" | "unknown_type" | "invalid_frame" | "empty_message" | "message_too_long" | "too_many_attachments" | "malformed_json" | "bad_request" | "invalid_query" | "invalid_path" | "websocket_required" | "empty_file" | "bad_body" | "validation_failed" | "unsupported_media_type" | "payload_too_large" | "file_too_large" | "length_required" | "method_not_allowed" | "missing_token" | "invalid_token" | "token_expired" | "invalid_credentials" | "invalid_refresh_token" | "origin_not_allowed" | "forbidden" | "not_joined" | "blocked" | "quota_exceeded" | "not_found" | "already_exists" | "owner_cannot_leave" | "direct_room" | "resume_too_far" | "too_many_reactions" | "too_many_blocks" | "rate_limited" | "request_timeout" | "unavailable" | "busy" | "internal";

export type MessageKind = "text" | "system" | "edit" | "delete" | "react" | "unreact";

/**
 * A file as messages carry it and the upload answers it: what a client
 * needs to show it (a thumbnail, or a name, a type and a size to download)
 * and fetch it (`GET /api/attachments/{id}`).
 */
export type AttachedFile = { id: string, filename: string, 
/**
 * The type the server found in the bytes, never the one the uploader claimed.
 */
content_type: string, size: number, 
/**
 * An image's dimensions (images the server could decode only).
 */
width?: number, height?: number, 
/**
 * Whether `GET /api/attachments/{id}/thumbnail` has a small version.
 */
thumbnail?: boolean, };

/**
 * A chat message exactly as clients receive it, live or from history:
 * `{"type","id","room_id","user_id","username","content","timestamp","seq"}`.
 */
export type Message = { type: MessageKind, id: string, room_id: string, user_id: string, username: string, content: string, timestamp: string, 
/**
 * For an edit or a deletion: the seq of the message it changes.
 */
target_seq?: number, 
/**
 * A reply in the thread of the message at this seq.
 */
reply_to?: number, 
/**
 * In history: how many replies its thread has.
 */
reply_count?: number, 
/**
 * Members the text mentions (`@username`), resolved when it was posted.
 */
mentions?: Array<string>, 
/**
 * The text calls the whole room (`@room`, by its owner or an admin).
 */
mentions_room?: boolean, 
/**
 * Files posted with the text (uploaded first, to the same room).
 */
attachments?: Array<AttachedFile>, 
/**
 * In history: when the text was last edited.
 */
edited_at?: string, 
/**
 * In history: deleted; the content is gone.
 */
deleted?: boolean, 
/**
 * In history: who reacted with what, by emoji.
 */
reactions?: { [key in string]: Array<string> }, 
/**
 * Position in the room, starting at 1 and increasing by one per message
 * or change. Last, so Redis can splice it in (see `split_at_seq`).
 */
seq: number, };

export type UserView = { id: string, username: string, 
/**
 * Only in the caller's own profile: other users' addresses are private.
 */
email?: string, display_name: string | null, avatar_url: string | null, avatar_color: string | null, created_at: string, 
/**
 * Whether the user has a live connection; in single-user lookups.
 */
online?: boolean, 
/**
 * When their last live connection closed (absent: never seen online).
 */
last_seen_at?: string, };

export type RoomView = { id: string, name: string, description: string, is_private: boolean, is_direct: boolean, creator_id: string, members: Array<string>, admins: Array<string>, created_at: string, };

/**
 * A page of the room list (`GET /api/rooms`).
 */
export type RoomsPage = { rooms: Array<RoomView>, 
/**
 * Rooms the caller can see in all.
 */
total: number, offset: number, limit: number, };

/**
 * A page of a room's history or of a thread (`GET /api/rooms/{id}/messages`),
 * oldest first, each message as it is now.
 */
export type HistoryView = { messages: Array<Message>, 
/**
 * Messages in the room (or replies in the thread).
 */
total: number, offset: number, limit: number, };

/**
 * A signed-in session: a short-lived access token and the refresh token that
 * renews it.
 */
export type SessionView = { token: string, token_type: "Bearer", 
/**
 * Seconds the access token lives.
 */
expires_in: number, refresh_token: string, user: UserView, };

/**
 * A piece of a message around its first match, with the matches in it.
 */
export type Snippet = { text: string, 
/**
 * `[start, end)` char offsets in `text` of each match, in order.
 */
highlights: Array<[number, number]>, };

/**
 * One result of `GET /api/search`.
 */
export type SearchHit = { 
/**
 * As it is now (edits applied).
 */
message: Message, room_name: string, snippet: Snippet, score: number, };

/**
 * What `GET /api/search` answers: the terms it looked for, best results first.
 */
export type SearchView = { terms: Array<string>, results: Array<SearchHit>, };

export type PresenceStatus = "online" | "offline";

/**
 * What the server sends besides chat messages (which are [`crate::model::Message`]s).
 */
export type ServerFrame = { "type": "ack", client_id: string | null, room_id: string, id: string, seq: number, } | { "type": "presence", room_id: string, user_id: string, username: string, status: PresenceStatus, } | { "type": "typing", room_id: string, user_id: string, username: string, } | { "type": "read", room_id: string, user_id: string, seq: number, } | { "type": "joined", room_id: string, last_seq: number, } | { "type": "left", room_id: string, } | { "type": "resumed", room_id: string, from_seq: number, last_seq: number, } | { "type": "room_added", room: RoomView, } | { "type": "user_updated", user: UserView, } | { "type": "room_updated", room: RoomView, } | { "type": "room_removed", room_id: string, } | { "type": "authenticated", exp: number, } | { "type": "error", code: ErrorCode, message: string, retryable?: boolean, retry_after?: number, } | { "type": "pong" };

/**
 * What a client may send.
 */
export type ClientFrame = { "type": "message", room_id: string, content: string, client_id?: string, 
/**
 * A reply in the thread of the message at this seq.
 */
reply_to?: number, 
/**
 * Files uploaded to this room by the sender (`POST
 * /api/rooms/{id}/attachments`), at most [`MAX_ATTACHMENTS`].
 */
attachments?: Array<string>, } | { "type": "edit", room_id: string, seq: number, content: string, client_id?: string, } | { "type": "delete", room_id: string, seq: number, client_id?: string, } | { "type": "react", room_id: string, seq: number, emoji: string, client_id?: string, } | { "type": "unreact", room_id: string, seq: number, emoji: string, client_id?: string, } | { "type": "join", room_id: string, } | { "type": "leave", room_id: string, } | { "type": "typing", room_id: string, } | { "type": "read", room_id: string, seq: number, } | { "type": "resume", room_id: string, last_seq: number, } | { "type": "auth", token: string, } | { "type": "ping" };

/** Refusals that may pass when sent again unchanged. */
export const RETRYABLE: readonly ErrorCode[] = ["rate_limited", "request_timeout", "unavailable", "busy", "internal"];

/** Longest message text, in characters, after trimming. */
export const MAX_CONTENT_CHARS = 4000;
/** Most files one message carries. */
export const MAX_ATTACHMENTS = 10;
/** Longest `client_id`. */
export const MAX_CLIENT_ID_CHARS = 64;
/** Most distinct reactions one message shows. */
export const MAX_REACTIONS = 20;
