import { useLayoutEffect, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import type { ChatActions } from "../../actions";
import { ApiError } from "../../api";
import { formatBytes } from "../../files";
import { complete, mentionAt, suggestions, type Mentionable } from "../../mentions";
import { MAX_CONTENT_CHARS, type AttachedFile, type Room } from "../../protocol/types";
import { nameOf, type ChatState } from "../../state";

/** Tell the room "typing" at most this often while keys are pressed. */
const TYPING_EVERY_MS = 2500;

/** A file being uploaded from the composer, then waiting to be sent. */
interface Upload {
  key: number;
  name: string;
  /** 0 to 1 while the bytes go up. */
  progress: number;
  file?: AttachedFile;
  error?: string;
}

/**
 * The box a member writes in: text with @mention completion (arrows, Enter
 * or Tab, Escape), files attached by button, drop or paste and uploaded at
 * once with their progress, and Send, which waits for the uploads.
 */
export function Composer({
  room,
  state,
  actions,
  title,
  onSend,
}: {
  room: Room;
  state: ChatState;
  actions: ChatActions;
  /** The room's name as shown, for the placeholder and label. */
  title: string;
  /** Called as a message is sent (the timeline scrolls to it). */
  onSend?: () => void;
}) {
  const [draft, setDraft] = useState("");
  const [uploads, setUploads] = useState<Upload[]>([]);
  const nextUpload = useRef(0);
  /** Uploads removed before they finished: their files are deleted once stored. */
  const dropped = useRef(new Set<number>());
  const fileInput = useRef<HTMLInputElement>(null);
  const [caret, setCaret] = useState(0);
  const [choice, setChoice] = useState(0);
  const [dismissed, setDismissed] = useState(false);
  const composer = useRef<HTMLTextAreaElement>(null);
  const pendingCaret = useRef<number | null>(null);
  const lastTyping = useRef(0);

  const uploading = uploads.some((u) => !u.file && !u.error);
  const ready = uploads.flatMap((u) => (u.file ? [u.file] : []));
  const canSend = !uploading && (draft.trim() !== "" || ready.length > 0);

  function send(event?: FormEvent) {
    event?.preventDefault();
    const content = draft.trim();
    if (!canSend || content.length > MAX_CONTENT_CHARS) return;
    onSend?.();
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

  const manager = room.creator_id === state.me || room.admins.includes(state.me);
  // @mention suggestions for the name being typed at the caret.
  const mention = mentionAt(draft, caret);
  const people: Mentionable[] = room.members
    .filter((id) => id !== state.me && state.names[id] !== undefined)
    .map((id) => ({ username: state.names[id], name: nameOf(state, id) }));
  const options = mention && !dismissed ? suggestions(mention.query, people, manager) : [];
  const chosen = Math.min(choice, Math.max(options.length - 1, 0));

  function completeMention(username: string) {
    if (!mention) return;
    const next = complete(draft, mention.start, caret, username);
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
        completeMention(options[chosen].username);
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

  return (
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
          {options.map((person, i) => (
            <li
              key={person.username}
              id={`mention-${i}`}
              role="option"
              aria-selected={i === chosen}
              onMouseDown={(e) => {
                e.preventDefault();
                completeMention(person.username);
              }}
            >
              {person.name === person.username ? (
                `@${person.username}`
              ) : (
                <>
                  {person.name} <span className="username">@{person.username}</span>
                </>
              )}
            </li>
          ))}
        </ul>
      )}
      <button type="submit" disabled={!canSend}>
        Send
      </button>
    </form>
  );
}
