// @mentions in the web client: what the composer suggests while a name is
// typed, and whether a message mentions me. Pure functions, unit tested.
import type { ChatMessage } from "./protocol/types";

const NAME = /[A-Za-z0-9_.-]/;

/** The `@name` being typed at `caret`, if the caret is in one. */
export function mentionAt(draft: string, caret: number): { start: number; query: string } | null {
  let start = caret;
  while (start > 0 && NAME.test(draft[start - 1])) start -= 1;
  if (start === 0 || draft[start - 1] !== "@") return null;
  const at = start - 1;
  if (at > 0 && NAME.test(draft[at - 1])) return null; // an e-mail address, not a mention
  return { start: at, query: draft.slice(start, caret).toLowerCase() };
}

/** Someone a message can mention: the username the text carries, and the name shown. */
export interface Mentionable {
  username: string;
  name: string;
}

/** The whole room, for its owner and admins. */
export const EVERYONE: Mentionable = { username: "room", name: "everyone in the room" };

/**
 * Who completes `query` (lower case): members whose username, or a word of
 * whose shown name, starts with it, by shown name; then `@room` for those who
 * may call it. At most six.
 */
export function suggestions(query: string, people: Mentionable[], mayCallRoom: boolean): Mentionable[] {
  const byUsername = new Map(people.map((p) => [p.username, p]));
  const candidates = [...byUsername.values()].sort((a, b) => a.name.localeCompare(b.name));
  if (mayCallRoom) candidates.push(EVERYONE);
  const matches = (p: Mentionable) =>
    p.username.toLowerCase().startsWith(query) ||
    p.name
      .toLowerCase()
      .split(/\s+/)
      .some((word) => word.startsWith(query));
  return candidates.filter(matches).slice(0, 6);
}

/** `draft` with the mention at `start` (up to `caret`) completed to `@name `. */
export function complete(draft: string, start: number, caret: number, name: string): { text: string; caret: number } {
  const inserted = `@${name} `;
  return { text: draft.slice(0, start) + inserted + draft.slice(caret), caret: start + inserted.length };
}

/** Whether a message from someone else mentions me (by name, or the whole room). */
export function mentionsMe(message: ChatMessage, me: string): boolean {
  return message.user_id !== me && (message.mentions_room === true || (message.mentions ?? []).includes(me));
}
