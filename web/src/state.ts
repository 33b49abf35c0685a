// The chat screen's state and every change to it, as one pure reducer:
// rooms, their timelines, unread counts, typing, presence and read markers.

import type { Status } from "./protocol/client";
import {
  acknowledge,
  addMessages,
  addOlder,
  addPending,
  applyChange,
  emptyTimeline,
  markFailed,
  openedAt,
  type Pending,
  type Timeline,
} from "./protocol/timeline";
import { mentionsMe } from "./mentions";
import type { ChatMessage, Room, ServerFrame, User } from "./protocol/types";

export const PAGE = 50;
const TYPING_SHOWN_MS = 4000;

export interface ChatState {
  me: string;
  rooms: Record<string, Room>;
  timelines: Record<string, Timeline>;
  /** Each open thread's replies, oldest first, by `threadKey`. */
  threads: Record<string, ChatMessage[]>;
  unread: Record<string, number>;
  /** Unread messages that mention me, per room. */
  mentions: Record<string, number>;
  active: string | null;
  /** room → user → until (ms) */
  typing: Record<string, Record<string, { username: string; until: number }>>;
  /** user → online, from presence frames */
  online: Record<string, boolean>;
  /** room → user → highest seq read */
  reads: Record<string, Record<string, number>>;
  /** user id → username, learned from messages and lookups */
  names: Record<string, string>;
  /** How people show themselves, from lookups and `user_updated` frames. */
  profiles: Record<string, Profile>;
  /** When each user was last online, as far as this client knows. */
  lastSeen: Record<string, string>;
  status: Status;
  retryInMs?: number;
  notice: string | null;
}

/** What a person chose to look like; null where they chose nothing. */
export interface Profile {
  displayName: string | null;
  color: string | null;
  /** Where their picture is read (`/api/users/{id}/avatar?v=…`). */
  picture: string | null;
}

/** A user's profile from the API, if it is one of ours (remote pictures are never shown). */
export function profileOf(user: Partial<Pick<User, "display_name" | "avatar_url" | "avatar_color">>): Profile {
  const picture = user.avatar_url?.startsWith("/api/") ? user.avatar_url : null;
  return { displayName: user.display_name ?? null, color: user.avatar_color ?? null, picture };
}

/**
 * The one name shown for `userId` everywhere (authors, receipts, reactions,
 * threads, direct rooms, members, typing, notifications): their display
 * name, else their username (`username` when the caller has it at hand),
 * else `unknown`. The username itself shows on hover and in mentions.
 */
export const nameOf = (state: ChatState, userId: string, username?: string, unknown = "someone"): string =>
  state.profiles[userId]?.displayName ?? username ?? state.names[userId] ?? unknown;

/** What the client can say of someone's presence. */
export type Presence = "online" | "offline" | "unknown";

/**
 * `userId`'s presence as far as this client knows: unknown while its own
 * connection is down (what it last heard may have changed since); looked
 * up again and followed live once it is back.
 */
export function presenceOf(state: ChatState, userId: string): Presence {
  if (state.status !== "online") return "unknown";
  return state.online[userId] ? "online" : "offline";
}

export type Action =
  | { type: "rooms"; rooms: Room[] }
  | { type: "room"; room: Room }
  | { type: "room_gone"; roomId: string }
  | { type: "select"; roomId: string | null }
  | { type: "frame"; frame: ServerFrame; now: number }
  | { type: "latest"; roomId: string; messages: ChatMessage[] }
  | { type: "older"; roomId: string; messages: ChatMessage[] }
  | { type: "thread"; roomId: string; parent: number; messages: ChatMessage[] }
  | { type: "pending"; pending: Pending }
  | { type: "status"; status: Status; retryInMs?: number }
  /** Users looked up: their names, and whether they are online now. */
  | {
      type: "users";
      users: (Pick<User, "id" | "username" | "online" | "last_seen_at"> &
        Partial<Pick<User, "display_name" | "avatar_url" | "avatar_color">>)[];
    }
  | { type: "notice"; notice: string | null };

export const initialState = (me: string, myName: string): ChatState => ({
  me,
  rooms: {},
  timelines: {},
  threads: {},
  unread: {},
  mentions: {},
  active: null,
  typing: {},
  online: { [me]: true },
  reads: {},
  names: { [me]: myName },
  profiles: {},
  lastSeen: {},
  status: "connecting",
  notice: null,
});

const timelineOf = (state: ChatState, roomId: string) => state.timelines[roomId] ?? emptyTimeline();

function withTimeline(state: ChatState, roomId: string, timeline: Timeline): ChatState {
  return { ...state, timelines: { ...state.timelines, [roomId]: timeline } };
}

export function reducer(state: ChatState, action: Action): ChatState {
  switch (action.type) {
    case "rooms":
      return { ...state, rooms: Object.fromEntries(action.rooms.map((r) => [r.id, r])) };
    case "room":
      return { ...state, rooms: { ...state.rooms, [action.room.id]: action.room } };
    case "room_gone": {
      const rooms = { ...state.rooms };
      delete rooms[action.roomId];
      return { ...state, rooms, active: state.active === action.roomId ? null : state.active };
    }
    case "select":
      return {
        ...state,
        active: action.roomId,
        unread: action.roomId ? { ...state.unread, [action.roomId]: 0 } : state.unread,
        mentions: action.roomId ? { ...state.mentions, [action.roomId]: 0 } : state.mentions,
      };
    case "latest": {
      const timeline = addMessages(timelineOf(state, action.roomId), action.messages);
      const newest = action.messages.at(-1)?.seq ?? 0;
      const next = {
        ...openedAt(timeline, newest),
        hasOlder: action.messages.length >= PAGE && (action.messages[0]?.seq ?? 1) > 1,
      };
      return learnNames(withTimeline(state, action.roomId, next), action.messages);
    }
    case "older":
      return learnNames(
        withTimeline(state, action.roomId, addOlder(timelineOf(state, action.roomId), action.messages, PAGE)),
        action.messages,
      );
    case "thread": {
      const key = threadKey(action.roomId, action.parent);
      const replies = mergeReplies(state.threads[key] ?? [], action.messages);
      return learnNames({ ...state, threads: { ...state.threads, [key]: replies } }, action.messages);
    }
    case "pending":
      return withTimeline(state, action.pending.roomId, addPending(timelineOf(state, action.pending.roomId), action.pending));
    case "status":
      return { ...state, status: action.status, retryInMs: action.retryInMs };
    case "users": {
      const names = { ...state.names };
      const online = { ...state.online };
      const lastSeen = { ...state.lastSeen };
      const profiles = { ...state.profiles };
      for (const user of action.users) {
        names[user.id] = user.username;
        if (user.online !== undefined) online[user.id] = user.online;
        if (user.last_seen_at) lastSeen[user.id] = user.last_seen_at;
        if (user.display_name !== undefined) profiles[user.id] = profileOf(user);
      }
      return { ...state, names, online, lastSeen, profiles };
    }
    case "notice":
      return { ...state, notice: action.notice };
    case "frame":
      return onFrame(state, action.frame, action.now);
  }
}

/** Where a thread's replies are kept. */
export const threadKey = (roomId: string, parent: number) => `${roomId}:${parent}`;

function mergeReplies(known: ChatMessage[], incoming: ChatMessage[]): ChatMessage[] {
  const bySeq = new Map(known.map((m) => [m.seq, m]));
  for (const m of incoming) if (!bySeq.has(m.seq)) bySeq.set(m.seq, m);
  return [...bySeq.values()].sort((a, b) => a.seq - b.seq);
}

/** A reply arrived live: into its thread, and counted on its parent. */
function onReply(state: ChatState, reply: ChatMessage, parent: number): ChatState {
  const key = threadKey(reply.room_id, parent);
  const known = state.threads[key] ?? [];
  if (known.some((m) => m.seq === reply.seq)) return state;
  const timeline = timelineOf(state, reply.room_id);
  const messages = timeline.messages.map((m) =>
    m.seq === parent ? { ...m, reply_count: (m.reply_count ?? 0) + 1 } : m,
  );
  const next = withTimeline(state, reply.room_id, { ...timeline, messages });
  return learnNames({ ...next, threads: { ...next.threads, [key]: mergeReplies(known, [reply]) } }, [reply]);
}

function learnNames(state: ChatState, messages: ChatMessage[]): ChatState {
  const names = { ...state.names };
  for (const m of messages) if (m.type === "text") names[m.user_id] = m.username;
  return { ...state, names };
}

function onFrame(state: ChatState, frame: ServerFrame, now: number): ChatState {
  switch (frame.type) {
    case "text":
    case "system": {
      let next: ChatState;
      if (frame.reply_to === undefined) {
        const before = timelineOf(state, frame.room_id);
        const after = addMessages(before, [frame]);
        if (after === before) return state;
        next = learnNames(withTimeline(state, frame.room_id, after), [frame]);
      } else {
        next = onReply(state, frame, frame.reply_to);
        if (next === state) return state;
      }
      // A message from someone ends their typing.
      const typing = next.typing[frame.room_id];
      if (typing?.[frame.user_id]) {
        const rest = { ...typing };
        delete rest[frame.user_id];
        next = { ...next, typing: { ...next.typing, [frame.room_id]: rest } };
      }
      if (frame.room_id !== state.active && frame.user_id !== state.me) {
        next = { ...next, unread: { ...next.unread, [frame.room_id]: (next.unread[frame.room_id] ?? 0) + 1 } };
        if (mentionsMe(frame, state.me)) {
          next = { ...next, mentions: { ...next.mentions, [frame.room_id]: (next.mentions[frame.room_id] ?? 0) + 1 } };
        }
      }
      return next;
    }
    case "edit":
    case "delete":
    case "react":
    case "unreact": {
      // The changed message is in the room's line or in one of its threads.
      const threads = { ...state.threads };
      for (const [key, replies] of Object.entries(state.threads)) {
        if (!key.startsWith(`${frame.room_id}:`)) continue;
        const changed = applyChange({ ...emptyTimeline(), messages: replies }, frame).messages;
        if (changed !== replies) threads[key] = changed;
      }
      return withTimeline({ ...state, threads }, frame.room_id, applyChange(timelineOf(state, frame.room_id), frame));
    }
    case "joined":
      return withTimeline(state, frame.room_id, openedAt(timelineOf(state, frame.room_id), frame.last_seq));
    case "ack":
      return withTimeline(state, frame.room_id, acknowledge(timelineOf(state, frame.room_id), frame.client_id));
    case "typing": {
      if (frame.user_id === state.me) return state;
      const room = { ...(state.typing[frame.room_id] ?? {}) };
      room[frame.user_id] = { username: frame.username, until: now + TYPING_SHOWN_MS };
      return {
        ...state,
        typing: { ...state.typing, [frame.room_id]: room },
        names: { ...state.names, [frame.user_id]: frame.username },
      };
    }
    case "presence":
      return {
        ...state,
        online: { ...state.online, [frame.user_id]: frame.status === "online" },
        names: { ...state.names, [frame.user_id]: frame.username },
        lastSeen:
          frame.status === "offline"
            ? { ...state.lastSeen, [frame.user_id]: new Date(now).toISOString() }
            : state.lastSeen,
      };
    case "user_updated":
      return {
        ...state,
        names: { ...state.names, [frame.user.id]: frame.user.username },
        profiles: { ...state.profiles, [frame.user.id]: profileOf(frame.user) },
      };
    case "read": {
      const room = { ...(state.reads[frame.room_id] ?? {}) };
      room[frame.user_id] = Math.max(room[frame.user_id] ?? 0, frame.seq);
      return { ...state, reads: { ...state.reads, [frame.room_id]: room } };
    }
    case "room_added":
    case "room_updated":
      return { ...state, rooms: { ...state.rooms, [frame.room.id]: frame.room } };
    case "room_removed":
      return onFrameRoomGone(state, frame.room_id);
    case "left": {
      // Removed from the room (or it was deleted): it goes from my list unless it is public.
      const room = state.rooms[frame.room_id];
      if (room && !room.is_private) {
        return { ...state, rooms: { ...state.rooms, [room.id]: { ...room, members: room.members.filter((m) => m !== state.me) } } };
      }
      return onFrameRoomGone(state, frame.room_id);
    }
    case "error": {
      if (frame.retryable) {
        return { ...state, notice: `${frame.message} Retrying…` };
      }
      if (frame.code === "message_too_long" || frame.code === "empty_message") {
        // The oldest pending message is the one refused.
        const active = state.active;
        const pending = active ? timelineOf(state, active).pending[0] : undefined;
        if (active && pending) {
          return withTimeline(state, active, markFailed(timelineOf(state, active), pending.clientId, frame.message));
        }
      }
      return { ...state, notice: frame.message };
    }
    default:
      return state;
  }
}

function onFrameRoomGone(state: ChatState, roomId: string): ChatState {
  const rooms = { ...state.rooms };
  delete rooms[roomId];
  return { ...state, rooms, active: state.active === roomId ? null : state.active };
}

/** Who is typing in a room now, by the names shown. */
export function typingIn(state: ChatState, roomId: string, now: number): string[] {
  return Object.entries(state.typing[roomId] ?? {})
    .filter(([, t]) => t.until > now)
    .map(([user, t]) => nameOf(state, user, t.username));
}

/**
 * Read receipts: for each shown message of a room, who (besides me) last
 * read up to it: the newest message at or before each person's read marker.
 */
export function seenBy(state: ChatState, roomId: string): Record<number, string[]> {
  const messages = timelineOf(state, roomId).messages;
  const seen: Record<number, string[]> = {};
  for (const [user, readSeq] of Object.entries(state.reads[roomId] ?? {})) {
    if (user === state.me) continue;
    let at: number | undefined;
    for (const m of messages) if (m.type === "text" && m.seq <= readSeq) at = m.seq;
    if (at !== undefined) (seen[at] ??= []).push(user);
  }
  return seen;
}
