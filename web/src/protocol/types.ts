// The wire shapes of docs/protocol.md and docs/api.md: generated from the
// server's Rust types into ./wire.ts (never edited by hand); here only the
// names the client uses for them.

import type { HistoryView, Message, ServerFrame as ControlFrame, RoomView, UserView } from "./wire";

export type {
  AttachedFile,
  ClientFrame,
  ErrorCode,
  HistoryView,
  RoomsPage,
  SearchHit,
  SearchView,
  SessionView,
} from "./wire";
export { MAX_ATTACHMENTS, MAX_CONTENT_CHARS, RETRYABLE } from "./wire";

export type User = UserView;
export type Room = RoomView;

/** A chat message, live or from history: the same object either way. */
export type ChatMessage = Message & { type: "text" | "system" };

/** An edit, a deletion or a reaction (`content`: the emoji) to the message at `target_seq`, with a seq of its own. */
export type ChatChange = Message & { type: "edit" | "delete" | "react" | "unreact"; target_seq: number };

/** A page of history or of a thread: text and system messages only, each as it is now. */
export type History = Omit<HistoryView, "messages"> & { messages: ChatMessage[] };

/** Anything the server sends on the socket. */
export type ServerFrame = ChatMessage | ChatChange | ControlFrame;

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
