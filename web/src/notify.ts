// What the browser shows beyond the page: the unread count in the tab's
// title, and desktop notifications for direct messages and mentions while
// the tab is hidden. Pure functions of the chat state, so they are unit tested.
import { mentionsMe } from "./mentions";
import { nameOf, type ChatState } from "./state";
import type { ServerFrame } from "./protocol/types";

const APP = "chatcluster";

/** The tab's title: the unread count first, so it shows in a crowded tab bar. */
export function pageTitle(state: ChatState): string {
  const unread = Object.values(state.unread).reduce((sum, n) => sum + n, 0);
  return unread > 0 ? `(${unread}) ${APP}` : APP;
}

export interface DesktopNotice {
  title: string;
  body: string;
  /** One notification per room: a newer one replaces it. */
  tag: string;
  roomId: string;
  /** The message shown: its deletion closes the notification. */
  seq: number;
}

/**
 * The notification `frame` deserves, given the state before it: a new
 * message from someone else in a direct room, while I am not looking (the
 * tab hidden, or another room open).
 */
export function desktopNotice(state: ChatState, frame: ServerFrame, hidden: boolean): DesktopNotice | null {
  if (frame.type !== "text" || frame.user_id === state.me) return null;
  const room = state.rooms[frame.room_id];
  const mentioned = mentionsMe(frame, state.me);
  if (!room || (!room.is_direct && !mentioned)) return null;
  if (!hidden && state.active === frame.room_id) return null;
  const known = state.timelines[frame.room_id]?.messages.some((m) => m.id === frame.id || m.seq === frame.seq);
  if (known) return null;
  const files = frame.attachments ?? [];
  const text = frame.content || (files.length === 1 ? `sent ${files[0].filename}` : `sent ${files.length} files`);
  const body = text.length > 140 ? `${text.slice(0, 139)}…` : text;
  const name = nameOf(state, frame.user_id, frame.username);
  const title = room.is_direct ? name : `${name} mentioned you in ${room.name}`;
  return { title, body, tag: frame.room_id, roomId: frame.room_id, seq: frame.seq };
}

/** Whether `frame` deletes the message `notice` shows, so it must go. */
export function retracts(notice: DesktopNotice, frame: ServerFrame): boolean {
  return frame.type === "delete" && frame.room_id === notice.roomId && frame.target_seq === notice.seq;
}
