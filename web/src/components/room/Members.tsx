import { useState, type FormEvent } from "react";
import type { ChatActions } from "../../actions";
import type { Room } from "../../protocol/types";
import { nameOf, presenceOf, type ChatState } from "../../state";
import { Avatar } from "../Avatar";
import { FieldError } from "../Dialog";

/** The room's name and description, for its owner and admins to change. */
export function RenameForm({ room, actions, onDone }: { room: Room; actions: ChatActions; onDone: () => void }) {
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
      <FieldError error={error} />
      <button type="submit">Save</button>
      <button type="button" onClick={onDone}>
        Cancel
      </button>
    </form>
  );
}

/** Who is in the room; its owner and admins add and remove people here. */
export function Members({
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
          const name = nameOf(state, id, undefined, "…");
          return (
            <li key={id}>
              <Avatar name={name} presence={presenceOf(state, id)} profile={state.profiles[id]} files={actions.files} />
              <span>
                <span title={state.names[id] ? `@${state.names[id]}` : undefined}>{name}</span>
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
          <FieldError error={error} />
        </form>
      )}
    </aside>
  );
}
