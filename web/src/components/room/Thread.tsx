import { useEffect, useState, type FormEvent } from "react";
import type { ChatActions } from "../../actions";
import { MAX_CONTENT_CHARS, type ChatMessage } from "../../protocol/types";
import { nameOf, threadKey, type ChatState } from "../../state";
import { Attachments } from "./Attachments";
import { Content } from "./Content";
import { time } from "./format";

/**
 * A message's thread beside the room (over it, on a phone): the message,
 * its replies and a box to reply.
 */
export function Thread({
  parent,
  state,
  actions,
  onClose,
}: {
  parent: ChatMessage;
  state: ChatState;
  actions: ChatActions;
  onClose: () => void;
}) {
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
    <aside className="thread-panel" aria-label={`Thread of ${nameOf(state, parent.user_id, parent.username)}'s message`}>
      <header className="thread-header">
        <h3>Thread</h3>
        <button type="button" onClick={onClose} aria-label="Close the thread">
          ×
        </button>
      </header>
      <div className="thread-parent">
        <strong className="author" title={`@${parent.username}`}>
          {nameOf(state, parent.user_id, parent.username)}
        </strong>{" "}
        <time dateTime={parent.timestamp}>{time(parent.timestamp)}</time>
        {parent.deleted ? (
          <p className="content tombstone">This message was deleted.</p>
        ) : (
          <>
            {parent.content && (
              <p className="content">
                <Content text={parent.content} myName={state.names[state.me] ?? ""} />
              </p>
            )}
            <Attachments files={parent.attachments} actions={actions} />
          </>
        )}
      </div>
      <ol className="replies" aria-label="Replies">
        {replies.map((reply) => (
          <li key={reply.id} className="reply" data-seq={reply.seq}>
            <strong className="author" title={`@${reply.username}`}>
              {nameOf(state, reply.user_id, reply.username)}
            </strong>{" "}
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
            autoFocus
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
    </aside>
  );
}
