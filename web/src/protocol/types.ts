// The wire shapes of docs/protocol.md and docs/api.md.

export type MessageKind = "text" | "system";

/** A file as messages carry it and the upload answers it (docs/api.md, Attachments). */
export interface AttachedFile {
  id: string;
  filename: string;
  /** Sniffed by the server from the bytes. */
  content_type: string;
  size: number;
  width?: number;
  height?: number;
  /** Whether `/api/attachments/{id}/thumbnail` exists (decodable images only). */
  thumbnail?: boolean;
}

/** A chat message, live or from history: the same object either way. */
export interface ChatMessage {
  type: MessageKind;
  id: string;
  room_id: string;
  user_id: string;
  username: string;
  content: string;
  timestamp: string;
  /** A reply in the thread of the message at this seq. */
  reply_to?: number;
  /** History's view: how many replies its thread has. */
  reply_count?: number;
  /** Members the text mentions, and whether it calls the whole room (`@room`). */
  mentions?: string[];
  mentions_room?: boolean;
  /** History's view: when the text was last edited. */
  edited_at?: string;
  /** History's view: deleted, the content gone. */
  deleted?: boolean;
  /** History's view: who reacted with what, by emoji. */
  reactions?: Record<string, string[]>;
  /** Files posted with the text. */
  attachments?: AttachedFile[];
  seq: number;
}

/** An edit or a deletion of the message at `target_seq`, with a seq of its own. */
/** An edit, a deletion or a reaction (`content`: the emoji) to the message at `target_seq`, with a seq of its own. */
export interface ChatChange
  extends Omit<
    ChatMessage,
    "type" | "edited_at" | "deleted" | "reactions" | "mentions" | "mentions_room" | "reply_to" | "reply_count" | "attachments"
  > {
  type: "edit" | "delete" | "react" | "unreact";
  target_seq: number;
}

export interface User {
  id: string;
  username: string;
  email?: string;
  display_name: string | null;
  avatar_url: string | null;
  /** `#rrggbb` behind the initials where there is no picture. */
  avatar_color?: string | null;
  created_at: string;
  online?: boolean;
  /** When their last live connection closed. */
  last_seen_at?: string;
}

export interface Room {
  id: string;
  name: string;
  description: string;
  is_private: boolean;
  is_direct: boolean;
  creator_id: string;
  members: string[];
  admins: string[];
  created_at: string;
}

/** One result of `GET /api/search`. */
export interface SearchHit {
  message: ChatMessage;
  room_name: string;
  /** Part of the text, with `[start, end)` char ranges of the matches. */
  snippet: { text: string; highlights: [number, number][] };
  score: number;
}

export type ServerFrame =
  | ChatMessage
  | ChatChange
  | { type: "ack"; client_id: string | null; room_id: string; id: string; seq: number }
  | { type: "joined"; room_id: string; last_seq: number }
  | { type: "resumed"; room_id: string; from_seq: number; last_seq: number }
  | { type: "left"; room_id: string }
  | { type: "presence"; room_id: string; user_id: string; username: string; status: "online" | "offline" }
  | { type: "typing"; room_id: string; user_id: string; username: string }
  | { type: "read"; room_id: string; user_id: string; seq: number }
  | { type: "room_added"; room: Room }
  | { type: "room_updated"; room: Room }
  | { type: "user_updated"; user: User }
  | { type: "room_removed"; room_id: string }
  | { type: "authenticated"; exp: number }
  | { type: "pong" }
  | { type: "error"; code: string; message: string; retry_after?: number; room_id?: string };

export type ClientFrame =
  | { type: "message"; room_id: string; content: string; client_id: string; reply_to?: number; attachments?: string[] }
  | { type: "edit"; room_id: string; seq: number; content: string; client_id: string }
  | { type: "delete"; room_id: string; seq: number; client_id: string }
  | { type: "react" | "unreact"; room_id: string; seq: number; emoji: string; client_id: string }
  | { type: "join"; room_id: string }
  | { type: "resume"; room_id: string; last_seq: number }
  | { type: "leave"; room_id: string }
  | { type: "typing"; room_id: string }
  | { type: "read"; room_id: string; seq: number }
  | { type: "auth"; token: string }
  | { type: "ping" };

/** Parses a frame from the server; `null` for anything that is not one. */
export function parseFrame(data: unknown): ServerFrame | null {
  if (typeof data !== "string") return null;
  try {
    const value = JSON.parse(data);
    if (value && typeof value === "object" && typeof value.type === "string") {
      return value as ServerFrame;
    }
  } catch {
    // not JSON: ignored like any unknown frame
  }
  return null;
}
