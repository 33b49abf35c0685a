// The live connection: one WebSocket for every open room, reconnecting with
// backoff after any loss and resuming each room from the last seq it saw, so
// the screen gets every message once, in order (docs/protocol.md).

import { reconnectDelay } from "./backoff";
import { parseFrame, type ChatChange, type ChatMessage, type ClientFrame, type ServerFrame } from "./types";

export type Status = "connecting" | "online" | "reconnecting" | "offline";

export type ConnectionEvent =
  | { type: "status"; status: Status; retryInMs?: number }
  | { type: "frame"; frame: ServerFrame }
  /** The token was refused or lapsed; the app must sign in again. */
  | { type: "signed_out" };

/** What the client needs of a WebSocket (the browser's, or a test's). */
export interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type SocketFactory = (url: string, protocols: string[]) => SocketLike;

export interface ConnectionOptions {
  /** `ws://host/ws` or `wss://host/ws`. */
  url: string;
  /** A current access token (refreshing it first when needed); null when signed out. */
  getToken: () => Promise<string | null>;
  onEvent: (event: ConnectionEvent) => void;
  socketFactory?: SocketFactory;
  random?: () => number;
  /** How often to check that the server still answers. */
  pingEveryMs?: number;
}

const OPEN = 1;
const PONG_TIMEOUT_MS = 10_000;
/**
 * The most unacknowledged frames sent again at once, a second apart: within
 * the server's default rate (10 messages a second, burst 20), so a long
 * outbox after an outage is not refused, and then closed, as a flood.
 */
const RESEND_BATCH = 10;
const RESEND_EVERY_MS = 1_000;
/** Close codes after which reconnecting cannot help without a new sign-in. */
const TOKEN_REFUSED = 4001;

let counter = 0;
/** A client_id: unique per message, so a resend is stored only once. */
export function newClientId(random: () => number = Math.random): string {
  counter = (counter + 1) % 1_000_000;
  return `c${Date.now().toString(36)}${counter.toString(36)}${Math.floor(random() * 1e9).toString(36)}`;
}

export class ChatConnection {
  private socket: SocketLike | null = null;
  private attempt = 0;
  private stopped = false;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  /** The next paced resend of the outbox, while it holds refused or unanswered frames. */
  private resendTimer: ReturnType<typeof setTimeout> | null = null;
  /** Opening the rooms again after `not_joined`, once per burst of them. */
  private reopenTimer: ReturnType<typeof setTimeout> | null = null;
  /** Rooms to keep open, with the highest seq received without a gap (null: none yet). */
  private rooms = new Map<string, number | null>();
  /** Rooms waiting for a replay after a gap: live messages wait for it. */
  private resuming = new Set<string>();
  /** Messages, edits and deletions not acknowledged yet: resent after a reconnection (their client_id makes that safe). */
  private outbox = new Map<string, Extract<ClientFrame, { type: "message" | "edit" | "delete" | "react" | "unreact" }>>();
  private status: Status = "offline";
  private readonly factory: SocketFactory;
  private readonly random: () => number;

  constructor(private readonly options: ConnectionOptions) {
    this.factory =
      options.socketFactory ?? ((url, protocols) => new WebSocket(url, protocols) as unknown as SocketLike);
    this.random = options.random ?? Math.random;
  }

  start(): void {
    this.stopped = false;
    void this.connect();
  }

  /** Closes for good (sign-out, page leaving). */
  stop(): void {
    this.stopped = true;
    this.clearTimers();
    this.socket?.close(1000, "bye");
    this.socket = null;
    this.setStatus("offline");
  }

  /** Opens a room, resuming after `lastSeq` when the caller already shows messages. */
  open(roomId: string, lastSeq: number | null = null): void {
    const known = this.rooms.get(roomId);
    this.rooms.set(roomId, known ?? lastSeq);
    this.sendRoomOpening(roomId);
  }

  close(roomId: string): void {
    this.rooms.delete(roomId);
    this.resuming.delete(roomId);
    this.write({ type: "leave", room_id: roomId });
  }

  /** Posts a message; returns its client_id (the ack carries it back). */
  post(roomId: string, content: string, replyTo?: number, attachments: string[] = []): string {
    const frame = {
      type: "message" as const,
      room_id: roomId,
      content,
      client_id: newClientId(this.random),
      ...(replyTo === undefined ? {} : { reply_to: replyTo }),
      ...(attachments.length === 0 ? {} : { attachments }),
    };
    this.outbox.set(frame.client_id, frame);
    this.write(frame);
    return frame.client_id;
  }

  /** Replaces the text of my message at `seq`; acknowledged like a message. */
  edit(roomId: string, seq: number, content: string): string {
    const frame = { type: "edit" as const, room_id: roomId, seq, content, client_id: newClientId(this.random) };
    this.outbox.set(frame.client_id, frame);
    this.write(frame);
    return frame.client_id;
  }

  /** Deletes the message at `seq`: mine, or any in a room I manage. */
  remove(roomId: string, seq: number): string {
    const frame = { type: "delete" as const, room_id: roomId, seq, client_id: newClientId(this.random) };
    this.outbox.set(frame.client_id, frame);
    this.write(frame);
    return frame.client_id;
  }

  /** Adds (or, with `on` false, takes back) my reaction to the message at `seq`. */
  react(roomId: string, seq: number, emoji: string, on: boolean): string {
    const type = on ? ("react" as const) : ("unreact" as const);
    const frame = { type, room_id: roomId, seq, emoji, client_id: newClientId(this.random) };
    this.outbox.set(frame.client_id, frame);
    this.write(frame);
    return frame.client_id;
  }

  typing(roomId: string): void {
    this.write({ type: "typing", room_id: roomId });
  }

  read(roomId: string, seq: number): void {
    this.write({ type: "read", room_id: roomId, seq });
  }

  /** A refreshed token for the live connection, before the old one lapses. */
  authenticate(token: string): void {
    this.write({ type: "auth", token });
  }

  lastSeq(roomId: string): number | null {
    return this.rooms.get(roomId) ?? null;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setStatus(this.attempt === 0 ? "connecting" : "reconnecting");
    const token = await this.options.getToken().catch(() => null);
    if (this.stopped) return;
    if (!token) {
      this.options.onEvent({ type: "signed_out" });
      this.stop();
      return;
    }
    // Browsers cannot set headers on a WebSocket: the token rides as a subprotocol.
    const socket = this.factory(this.options.url, ["chat", `bearer.${token}`]);
    this.socket = socket;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.attempt = 0;
      this.setStatus("online");
      this.resuming.clear();
      for (const roomId of this.rooms.keys()) this.sendRoomOpening(roomId);
      // Unacknowledged messages go again; their client_id makes that safe.
      this.resend();
      this.startHeartbeat();
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      const frame = parseFrame(event.data);
      if (frame) this.receive(frame);
    };
    socket.onerror = () => {
      // Always followed by onclose, where the reconnect happens.
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.clearTimers();
      if (this.stopped) return;
      if (event.code === TOKEN_REFUSED) {
        // getToken() refreshes it on the next attempt, or reports the sign-out.
        this.attempt = 0;
      }
      this.scheduleReconnect();
    };
  }

  private scheduleReconnect(): void {
    const delay = reconnectDelay(this.attempt, this.random);
    this.attempt += 1;
    this.setStatus("reconnecting", delay);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.connect();
    }, delay);
  }

  /** `resume` when the room already shows messages, else `join`. */
  private sendRoomOpening(roomId: string): void {
    const lastSeq = this.rooms.get(roomId);
    if (lastSeq === undefined) return;
    if (lastSeq === null) {
      this.write({ type: "join", room_id: roomId });
    } else {
      this.resuming.add(roomId);
      this.write({ type: "resume", room_id: roomId, last_seq: lastSeq });
    }
  }

  private receive(frame: ServerFrame): void {
    switch (frame.type) {
      case "text":
      case "system":
      case "edit":
      case "delete":
      case "react":
      case "unreact":
        if (!this.acceptMessage(frame)) return;
        break;
      case "joined":
        this.advance(frame.room_id, frame.last_seq);
        break;
      case "resumed":
        this.resuming.delete(frame.room_id);
        break;
      case "ack":
        if (frame.client_id) this.outbox.delete(frame.client_id);
        break;
      case "pong":
        if (this.pongTimer) clearTimeout(this.pongTimer);
        this.pongTimer = null;
        return;
      case "error":
        this.onError(frame);
        break;
      case "left":
        this.rooms.delete(frame.room_id);
        break;
    }
    this.options.onEvent({ type: "frame", frame });
  }

  /** Drops duplicates; on a gap, asks for a replay instead of showing a hole. */
  private acceptMessage(message: ChatMessage | ChatChange): boolean {
    const last = this.rooms.get(message.room_id);
    if (last === undefined) return false;
    if (last === null) {
      this.rooms.set(message.room_id, message.seq);
      return true;
    }
    if (message.seq <= last) return false;
    if (message.seq > last + 1) {
      if (!this.resuming.has(message.room_id)) {
        this.resuming.add(message.room_id);
        this.write({ type: "resume", room_id: message.room_id, last_seq: last });
      }
      return false;
    }
    this.rooms.set(message.room_id, message.seq);
    return true;
  }

  private advance(roomId: string, seq: number): void {
    const last = this.rooms.get(roomId);
    if (last === undefined) return;
    if (last === null || seq > last) this.rooms.set(roomId, seq);
  }

  private onError(frame: Extract<ServerFrame, { type: "error" }>): void {
    if (frame.retryable) {
      // Which message was refused is not said; resending the unacknowledged
      // ones is safe (client_id) and keeps their order. One resend for every
      // error of a burst: one per error would send the outbox squared.
      this.scheduleResend(Math.max(1, frame.retry_after ?? 1) * 1000);
    } else if (frame.code === "not_joined") {
      // A room this connection should have open is not: its opening was
      // refused (`unavailable` while the server could not reach Redis). Open
      // them again, then resend what was refused meanwhile.
      this.scheduleReopen();
    } else if (frame.code === "resume_too_far") {
      // More than the server keeps for replay: start afresh; the app reloads history.
      for (const roomId of this.resuming) {
        this.rooms.set(roomId, null);
        this.write({ type: "join", room_id: roomId });
      }
      this.resuming.clear();
    }
  }

  /**
   * Sends the oldest unacknowledged frames again, a batch at a time; while
   * more remain than one batch, the rest follow a second later (acks empty
   * the outbox meanwhile).
   */
  private resend(): void {
    let sent = 0;
    for (const frame of this.outbox.values()) {
      if (sent === RESEND_BATCH) {
        this.scheduleResend(RESEND_EVERY_MS);
        return;
      }
      this.write(frame);
      sent += 1;
    }
  }

  private scheduleReopen(): void {
    if (this.reopenTimer) return;
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = null;
      for (const roomId of this.rooms.keys()) this.sendRoomOpening(roomId);
      this.scheduleResend(RESEND_EVERY_MS);
    }, RESEND_EVERY_MS);
  }

  private scheduleResend(waitMs: number): void {
    if (this.resendTimer) return;
    this.resendTimer = setTimeout(() => {
      this.resendTimer = null;
      this.resend();
    }, waitMs);
  }

  private write(frame: ClientFrame): void {
    if (this.socket && this.socket.readyState === OPEN) this.socket.send(JSON.stringify(frame));
  }

  private startHeartbeat(): void {
    const every = this.options.pingEveryMs ?? 25_000;
    this.pingTimer = setInterval(() => {
      if (this.pongTimer) return;
      this.write({ type: "ping" });
      // A server that vanished without a close (a dead network path) shows
      // here: close and reconnect instead of waiting for TCP to notice.
      this.pongTimer = setTimeout(() => {
        this.pongTimer = null;
        this.socket?.close(4000, "no pong");
        const socket = this.socket;
        if (socket?.onclose) socket.onclose({ code: 4000, reason: "no pong" });
      }, PONG_TIMEOUT_MS);
    }, every);
  }

  private clearTimers(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.pongTimer) clearTimeout(this.pongTimer);
    if (this.resendTimer) clearTimeout(this.resendTimer);
    if (this.reopenTimer) clearTimeout(this.reopenTimer);
    this.retryTimer = this.pingTimer = this.pongTimer = this.resendTimer = this.reopenTimer = null;
  }

  private setStatus(status: Status, retryInMs?: number): void {
    this.status = status;
    this.options.onEvent({ type: "status", status, retryInMs });
  }

  get currentStatus(): Status {
    return this.status;
  }
}
