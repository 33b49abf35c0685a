// One room's messages as the client shows them: ordered by seq, each once,
// with the user's own messages shown at once and confirmed by their ack.
// Pure functions of plain data, so the rules are tested without a socket.

import type { AttachedFile, ChatChange, ChatMessage } from "./types";

/** A message of ours the server has not acknowledged yet. */
export interface Pending {
  clientId: string;
  roomId: string;
  content: string;
  attachments?: AttachedFile[];
  sentAt: string;
  failed?: string;
}

export interface Timeline {
  /** Ordered by seq, no two with the same id or seq. */
  messages: ChatMessage[];
  /** Highest seq received without a gap: what `resume` asks after. */
  lastSeq: number;
  /** Our unacknowledged messages, oldest first. */
  pending: Pending[];
  /** Whether older history exists before `messages[0]`. */
  hasOlder: boolean;
}

export const emptyTimeline = (): Timeline => ({ messages: [], lastSeq: 0, pending: [], hasOlder: true });

/**
 * Adds messages from any source (live, resume replay, history page): drops
 * those already present (by id, or by seq), keeps seq order, and advances
 * `lastSeq` only through a contiguous run, so a gap is noticed.
 */
export function addMessages(timeline: Timeline, incoming: ChatMessage[]): Timeline {
  const ids = new Set(timeline.messages.map((m) => m.id));
  const seqs = new Set(timeline.messages.map((m) => m.seq));
  const fresh = incoming.filter((m) => {
    if (ids.has(m.id) || seqs.has(m.seq)) return false;
    ids.add(m.id);
    seqs.add(m.seq);
    return true;
  });
  if (fresh.length === 0) return timeline;
  const messages = [...timeline.messages, ...fresh].sort((a, b) => a.seq - b.seq);
  let lastSeq = timeline.lastSeq;
  while (seqs.has(lastSeq + 1)) lastSeq += 1;
  return { ...timeline, messages, lastSeq };
}

/** Whether a live message shows that something before it was missed. */
export function revealsGap(timeline: Timeline, message: ChatMessage): boolean {
  return message.seq > timeline.lastSeq + 1;
}

/**
 * The room's newest seq when it was opened (`joined.last_seq`): nothing
 * older is owed live, so the contiguous run may start there.
 */
export function openedAt(timeline: Timeline, lastSeq: number): Timeline {
  if (lastSeq <= timeline.lastSeq) return timeline;
  return { ...timeline, lastSeq };
}

export function addPending(timeline: Timeline, pending: Pending): Timeline {
  return { ...timeline, pending: [...timeline.pending, pending] };
}

/** Our message is stored: it now shows by its seq, not as pending. */
export function acknowledge(timeline: Timeline, clientId: string | null): Timeline {
  if (!clientId) return timeline;
  return { ...timeline, pending: timeline.pending.filter((p) => p.clientId !== clientId) };
}

export function markFailed(timeline: Timeline, clientId: string, reason: string): Timeline {
  return {
    ...timeline,
    pending: timeline.pending.map((p) => (p.clientId === clientId ? { ...p, failed: reason } : p)),
  };
}

/** An older page of history, loaded while scrolling back. */
export function addOlder(timeline: Timeline, page: ChatMessage[], pageSize: number): Timeline {
  const next = addMessages(timeline, page);
  const oldest = next.messages[0]?.seq ?? 1;
  return { ...next, hasOlder: page.length >= pageSize && oldest > 1 };
}

/**
 * An edit or a deletion, applied to the message it changes if it is shown
 * (an older one gets it from history, which lists messages as they are now).
 * A deletion is final.
 */
export function applyChange(timeline: Timeline, change: ChatChange): Timeline {
  let changed = false;
  const messages = timeline.messages.map((m) => {
    if (m.seq !== change.target_seq || m.type !== "text" || m.deleted) return m;
    changed = true;
    switch (change.type) {
      case "delete":
        return { ...m, content: "", deleted: true, edited_at: undefined, reactions: undefined, attachments: undefined };
      case "edit":
        return { ...m, content: change.content, edited_at: change.timestamp };
      case "react":
      case "unreact":
        return { ...m, reactions: react(m.reactions ?? {}, change) };
    }
  });
  return changed ? { ...timeline, messages } : timeline;
}

/** Reactions as sets of users per emoji: adding twice or taking back what is not there changes nothing. */
function react(reactions: Record<string, string[]>, change: ChatChange): Record<string, string[]> {
  const users = reactions[change.content] ?? [];
  const next = { ...reactions };
  if (change.type === "react") {
    if (!users.includes(change.user_id)) next[change.content] = [...users, change.user_id];
  } else {
    const rest = users.filter((u) => u !== change.user_id);
    if (rest.length > 0) next[change.content] = rest;
    else delete next[change.content];
  }
  return next;
}
