import { useEffect, useLayoutEffect, useRef, useState } from "react";
import type { ChatActions } from "../actions";
import { emptyTimeline } from "../protocol/timeline";
import type { ChatMessage, Room } from "../protocol/types";
import { nameOf, presenceOf, seenBy, typingIn, type ChatState } from "../state";
import { Avatar } from "./Avatar";
import { Composer } from "./room/Composer";
import { ago } from "./room/format";
import { Members, RenameForm } from "./room/Members";
import { Message } from "./room/Message";
import { Thread } from "./room/Thread";

/** The open room: its header, members, timeline (scrolling back for older pages), typing line and composer. */
export function RoomView({ room, state, actions }: { room: Room; state: ChatState; actions: ChatActions }) {
  const timeline = state.timelines[room.id] ?? emptyTimeline();
  const list = useRef<HTMLOListElement>(null);
  const stickToBottom = useRef(true);
  const previousHeight = useRef(0);
  const loadingOlder = useRef(false);
  const [showMembers, setShowMembers] = useState(false);
  const [renaming, setRenaming] = useState(false);
  const [now, setNow] = useState(Date.now());
  const announcement = useAnnouncement(timeline.messages, state);
  const member = room.members.includes(state.me);
  /** The message whose thread is open beside the room, as it was when opened. */
  const [thread, setThread] = useState<ChatMessage | null>(null);
  // Shown as it is now (edits, its reply count), while it is loaded.
  const threadParent = thread ? (timeline.messages.find((m) => m.seq === thread.seq) ?? thread) : null;

  // Typing indicators expire: re-render while any are shown.
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);

  // New messages scroll into view when the reader is at the bottom; an older
  // page keeps what the reader was looking at in place.
  useLayoutEffect(() => {
    const element = list.current;
    if (!element) return;
    if (loadingOlder.current) {
      element.scrollTop += element.scrollHeight - previousHeight.current;
      loadingOlder.current = false;
    } else if (stickToBottom.current) {
      element.scrollTop = element.scrollHeight;
    }
    previousHeight.current = element.scrollHeight;
  }, [timeline.messages.length, timeline.pending.length]);

  // Read up to the newest message on screen.
  const newest = timeline.messages.at(-1)?.seq;
  useEffect(() => {
    if (member && newest && stickToBottom.current) actions.read(room.id, newest);
  }, [actions, member, newest, room.id]);

  function onScroll() {
    const element = list.current;
    if (!element) return;
    stickToBottom.current = element.scrollHeight - element.scrollTop - element.clientHeight < 40;
    if (element.scrollTop < 60 && timeline.hasOlder && !loadingOlder.current && timeline.messages.length > 0) {
      loadingOlder.current = true;
      previousHeight.current = element.scrollHeight;
      void actions.older(room.id, timeline.messages[0].seq).finally(() => {
        // If the page was empty the layout effect did not run.
        setTimeout(() => (loadingOlder.current = false), 0);
      });
    }
  }

  const owner = room.creator_id === state.me;
  const manager = owner || room.admins.includes(state.me);
  const typing = typingIn(state, room.id, now);
  const receipts = seenBy(state, room.id);
  const title = room.is_direct
    ? nameOf(state, room.members.find((m) => m !== state.me) ?? "", undefined, "Direct message")
    : room.name;

  return (
    <section className="room-view" aria-labelledby="room-title">
      <header className="room-header">
        <button type="button" className="back" onClick={() => actions.select(null)} aria-label="Back to rooms">
          ←
        </button>
        <div>
          <h2 id="room-title">{title}</h2>
          {room.is_direct && <PeerStatus room={room} state={state} now={now} />}
          {room.description && <p className="description">{room.description}</p>}
        </div>
        <div className="room-actions">
          {manager && !room.is_direct && (
            <button type="button" onClick={() => setRenaming(!renaming)} aria-expanded={renaming}>
              Rename
            </button>
          )}
          <button type="button" onClick={() => setShowMembers(!showMembers)} aria-expanded={showMembers}>
            Members ({room.members.length})
          </button>
          {member && !owner && !room.is_direct && (
            <button type="button" onClick={() => void actions.leave(room)}>
              Leave
            </button>
          )}
        </div>
      </header>
      {renaming && <RenameForm room={room} actions={actions} onDone={() => setRenaming(false)} />}
      {showMembers && <Members room={room} state={state} actions={actions} manager={manager} />}
      <div className="room-body">
        <div className="room-main">
          <ol className="messages" ref={list} onScroll={onScroll} aria-label={`Messages in ${title}`}>
            {timeline.hasOlder && timeline.messages.length > 0 && (
              <li className="older-hint">Scroll up for older messages</li>
            )}
            {timeline.messages.map((message) => (
              <Message
                key={message.id}
                message={message}
                state={state}
                actions={actions}
                manager={manager}
                seenBy={receipts[message.seq]}
                onThread={(seq) => setThread(thread?.seq === seq ? null : message)}
                threadShown={thread?.seq === message.seq}
              />
            ))}
            {timeline.pending.map((pending) => (
              <li key={pending.clientId} className={`message mine pending ${pending.failed ? "failed" : ""}`}>
                <Avatar name={nameOf(state, state.me, undefined, "me")} profile={state.profiles[state.me]} files={actions.files} />
                <div className="bubble">
                  <div className="meta">
                    <strong className="author">{nameOf(state, state.me)}</strong>{" "}
                    <span className="sending">{pending.failed ? `Not sent: ${pending.failed}` : "sending…"}</span>
                  </div>
                  {pending.content && <p className="content">{pending.content}</p>}
                  {pending.attachments && pending.attachments.length > 0 && (
                    <p className="content">{pending.attachments.map((file) => file.filename).join(", ")}</p>
                  )}
                </div>
              </li>
            ))}
          </ol>
          <p className="visually-hidden" aria-live="polite" aria-atomic="true">
            {announcement}
          </p>
          <div className="below-messages">
            <p className="typing" aria-live="polite">
              {typing.length === 1 ? `${typing[0]} is typing…` : typing.length > 1 ? `${typing.join(", ")} are typing…` : ""}
            </p>
          </div>
          {member ? (
            <Composer room={room} state={state} actions={actions} title={title} onSend={() => (stickToBottom.current = true)} />
          ) : (
            <div className="composer">
              <button type="button" onClick={() => void actions.join(room.id)}>
                Join to write
              </button>
            </div>
          )}
        </div>
        {threadParent && (
          <Thread parent={threadParent} state={state} actions={actions} onClose={() => setThread(null)} />
        )}
      </div>
    </section>
  );
}

/** "online", or when the other person of a direct room was last seen. */
function PeerStatus({ room, state, now }: { room: Room; state: ChatState; now: number }) {
  const other = room.members.find((m) => m !== state.me);
  if (!other) return null;
  const presence = presenceOf(state, other);
  if (presence === "online") return <p className="description">online</p>;
  if (presence === "unknown") return <p className="description">presence unknown while reconnecting</p>;
  const seen = state.lastSeen[other];
  if (!seen) return null;
  return <p className="description">last seen {ago(Date.parse(seen), now)}</p>;
}

/** Messages announced at once, at most; more at once is a page of history. */
const ANNOUNCED_AT_ONCE = 5;
/** New messages within this long of each other are announced as a count. */
const BURST_MS = 3000;

/**
 * What a screen reader hears of the open room: each new message from
 * someone else, live ("bob: hi"), and in a burst only how many came with
 * the last one; never the pages of history the room loads (the list
 * itself is no live region, which would read them all out).
 */
function useAnnouncement(messages: ChatMessage[], state: ChatState): string {
  const [announcement, setAnnouncement] = useState("");
  const newest = useRef<number | undefined>(undefined);
  const burst = useRef({ count: 0, at: 0 });
  const last = messages.at(-1);
  useEffect(() => {
    const before = newest.current;
    newest.current = last?.seq;
    if (before === undefined || !last || last.seq <= before) return;
    const fresh = messages.filter((m) => m.seq > before && m.type === "text" && m.user_id !== state.me);
    if (fresh.length === 0 || fresh.length > ANNOUNCED_AT_ONCE) return;
    const at = Date.now();
    const count = at - burst.current.at < BURST_MS ? burst.current.count + fresh.length : fresh.length;
    burst.current = { count, at };
    const message = fresh[fresh.length - 1];
    const said = `${nameOf(state, message.user_id, message.username)}: ${message.content || "sent files"}`;
    setAnnouncement(count > 1 ? `${count} new messages; the last, ${said}` : said);
    // Only a new newest message announces anything.
  }, [last?.seq]);
  return announcement;
}
