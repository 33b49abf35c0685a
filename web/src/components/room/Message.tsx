import { useState, type KeyboardEvent } from "react";
import type { ChatActions } from "../../actions";
import { MAX_CONTENT_CHARS, type ChatMessage } from "../../protocol/types";
import { nameOf, presenceOf, type ChatState } from "../../state";
import { Avatar } from "../Avatar";
import { Attachments } from "./Attachments";
import { Content } from "./Content";
import { time } from "./format";
import { Reactions } from "./Reactions";

/** One message of the timeline: text, files, reactions, its actions and its thread. */
export function Message({
  message,
  state,
  actions,
  manager,
  seenBy: readers,
  onThread,
  threadShown,
}: {
  message: ChatMessage;
  state: ChatState;
  actions: ChatActions;
  manager: boolean;
  /** Who last read up to this message. */
  seenBy?: string[];
  /** Opens (or closes) this message's thread beside the room. */
  onThread?: (seq: number) => void;
  /** Whether this message's thread is the one open. */
  threadShown?: boolean;
}) {
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState(message.content);
  const [confirming, setConfirming] = useState(false);
  const [picking, setPicking] = useState(false);
  /** Actions shown by a tap or a long press (touch screens have no hover). */
  const [showActions, setShowActions] = useState(false);
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
    <li
      className={`message ${mine ? "mine" : ""} ${message.deleted ? "deleted" : ""} ${showActions ? "show-actions" : ""}`}
      data-seq={message.seq}
      data-id={message.id}
      onContextMenu={(event) => {
        // A long press on a touch screen: the message's actions, not the browser's menu.
        if ((event.target as HTMLElement).closest("a, img, textarea")) return;
        event.preventDefault();
        setShowActions((shown) => !shown);
      }}
    >
      <Avatar
        name={message.username}
        presence={presenceOf(state, message.user_id)}
        profile={state.profiles[message.user_id]}
        files={actions.files}
      />
      <div className="bubble">
        <div className="meta">
          <strong className="author" title={`@${message.username}`}>
            {nameOf(state, message.user_id, message.username)}
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
          <>
            <button
              type="button"
              className="more"
              aria-label="Message actions"
              aria-expanded={showActions}
              onClick={() => setShowActions((shown) => !shown)}
            >
              ⋯
            </button>
            <div className="message-actions" role="toolbar" aria-label="Actions on this message">
              <button type="button" onClick={() => setPicking(!picking)} aria-expanded={picking}>
                React
              </button>
              {message.reply_to === undefined && (
                <button type="button" onClick={() => onThread?.(message.seq)} aria-expanded={threadShown ?? false}>
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
          </>
        )}
      </div>
      {readers && readers.length > 0 && (
        <p className="read-marker">Seen by {readers.map((u) => nameOf(state, u)).join(", ")}</p>
      )}
    </li>
  );
}
