import type { ChatActions } from "../../actions";
import type { ChatMessage } from "../../protocol/types";
import { nameOf, type ChatState } from "../../state";

/** The emoji offered when reacting. */
const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

/** A message's reactions with their counts (mine pressed), and the picker. */
export function Reactions({
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
          aria-label={`${emoji} ${users.length}: ${users.map((u) => nameOf(state, u)).join(", ")}`}
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
