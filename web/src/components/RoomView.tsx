import { useEffect, useLayoutEffect, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { seenBy, shownName, threadKey, typingIn, type ChatState } from "../state";
import { MAX_CONTENT_CHARS, type AttachedFile, type ChatMessage, type Room } from "../protocol/types";
import { ApiError } from "../api";
import { fitWithin, formatBytes, isPicture } from "../files";
import { emptyTimeline } from "../protocol/timeline";
import { Avatar } from "./Avatar";
import type { ChatActions } from "./ChatApp";
import { complete, mentionAt, suggestions } from "../mentions";

const TYPING_EVERY_MS = 2500;

function time(timestamp: string): string {
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/**
 * Message text as text: React escapes it, so markup shows as typed. Only
 * http(s) URLs become links, opening in a new tab without access to this one.
 */
function Content({ text, myName }: { text: string; myName: string }) {
  const parts = text.split(/(https?:\/\/[^\s<>"']+)/g);
  return (
    <>
      {parts.map((part, i) =>
        /^https?:\/\//.test(part) ? (
          <a key={i} href={part} target="_blank" rel="noopener noreferrer nofollow">
            {part}
          </a>
        ) : (
          <Mentions key={i} text={part} myName={myName} />
        ),
      )}
    </>
  );
}

/** Text with its @mentions marked, those of me (or of the whole room) more. */
function Mentions({ text, myName }: { text: string; myName: string }) {
  const parts = text.split(/((?:^|(?<=[^A-Za-z0-9_.-]))@[A-Za-z0-9_.-]*[A-Za-z0-9_])/g);
  return (
    <>
      {parts.map((part, i) => {
        if (!part.startsWith("@") || part.length < 2) return part;
        const name = part.slice(1).toLowerCase();
        const me = name === myName.toLowerCase() || name === "room" || name === "here" || name === "channel";
        return (
          <span key={i} className={me ? "mention me" : "mention"}>
            {part}
          </span>
        );
      })}
    </>
  );
}

function Message({
  message,
  state,
  actions,
  manager,
  seenBy: readers,
}: {
  message: ChatMessage;
  state: ChatState;
  actions: ChatActions;
  manager: boolean;
  /** Who last read up to this message. */
  seenBy?: string[];
}) {
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState(message.content);
  const [confirming, setConfirming] = useState(false);
  const [picking, setPicking] = useState(false);
  const [threadOpen, setThreadOpen] = useState(false);
  if (message.type === "system") {
    return (
      <li className="message system" data-seq={message.seq}>
        <span>{message.content}</span> <time dateTime={message.timestamp}>{time(message.timestamp)}</time>
      </li>
    );
  }
  const mine = message.user_id === state.me;
  const save = () => {
    const content = text.trim();
    if (content && content !== message.content) actions.editMessage(message.room_id, message.seq, content);
    setEditing(false);
  };
  const onKey = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      save();
    } else if (event.key === "Escape") {
      setEditing(false);
    }
  };
  return (
    <li className={`message ${mine ? "mine" : ""} ${message.deleted ? "deleted" : ""}`} data-seq={message.seq} data-id={message.id}>
      <Avatar
        name={message.username}
        online={state.online[message.user_id]}
        profile={state.profiles[message.user_id]}
        files={actions.files}
      />
      <div className="bubble">
        <div className="meta">
          <strong className="author" title={`@${message.username}`}>
            {shownName(state, message.user_id, message.username)}
          </strong>{" "}
          <time dateTime={message.timestamp}>{time(message.timestamp)}</time>
          {message.edited_at && !message.deleted && <span className="edited"> (edited)</span>}
        </div>
        {message.deleted ? (
          <p className="content tombstone">This message was deleted.</p>
        ) : editing ? (
          <div className="edit-form">
            <textarea
              aria-label="Edit your message"
              value={text}
              onChange={(e) => setText(e.target.value)}
              onKeyDown={onKey}
              maxLength={MAX_CONTENT_CHARS}
              autoFocus
            />
            <button type="button" onClick={save}>
              Save
            </button>
            <button type="button" onClick={() => setEditing(false)}>
              Cancel
            </button>
          </div>
        ) : (
          <>
            {(message.content || !message.attachments?.length) && (
              <p className="content">
                <Content text={message.content} myName={state.names[state.me] ?? ""} />
              </p>
            )}
            <Attachments files={message.attachments} actions={actions} />
          </>
        )}
        {!message.deleted && (
          <Reactions message={message} state={state} actions={actions} picking={picking} onPicked={() => setPicking(false)} />
        )}
        {!message.deleted && !editing && (
          <div className="message-actions">
            <button type="button" onClick={() => setPicking(!picking)} aria-expanded={picking}>
              React
            </button>
            {message.reply_to === undefined && (
              <button type="button" onClick={() => setThreadOpen(!threadOpen)} aria-expanded={threadOpen}>
                {message.reply_count ? `${message.reply_count} ${message.reply_count === 1 ? "reply" : "replies"}` : "Reply"}
              </button>
            )}
            {mine && (
              <button
                type="button"
                onClick={() => {
                  setText(message.content);
                  setEditing(true);
                }}
              >
                Edit
              </button>
            )}
            {(mine || manager) &&
              (confirming ? (
                <>
                  <button type="button" onClick={() => actions.deleteMessage(message.room_id, message.seq)}>
                    Yes, delete
                  </button>
                  <button type="button" onClick={() => setConfirming(false)}>
                    Keep
                  </button>
                </>
              ) : (
                <button type="button" onClick={() => setConfirming(true)}>
                  Delete
                </button>
              ))}
          </div>
        )}
        {threadOpen && <Thread parent={message} state={state} actions={actions} />}
        {readers && readers.length > 0 && (
          <p className="read-marker">Seen by {readers.map((u) => state.names[u] ?? "someone").join(", ")}</p>
        )}
      </div>
    </li>
  );
}

/** Thumbnails are shown at most this many CSS pixels on a side. */
const PICTURE_EDGE = 240;

/** A message's files, if any: pictures as thumbnails that open the full image, the rest as downloads. */
function Attachments({ files, actions }: { files?: AttachedFile[]; actions: ChatActions }) {
  if (!files || files.length === 0) return null;
  return (
    <ul className="attachments" aria-label="Files">
      {files.map((file) => (
        <li key={file.id}>
          {isPicture(file) ? (
            <Picture file={file} actions={actions} />
          ) : (
            <button
              type="button"
              className="file"
              onClick={() => void actions.files.save(file)}
              aria-label={`Download ${file.filename}, ${formatBytes(file.size)}`}
            >
              <span aria-hidden="true">📄</span> {file.filename} <span className="size">{formatBytes(file.size)}</span>
            </button>
          )}
        </li>
      ))}
    </ul>
  );
}

function Picture({ file, actions }: { file: AttachedFile; actions: ChatActions }) {
  const [url, setUrl] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let shown = true;
    actions.files.url(file, true).then(
      (thumbnail) => shown && setUrl(thumbnail),
      () => shown && setFailed(true),
    );
    return () => {
      shown = false;
    };
  }, [actions.files, file]);
  const box = fitWithin(file.width ?? PICTURE_EDGE, file.height ?? PICTURE_EDGE, PICTURE_EDGE);
  const open = async () => {
    const full = await actions.files.url(file, false);
    window.open(full, "_blank", "noopener");
  };
  return (
    <button
      type="button"
      className="picture"
      onClick={() => void open()}
      aria-label={`Open ${file.filename}`}
      style={{ width: box.width, height: box.height }}
    >
      {url ? (
        <img src={url} alt={file.filename} width={box.width} height={box.height} />
      ) : (
        <span className="picture-placeholder">{failed ? "Cannot load the picture" : "Loading…"}</span>
      )}
    </button>
  );
}

/** A file being uploaded from the composer, then waiting to be sent. */
interface Upload {
  key: number;
  name: string;
  /** 0 to 1 while the bytes go up. */
  progress: number;
  file?: AttachedFile;
  error?: string;
}

/** A message's thread: its replies and a box to reply, under the message. */
function Thread({ parent, state, actions }: { parent: ChatMessage; state: ChatState; actions: ChatActions }) {
  const [text, setText] = useState("");
  useEffect(() => {
    void actions.openThread(parent.room_id, parent.seq);
  }, [actions, parent.room_id, parent.seq]);
  const replies = state.threads[threadKey(parent.room_id, parent.seq)] ?? [];
  const send = (event?: FormEvent) => {
    event?.preventDefault();
    const content = text.trim();
    if (!content || content.length > MAX_CONTENT_CHARS) return;
    actions.reply(parent.room_id, parent.seq, content);
    setText("");
  };
  return (
    <section className="thread" aria-label={`Thread of ${parent.username}'s message`}>
      <ol className="replies">
        {replies.map((reply) => (
          <li key={reply.id} className="reply" data-seq={reply.seq}>
            <strong className="author">{reply.username}</strong>{" "}
            <time dateTime={reply.timestamp}>{time(reply.timestamp)}</time>{" "}
            {reply.deleted ? (
              <span className="tombstone">This message was deleted.</span>
            ) : (
              <>
                <span className="content">
                  <Content text={reply.content} myName={state.names[state.me] ?? ""} />
                </span>
                <Attachments files={reply.attachments} actions={actions} />
              </>
            )}
          </li>
        ))}
      </ol>
      <form className="reply-form" onSubmit={send}>
        <label>
          Reply in thread
          <textarea
            value={text}
            rows={1}
            maxLength={MAX_CONTENT_CHARS}
            onChange={(e) => setText(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && !e.shiftKey) {
                e.preventDefault();
                send();
              }
            }}
          />
        </label>
        <button type="submit" disabled={!text.trim()}>
          Send reply
        </button>
      </form>
    </section>
  );
}

/** "online", or when the other person of a direct room was last seen. */
function PeerStatus({ room, state, now }: { room: Room; state: ChatState; now: number }) {
  const other = room.members.find((m) => m !== state.me);
  if (!other) return null;
  if (state.online[other]) return <p className="description">online</p>;
  const seen = state.lastSeen[other];
  if (!seen) return null;
  return <p className="description">last seen {ago(Date.parse(seen), now)}</p>;
}

/** A past moment in words: "just now", "5 min ago", "3 h ago", or a date. */
export function ago(then: number, now: number): string {
  const minutes = Math.floor((now - then) / 60_000);
  if (Number.isNaN(minutes)) return "a while ago";
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  if (minutes < 24 * 60) return `${Math.floor(minutes / 60)} h ago`;
  return `on ${new Date(then).toLocaleDateString()}`;
}

/** The emoji offered when reacting. */
const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

/** A message's reactions with their counts (mine pressed), and the picker. */
function Reactions({
  message,
  state,
  actions,
  picking,
  onPicked,
}: {
  message: ChatMessage;
  state: ChatState;
  actions: ChatActions;
  picking: boolean;
  onPicked: () => void;
}) {
  const reactions = Object.entries(message.reactions ?? {});
  const toggle = (emoji: string) => {
    const mine = (message.reactions?.[emoji] ?? []).includes(state.me);
    actions.react(message.room_id, message.seq, emoji, !mine);
  };
  if (reactions.length === 0 && !picking) return null;
  return (
    <div className="reactions">
      {reactions.map(([emoji, users]) => (
        <button
          type="button"
          key={emoji}
          className="reaction"
          aria-pressed={users.includes(state.me)}
          aria-label={`${emoji} ${users.length}: ${users.map((u) => state.names[u] ?? "someone").join(", ")}`}
          onClick={() => toggle(emoji)}
        >
          {emoji} {users.length}
        </button>
      ))}
      {picking && (
        <span className="picker" role="group" aria-label="Pick a reaction">
          {REACTIONS.map((emoji) => (
            <button
              type="button"
              key={emoji}
              aria-label={`React with ${emoji}`}
              onClick={() => {
                toggle(emoji);
                onPicked();
              }}
            >
              {emoji}
            </button>
          ))}
        </span>
      )}
    </div>
  );
}

export function RoomView({ room, state, actions }: { room: Room; state: ChatState; actions: ChatActions }) {
  const timeline = state.timelines[room.id] ?? emptyTimeline();
  const list = useRef<HTMLOListElement>(null);
  const stickToBottom = useRef(true);
  const previousHeight = useRef(0);
  const loadingOlder = useRef(false);
  const [draft, setDraft] = useState("");
  const [uploads, setUploads] = useState<Upload[]>([]);
  const nextUpload = useRef(0);
  /** Uploads removed before they finished: their files are deleted once stored. */
  const dropped = useRef(new Set<number>());
  const fileInput = useRef<HTMLInputElement>(null);
  const [showMembers, setShowMembers] = useState(false);
  const [renaming, setRenaming] = useState(false);
  const [caret, setCaret] = useState(0);
  const [choice, setChoice] = useState(0);
  const [dismissed, setDismissed] = useState(false);
  const composer = useRef<HTMLTextAreaElement>(null);
  const pendingCaret = useRef<number | null>(null);
  const lastTyping = useRef(0);
  const [now, setNow] = useState(Date.now());
  const member = room.members.includes(state.me);

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

  const uploading = uploads.some((u) => !u.file && !u.error);
  const ready = uploads.flatMap((u) => (u.file ? [u.file] : []));
  const canSend = !uploading && (draft.trim() !== "" || ready.length > 0);

  function send(event?: FormEvent) {
    event?.preventDefault();
    const content = draft.trim();
    if (!canSend || content.length > MAX_CONTENT_CHARS) return;
    stickToBottom.current = true;
    actions.send(room.id, content, ready);
    setDraft("");
    setUploads([]);
  }

  /** Uploads each file at once, showing its progress; sending waits for them. */
  function attach(files: FileList | File[]) {
    for (const file of Array.from(files)) {
      const key = nextUpload.current++;
      const change = (update: Partial<Upload>) =>
        setUploads((all) => all.map((u) => (u.key === key ? { ...u, ...update } : u)));
      setUploads((all) => [...all, { key, name: file.name, progress: 0 }]);
      actions.upload(room.id, file, (progress) => change({ progress })).then(
        (uploaded) => (dropped.current.has(key) ? actions.discard(uploaded) : change({ file: uploaded, progress: 1 })),
        (error) =>
          change({ error: error instanceof ApiError ? error.message : "The server cannot be reached." }),
      );
    }
  }

  const owner = room.creator_id === state.me;
  const manager = owner || room.admins.includes(state.me);
  // @mention suggestions for the name being typed at the caret.
  const mention = mentionAt(draft, caret);
  const memberNames = room.members
    .filter((id) => id !== state.me)
    .map((id) => state.names[id])
    .filter((name): name is string => name !== undefined);
  const options = mention && !dismissed ? suggestions(mention.query, memberNames, manager) : [];
  const chosen = Math.min(choice, Math.max(options.length - 1, 0));

  function completeMention(name: string) {
    if (!mention) return;
    const next = complete(draft, mention.start, caret, name);
    pendingCaret.current = next.caret;
    setDraft(next.text);
    setCaret(next.caret);
  }

  // After a completion re-renders the text, put the caret after the name
  // before anything else is typed.
  useLayoutEffect(() => {
    const at = pendingCaret.current;
    if (at === null || !composer.current) return;
    composer.current.setSelectionRange(at, at);
    pendingCaret.current = null;
  }, [draft]);

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    if (options.length > 0) {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        const step = event.key === "ArrowDown" ? 1 : options.length - 1;
        setChoice((chosen + step) % options.length);
        return;
      }
      if (event.key === "Enter" || event.key === "Tab") {
        event.preventDefault();
        completeMention(options[chosen]);
        return;
      }
      if (event.key === "Escape") {
        event.preventDefault();
        setDismissed(true);
        return;
      }
    }
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      send();
    }
  }

  function onDraft(value: string, at: number) {
    setCaret(at);
    setDismissed(false);
    setChoice(0);
    setDraft(value);
    if (value && Date.now() - lastTyping.current > TYPING_EVERY_MS) {
      lastTyping.current = Date.now();
      actions.typing(room.id);
    }
  }

  const typing = typingIn(state, room.id, now);
  const receipts = seenBy(state, room.id);
  const title = room.is_direct
    ? (state.names[room.members.find((m) => m !== state.me) ?? ""] ?? "Direct message")
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
      <ol className="messages" ref={list} onScroll={onScroll} aria-label={`Messages in ${title}`} aria-live="polite">
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
          />
        ))}
        {timeline.pending.map((pending) => (
          <li key={pending.clientId} className={`message mine pending ${pending.failed ? "failed" : ""}`}>
            <Avatar name={state.names[state.me] ?? "me"} profile={state.profiles[state.me]} files={actions.files} />
            <div className="bubble">
              <div className="meta">
                <strong className="author">{state.names[state.me]}</strong>{" "}
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
      <div className="below-messages">
        <p className="typing" aria-live="polite">
          {typing.length === 1 ? `${typing[0]} is typing…` : typing.length > 1 ? `${typing.join(", ")} are typing…` : ""}
        </p>
      </div>
      {member ? (
        <form
          className="composer"
          onSubmit={send}
          onDragOver={(e) => e.preventDefault()}
          onDrop={(e) => {
            if (e.dataTransfer.files.length === 0) return;
            e.preventDefault();
            attach(e.dataTransfer.files);
          }}
        >
          {uploads.length > 0 && (
            <ul className="uploads" aria-label="Files to send">
              {uploads.map((upload) => (
                <li key={upload.key} className={upload.error ? "failed" : ""}>
                  <span className="name">{upload.name}</span>{" "}
                  {upload.error ? (
                    <span role="alert">{upload.error}</span>
                  ) : upload.file ? (
                    <span className="size">{formatBytes(upload.file.size)}</span>
                  ) : (
                    <progress value={upload.progress} max={1} aria-label={`Uploading ${upload.name}`} />
                  )}
                  <button
                    type="button"
                    onClick={() => {
                      if (upload.file) actions.discard(upload.file);
                      else dropped.current.add(upload.key);
                      setUploads((all) => all.filter((u) => u.key !== upload.key));
                    }}
                    aria-label={`Remove ${upload.name}`}
                  >
                    ×
                  </button>
                </li>
              ))}
            </ul>
          )}
          <input
            ref={fileInput}
            type="file"
            multiple
            hidden
            aria-label="Files to attach"
            onChange={(e) => {
              if (e.target.files) attach(e.target.files);
              e.target.value = "";
            }}
          />
          <button type="button" className="attach" onClick={() => fileInput.current?.click()} aria-label="Attach files">
            <svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" focusable="false">
              <path
                d="M16.5 6.5v10a4.5 4.5 0 0 1-9 0V5a3 3 0 0 1 6 0v10.5a1.5 1.5 0 0 1-3 0V6.5"
                fill="none"
                stroke="currentColor"
                strokeWidth="1.8"
                strokeLinecap="round"
              />
            </svg>
          </button>
          <label htmlFor="composer-input" className="visually-hidden">
            Message {title}
          </label>
          <textarea
            id="composer-input"
            ref={composer}
            value={draft}
            onChange={(e) => onDraft(e.target.value, e.target.selectionStart)}
            onSelect={(e) => setCaret(e.currentTarget.selectionStart)}
            onKeyDown={onKeyDown}
            onPaste={(e) => {
              if (e.clipboardData.files.length === 0) return;
              e.preventDefault();
              attach(e.clipboardData.files);
            }}
            placeholder={`Message ${title}`}
            rows={1}
            maxLength={MAX_CONTENT_CHARS}
            aria-autocomplete="list"
            aria-controls={options.length > 0 ? "mention-options" : undefined}
            aria-activedescendant={options.length > 0 ? `mention-${chosen}` : undefined}
          />
          {options.length > 0 && (
            <ul id="mention-options" className="mention-options" role="listbox" aria-label="People to mention">
              {options.map((name, i) => (
                <li
                  key={name}
                  id={`mention-${i}`}
                  role="option"
                  aria-selected={i === chosen}
                  onMouseDown={(e) => {
                    e.preventDefault();
                    completeMention(name);
                  }}
                >
                  @{name}
                </li>
              ))}
            </ul>
          )}
          <button type="submit" disabled={!canSend}>
            Send
          </button>
        </form>
      ) : (
        <div className="composer">
          <button type="button" onClick={() => void actions.join(room.id)}>
            Join to write
          </button>
        </div>
      )}
    </section>
  );
}

/** The room's name and description, for its owner and admins to change. */
function RenameForm({ room, actions, onDone }: { room: Room; actions: ChatActions; onDone: () => void }) {
  const [name, setName] = useState(room.name);
  const [description, setDescription] = useState(room.description);
  const [error, setError] = useState<string | null>(null);
  async function submit(event: FormEvent) {
    event.preventDefault();
    const failure = await actions.rename(room, name, description);
    setError(failure);
    if (!failure) onDone();
  }
  return (
    <form className="rename" onSubmit={submit} aria-label="Rename the room">
      <label>
        Room name
        <input value={name} onChange={(e) => setName(e.target.value)} maxLength={100} required autoFocus />
      </label>
      <label>
        Room description
        <input value={description} onChange={(e) => setDescription(e.target.value)} maxLength={1000} />
      </label>
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
      <button type="submit">Save</button>
      <button type="button" onClick={onDone}>
        Cancel
      </button>
    </form>
  );
}

function Members({
  room,
  state,
  actions,
  manager,
}: {
  room: Room;
  state: ChatState;
  actions: ChatActions;
  manager: boolean;
}) {
  const [username, setUsername] = useState("");
  const [error, setError] = useState<string | null>(null);
  async function invite(event: FormEvent) {
    event.preventDefault();
    if (!username.trim()) return;
    const failure = await actions.invite(room, username);
    setError(failure);
    if (!failure) setUsername("");
  }
  return (
    <aside className="members" aria-label="Members">
      <ul>
        {room.members.map((id) => {
          const name = state.names[id] ?? "…";
          return (
            <li key={id}>
              <Avatar name={name} online={state.online[id] ?? false} profile={state.profiles[id]} files={actions.files} />
              <span>
                {shownName(state, id, name)}
                {id === room.creator_id ? " (owner)" : room.admins.includes(id) ? " (admin)" : ""}
              </span>
              {manager && id !== state.me && id !== room.creator_id && !room.is_direct && (
                <button type="button" onClick={() => void actions.remove(room, id)} aria-label={`Remove ${name}`}>
                  Remove
                </button>
              )}
            </li>
          );
        })}
      </ul>
      {manager && !room.is_direct && (
        <form onSubmit={invite}>
          <label>
            Invite by username
            <input value={username} onChange={(e) => setUsername(e.target.value)} name="invite-username" />
          </label>
          <button type="submit">Invite</button>
          {error && (
            <p className="field-error" role="alert">
              {error}
            </p>
          )}
        </form>
      )}
    </aside>
  );
}
