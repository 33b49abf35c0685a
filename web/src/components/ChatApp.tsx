import { useCallback, useEffect, useLayoutEffect, useMemo, useReducer, useRef, useState } from "react";
import { ApiError, type Api } from "../api";
import { ChatConnection } from "../protocol/client";
import type { ChatActions } from "../actions";
import type { AttachedFile, Room, User } from "../protocol/types";
import { FileCache } from "../files";
import { desktopNotice, pageTitle, retracts, type DesktopNotice } from "../notify";
import { PAGE, initialState, reducer, type ChatState } from "../state";
import { RoomList } from "./RoomList";
import { RoomView } from "./RoomView";
import { ProfileForm } from "./ProfileForm";
import { StatusBar } from "./StatusBar";

function socketUrl(): string {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}/ws`;
}

const isMember = (room: Room, me: string) => room.members.includes(me);

/** The signed-in screen: owns the live connection and the chat state. */
export function ChatApp({ api, me }: { api: Api; me: User }) {
  const [state, dispatch] = useReducer(reducer, initialState(me.id, me.username));
  const wasOnline = useRef(false);
  const lookedUp = useRef(new Set<string>([me.id]));
  // The state as of the last render, for the socket's handler (made once).
  const current = useRef<ChatState>(state);
  useLayoutEffect(() => {
    current.current = state;
  });
  const reloadRooms = useRef<() => void>(() => undefined);
  // Desktop notifications on screen, one per room, so a deletion can close its own.
  const shownNotices = useRef(new Map<string, { notice: DesktopNotice; shown: Notification }>());
  const [files] = useState(() => new FileCache(api));
  const [editingProfile, setEditingProfile] = useState(false);
  // My own profile, as the sign-in told it; user_updated frames follow it.
  useEffect(() => dispatch({ type: "users", users: [me] }), [me]);
  useEffect(() => () => files.clear(), [files]);
  const [connection] = useState(
    () =>
      new ChatConnection({
        url: socketUrl(),
        getToken: () => api.token(),
        onEvent: (event) => {
          if (event.type === "status") {
            dispatch({ type: "status", status: event.status, retryInMs: event.retryInMs });
            // Room-list frames sent while the socket was down are lost: read the list again.
            // So are presence changes: look the people shown up again.
            if (event.status === "online") {
              if (wasOnline.current) {
                lookedUp.current = new Set([me.id]);
                reloadRooms.current();
              }
              wasOnline.current = true;
            }
          }
          else if (event.type === "frame") {
            const notice = desktopNotice(current.current, event.frame, document.hidden);
            if (notice && "Notification" in window && Notification.permission === "granted") {
              const shown = new Notification(notice.title, { body: notice.body, tag: notice.tag });
              shown.onclick = () => {
                window.focus();
                dispatch({ type: "select", roomId: notice.roomId });
              };
              shownNotices.current.set(notice.tag, { notice, shown });
            }
            // A message deleted since it was notified: its text goes from the desktop too.
            const open = event.frame.type === "delete" ? shownNotices.current.get(event.frame.room_id) : undefined;
            if (open && retracts(open.notice, event.frame)) {
              open.shown.close();
              shownNotices.current.delete(open.notice.tag);
            }
            dispatch({ type: "frame", frame: event.frame, now: Date.now() });
            // A room that became mine (a direct message, an invitation) goes live at once.
            if (event.frame.type === "room_added" && isMember(event.frame.room, me.id)) {
              connection.open(event.frame.room.id);
            }
            // Joins, leaves and removals change the room's member list.
            if (event.frame.type === "system") {
              api.room(event.frame.room_id).then(
                (room) => dispatch({ type: "room", room }),
                () => undefined,
              );
            }
          }
          else void api.logout();
        },
      }),
  );
  const loadedLatest = useRef(new Set<string>());

  const report = useCallback((error: unknown) => {
    const notice =
      error instanceof ApiError ? error.message : "The server cannot be reached. Your changes were not saved.";
    dispatch({ type: "notice", notice });
  }, []);

  const loadLatest = useCallback(
    async (roomId: string) => {
      try {
        const page = await api.latest(roomId, PAGE);
        dispatch({ type: "latest", roomId, messages: page.messages });
      } catch (error) {
        report(error);
      }
    },
    [api, report],
  );

  // Rooms, then the live connection with every room I belong to open, so
  // unread counts and presence are live everywhere; `room_added` and
  // `room_removed` frames keep the list current, and it is read again after
  // a reconnection.
  useEffect(() => {
    let cancelled = false;
    const loadRooms = async () => {
      try {
        const rooms: Room[] = [];
        for (let offset = 0; ; offset += 100) {
          const page = await api.rooms(offset, 100);
          rooms.push(...page.rooms);
          if (rooms.length >= page.total || page.rooms.length === 0) break;
        }
        if (cancelled) return;
        dispatch({ type: "rooms", rooms });
        for (const room of rooms) if (isMember(room, me.id)) connection.open(room.id);
      } catch (error) {
        report(error);
      }
    };
    reloadRooms.current = () => void loadRooms();
    connection.start();
    void loadRooms();
    return () => {
      cancelled = true;
      reloadRooms.current = () => undefined;
      connection.stop();
    };
  }, [api, connection, me.id, report]);

  // Keep the token fresh for REST and for the live socket.
  useEffect(() => {
    let timer: ReturnType<typeof setTimeout>;
    const schedule = () => {
      const due = api.refreshDueInMs();
      if (due === null) return;
      timer = setTimeout(async () => {
        const session = await api.refresh();
        if (session) connection.authenticate(session.token);
        schedule();
      }, due);
    };
    schedule();
    return () => clearTimeout(timer);
  }, [api, connection]);

  const active = state.active ? state.rooms[state.active] : undefined;

  useEffect(() => {
    document.title = pageTitle(state);
  }, [state]);

  // Opening a room shows its latest page once; the socket keeps it current.
  useEffect(() => {
    if (!active || loadedLatest.current.has(active.id)) return;
    loadedLatest.current.add(active.id);
    void loadLatest(active.id);
  }, [active, loadLatest]);

  // Names and presence of the open room's members, looked up once each
  // (again after a reconnection); presence frames keep them current.
  useEffect(() => {
    // The open room's members, and the other person of every direct room
    // (the room list names it after them and shows their presence).
    const wanted = new Set<string>(active ? active.members : []);
    for (const room of Object.values(state.rooms)) {
      if (room.is_direct) for (const id of room.members) wanted.add(id);
    }
    const unknown = [...wanted].filter((id) => !lookedUp.current.has(id));
    if (unknown.length === 0) return;
    for (const id of unknown) lookedUp.current.add(id);
    void Promise.all(unknown.map((id) => api.userById(id).catch(() => null))).then((users) =>
      dispatch({ type: "users", users: users.filter((u) => u !== null) }),
    );
  }, [active, api, state.rooms]);

  const actions = useMemo<ChatActions>(
    () => ({
      select: (roomId: string | null) => dispatch({ type: "select", roomId }),
      create: async (name: string, description: string, isPrivate: boolean) => {
        try {
          const room = await api.createRoom(name, description, isPrivate);
          dispatch({ type: "room", room });
          connection.open(room.id);
          dispatch({ type: "select", roomId: room.id });
          return null;
        } catch (error) {
          return error instanceof ApiError ? error.message : "The server cannot be reached.";
        }
      },
      join: async (roomId: string) => {
        try {
          const room = await api.joinRoom(roomId);
          dispatch({ type: "room", room });
          connection.open(room.id);
          dispatch({ type: "select", roomId: room.id });
        } catch (error) {
          report(error);
        }
      },
      leave: async (room: Room) => {
        try {
          await api.leaveRoom(room.id);
          connection.close(room.id);
          loadedLatest.current.delete(room.id);
          if (room.is_private) dispatch({ type: "room_gone", roomId: room.id });
          else dispatch({ type: "room", room: { ...room, members: room.members.filter((m) => m !== me.id) } });
          dispatch({ type: "select", roomId: null });
        } catch (error) {
          report(error);
        }
      },
      direct: async (username: string) => {
        try {
          const user = await api.userByName(username.trim());
          const room = await api.direct(user.id);
          dispatch({ type: "users", users: [user] });
          dispatch({ type: "room", room });
          connection.open(room.id);
          dispatch({ type: "select", roomId: room.id });
          return null;
        } catch (error) {
          if (error instanceof ApiError && error.status === 404) return `Nobody is called ${username.trim()}.`;
          return error instanceof ApiError ? error.message : "The server cannot be reached.";
        }
      },
      invite: async (room: Room, username: string) => {
        try {
          const user = await api.userByName(username.trim());
          const updated = await api.addMember(room.id, user.id);
          dispatch({ type: "users", users: [user] });
          dispatch({ type: "room", room: updated });
          return null;
        } catch (error) {
          if (error instanceof ApiError && error.status === 404) return `Nobody is called ${username.trim()}.`;
          return error instanceof ApiError ? error.message : "The server cannot be reached.";
        }
      },
      rename: async (room: Room, name: string, description: string) => {
        try {
          dispatch({ type: "room", room: await api.renameRoom(room.id, name, description) });
          return null;
        } catch (error) {
          return error instanceof ApiError ? error.message : "The server cannot be reached.";
        }
      },
      remove: async (room: Room, userId: string) => {
        try {
          dispatch({ type: "room", room: await api.removeMember(room.id, userId) });
        } catch (error) {
          report(error);
        }
      },
      send: (roomId: string, content: string, attachments: AttachedFile[] = []) => {
        const ids = attachments.map((file) => file.id);
        const clientId = connection.post(roomId, content, undefined, ids);
        dispatch({
          type: "pending",
          pending: { clientId, roomId, content, attachments, sentAt: new Date().toISOString() },
        });
      },
      upload: (roomId: string, file: File, onProgress: (fraction: number) => void) =>
        api.upload(roomId, file, onProgress),
      discard: (file: AttachedFile) => void api.deleteAttachment(file.id).catch(() => undefined),
      files,
      editMessage: (roomId: string, seq: number, content: string) => void connection.edit(roomId, seq, content),
      deleteMessage: (roomId: string, seq: number) => void connection.remove(roomId, seq),
      react: (roomId: string, seq: number, emoji: string, on: boolean) => void connection.react(roomId, seq, emoji, on),
      search: async (q: string) => {
        try {
          return (await api.search(q)).results;
        } catch (error) {
          report(error);
          return [];
        }
      },
      openThread: async (roomId: string, parent: number) => {
        try {
          const page = await api.thread(roomId, parent);
          dispatch({ type: "thread", roomId, parent, messages: page.messages });
        } catch (error) {
          report(error);
        }
      },
      reply: (roomId: string, parent: number, content: string) => void connection.post(roomId, content, parent),
      typing: (roomId: string) => connection.typing(roomId),
      read: (roomId: string, seq: number) => connection.read(roomId, seq),
      older: async (roomId: string, beforeSeq: number) => {
        try {
          const page = await api.before(roomId, beforeSeq, PAGE);
          dispatch({ type: "older", roomId, messages: page.messages });
        } catch (error) {
          report(error);
        }
      },
      updateProfile: async (change: { display_name: string | null; avatar_color?: string }) => {
        dispatch({ type: "users", users: [await api.updateProfile(change)] });
      },
      setAvatar: async (picture: File) => {
        dispatch({ type: "users", users: [await api.setAvatar(picture)] });
      },
      removeAvatar: async () => {
        dispatch({ type: "users", users: [await api.removeAvatar()] });
      },
      dismiss: () => dispatch({ type: "notice", notice: null }),
      signOut: () => void api.logout(),
    }),
    [api, connection, files, me.id, report],
  );

  return (
    <div className={`app ${active ? "room-open" : ""}`}>
      <StatusBar
        status={state.status}
        retryInMs={state.retryInMs}
        me={me}
        shownAs={state.profiles[me.id]?.displayName ?? me.username}
        onProfile={() => setEditingProfile(true)}
        onSignOut={actions.signOut}
      />
      {editingProfile && (
        <ProfileForm
          username={me.username}
          profile={state.profiles[me.id]}
          actions={actions}
          onDone={() => setEditingProfile(false)}
        />
      )}
      {state.notice && (
        <div className="notice" role="alert">
          <span>{state.notice}</span>
          <button type="button" onClick={actions.dismiss} aria-label="Dismiss">
            ×
          </button>
        </div>
      )}
      <RoomList state={state} actions={actions} />
      {active ? (
        <RoomView key={active.id} room={active} state={state} actions={actions} />
      ) : (
        <section className="empty-room" aria-label="No room open">
          <p>Choose a room, create one, or start a direct message.</p>
        </section>
      )}
    </div>
  );
}
