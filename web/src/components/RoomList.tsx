import { useState, type FormEvent, type ReactNode } from "react";
import { nameOf, presenceOf, type ChatState } from "../state";
import type { Room, SearchHit } from "../protocol/types";
import type { ChatActions } from "../actions";
import { Dialog, DialogButtons, FieldError } from "./Dialog";

function roomTitle(room: Room, state: ChatState): string {
  if (!room.is_direct) return room.name;
  const other = room.members.find((m) => m !== state.me);
  return other ? nameOf(state, other, undefined, "Direct message") : "Direct message";
}

/** Text with the `[start, end)` char ranges marked. */
function Marked({ text, ranges }: { text: string; ranges: [number, number][] }) {
  const chars = [...text];
  const parts: ReactNode[] = [];
  let at = 0;
  for (const [start, end] of ranges) {
    if (start < at) continue;
    parts.push(chars.slice(at, start).join(""));
    parts.push(<mark key={start}>{chars.slice(start, end).join("")}</mark>);
    at = end;
  }
  parts.push(chars.slice(at).join(""));
  return <>{parts}</>;
}

/** Search across my readable rooms; a hit opens its room. */
function Search({ state, actions }: { state: ChatState; actions: ChatActions }) {
  const [query, setQuery] = useState("");
  const [hits, setHits] = useState<SearchHit[] | null>(null);
  async function submit(event: FormEvent) {
    event.preventDefault();
    if (query.trim().length < 2) return;
    setHits(await actions.search(query.trim()));
  }
  return (
    <section className="search" aria-label="Message search">
      <form role="search" onSubmit={submit}>
        <label>
          Search messages
          <input
            type="search"
            value={query}
            onChange={(e) => setQuery(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Escape") setHits(null);
            }}
          />
        </label>
        <button type="submit">Search</button>
      </form>
      {hits && (
        <div className="search-results">
          <p role="status">{hits.length === 0 ? "Nothing found." : `${hits.length} found`}</p>
          <ul>
            {hits.map((hit) => (
              <li key={hit.message.id}>
                <button type="button" className="hit" onClick={() => actions.select(hit.message.room_id)}>
                  <span className="hit-where">
                    {hit.room_name ? `# ${hit.room_name}` : "Direct message"} · {nameOf(state, hit.message.user_id, hit.message.username)}
                  </span>
                  <span className="hit-text">
                    <Marked text={hit.snippet.text} ranges={hit.snippet.highlights} />
                  </span>
                </button>
              </li>
            ))}
          </ul>
          <button type="button" onClick={() => setHits(null)}>
            Close results
          </button>
        </div>
      )}
    </section>
  );
}

/** Whether the other person of a direct room is online, once known (unknown while disconnected). */
function PeerPresence({ room, state }: { room: Room; state: ChatState }) {
  const other = room.members.find((m) => m !== state.me);
  if (other === undefined || (state.online[other] === undefined && state.status === "online")) return null;
  const presence = presenceOf(state, other);
  return (
    <span
      className={`peer-presence ${presence}`}
      role="img"
      aria-label={presence === "unknown" ? "presence unknown while reconnecting" : presence}
    />
  );
}

/** My rooms with unread counts, public rooms to join, and forms to start more. */
export function RoomList({ state, actions }: { state: ChatState; actions: ChatActions }) {
  const [creating, setCreating] = useState<"room" | "direct" | null>(null);
  const rooms = Object.values(state.rooms).sort((a, b) => a.created_at.localeCompare(b.created_at));
  const mine = rooms.filter((r) => r.members.includes(state.me));
  const others = rooms.filter((r) => !r.members.includes(state.me));
  return (
    <nav className="room-list" aria-label="Rooms">
      <Search state={state} actions={actions} />
      <h2>My rooms</h2>
      <ul>
        {mine.map((room) => {
          const unread = state.unread[room.id] ?? 0;
          const mentions = state.mentions[room.id] ?? 0;
          return (
            <li key={room.id}>
              <button
                type="button"
                className={room.id === state.active ? "room active" : "room"}
                aria-current={room.id === state.active ? "true" : undefined}
                onClick={() => actions.select(room.id)}
              >
                <span className="room-name">
                  {room.is_direct ? "@ " : room.is_private ? "🔒 " : "# "}
                  {roomTitle(room, state)}
                  {room.is_direct && <PeerPresence room={room} state={state} />}
                </span>
                {mentions > 0 && (
                  <span className="mention-badge" aria-label={`${mentions} ${mentions === 1 ? "mention" : "mentions"}`}>
                    @{mentions}
                  </span>
                )}
                {unread > 0 && (
                  <span className="unread" aria-label={`${unread} unread`}>
                    {unread}
                  </span>
                )}
              </button>
            </li>
          );
        })}
        {mine.length === 0 && <li className="hint">No rooms yet.</li>}
      </ul>
      {others.length > 0 && (
        <>
          <h2>Public rooms</h2>
          <ul>
            {others.map((room) => (
              <li key={room.id} className="public-room">
                <span className="room-name"># {room.name}</span>
                <button type="button" onClick={() => void actions.join(room.id)} aria-label={`Join ${room.name}`}>
                  Join
                </button>
              </li>
            ))}
          </ul>
        </>
      )}
      <div className="room-list-actions">
        <button type="button" onClick={() => setCreating("room")}>
          New room
        </button>
        <button type="button" onClick={() => setCreating("direct")}>
          New direct message
        </button>
      </div>
      {creating === "room" && <CreateRoom actions={actions} onDone={() => setCreating(null)} />}
      {creating === "direct" && <DirectMessage actions={actions} onDone={() => setCreating(null)} />}
    </nav>
  );
}

function CreateRoom({ actions, onDone }: { actions: ChatActions; onDone: () => void }) {
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [isPrivate, setPrivate] = useState(false);
  const [error, setError] = useState<string | null>(null);
  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!name.trim()) {
      setError("Give the room a name.");
      return;
    }
    const failure = await actions.create(name.trim(), description.trim(), isPrivate);
    setError(failure);
    if (!failure) onDone();
  }
  return (
    <Dialog title="New room" onClose={onDone}>
      <form onSubmit={submit}>
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={100} name="room-name" autoFocus />
        </label>
        <label>
          Description
          <input value={description} onChange={(e) => setDescription(e.target.value)} maxLength={1000} name="room-description" />
        </label>
        <label className="checkbox">
          <input type="checkbox" checked={isPrivate} onChange={(e) => setPrivate(e.target.checked)} name="room-private" />
          Private (invited members only)
        </label>
        <FieldError error={error} />
        <DialogButtons submit="Create room" onCancel={onDone} />
      </form>
    </Dialog>
  );
}

function DirectMessage({ actions, onDone }: { actions: ChatActions; onDone: () => void }) {
  const [username, setUsername] = useState("");
  const [error, setError] = useState<string | null>(null);
  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!username.trim()) return;
    const failure = await actions.direct(username);
    setError(failure);
    if (!failure) onDone();
  }
  return (
    <Dialog title="New direct message" onClose={onDone}>
      <form onSubmit={submit}>
        <label>
          Username
          <input value={username} onChange={(e) => setUsername(e.target.value)} name="dm-username" autoFocus />
        </label>
        <FieldError error={error} />
        <DialogButtons submit="Message" onCancel={onDone} />
      </form>
    </Dialog>
  );
}
