import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ChatConnection, type ConnectionEvent, type SocketLike } from "../../src/protocol/client";
import type { ChatMessage, ClientFrame } from "../../src/protocol/types";

/** A socket the test drives: it records what the client sends. */
class FakeSocket implements SocketLike {
  readyState = 0;
  sent: ClientFrame[] = [];
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  constructor(readonly url: string, readonly protocols: string[]) {}
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(frame: object) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
}

const message = (seq: number, room = "r1"): ChatMessage => ({
  type: "text",
  id: `${room}-m${seq}`,
  room_id: room,
  user_id: "u2",
  username: "bob",
  content: `hello ${seq}`,
  timestamp: "2026-11-23T10:00:00.000Z",
  seq,
});

describe("ChatConnection", () => {
  let sockets: FakeSocket[];
  let events: ConnectionEvent[];
  let token: string | null;
  let connection: ChatConnection;

  const latest = () => sockets[sockets.length - 1];
  const shown = () =>
    events.flatMap((e) => (e.type === "frame" && (e.frame.type === "text" || e.frame.type === "system") ? [e.frame.seq] : []));
  /** Lets the connection's pending promises (the token) settle. */
  const flush = async () => {
    for (let i = 0; i < 10; i++) await Promise.resolve();
  };
  const connected = async () => {
    await vi.runOnlyPendingTimersAsync();
    await flush();
    latest().open();
  };

  beforeEach(() => {
    vi.useFakeTimers();
    sockets = [];
    events = [];
    token = "t1";
    connection = new ChatConnection({
      url: "ws://chat/ws",
      getToken: async () => token,
      onEvent: (event) => events.push(event),
      socketFactory: (url, protocols) => {
        const socket = new FakeSocket(url, protocols);
        sockets.push(socket);
        return socket;
      },
      random: () => 0.5,
      pingEveryMs: 1_000_000,
    });
  });
  afterEach(() => {
    connection.stop();
    vi.useRealTimers();
  });

  it("sends the token as a subprotocol and joins the rooms it should open", async () => {
    connection.open("r1");
    connection.start();
    await connected();
    expect(latest().protocols).toEqual(["chat", "bearer.t1"]);
    expect(latest().sent).toEqual([{ type: "join", room_id: "r1" }]);
    expect(events.some((e) => e.type === "status" && e.status === "online")).toBe(true);
  });

  it("reconnects after a loss and resumes every room from the last seq it saw", async () => {
    connection.open("r1");
    connection.open("r2");
    connection.start();
    await connected();
    latest().receive({ type: "joined", room_id: "r1", last_seq: 0 });
    latest().receive({ type: "joined", room_id: "r2", last_seq: 7 });
    for (const seq of [1, 2, 3]) latest().receive(message(seq));
    latest().drop();
    expect(events.at(-1)).toMatchObject({ type: "status", status: "reconnecting" });

    await connected();
    expect(sockets).toHaveLength(2);
    expect(latest().sent).toEqual([
      { type: "resume", room_id: "r1", last_seq: 3 },
      { type: "resume", room_id: "r2", last_seq: 7 },
    ]);
    // The replay overlaps what was shown: nothing twice, nothing missing.
    latest().receive({ type: "resumed", room_id: "r1", from_seq: 3, last_seq: 5 });
    for (const seq of [3, 4, 5]) latest().receive(message(seq));
    expect(shown()).toEqual([1, 2, 3, 4, 5]);
  });

  it("drops duplicates and asks for a replay instead of showing a gap", async () => {
    connection.open("r1");
    connection.start();
    await connected();
    latest().receive({ type: "joined", room_id: "r1", last_seq: 10 });
    latest().receive(message(11));
    latest().receive(message(11));
    latest().receive(message(14));
    expect(shown()).toEqual([11]);
    expect(latest().sent.at(-1)).toEqual({ type: "resume", room_id: "r1", last_seq: 11 });
    latest().receive({ type: "resumed", room_id: "r1", from_seq: 11, last_seq: 14 });
    for (const seq of [12, 13, 14]) latest().receive(message(seq));
    expect(shown()).toEqual([11, 12, 13, 14]);
  });

  it("counts edits and deletions in the room's seqs, so they neither look like gaps nor repeat", async () => {
    connection.open("r1");
    connection.start();
    await connected();
    latest().receive({ type: "joined", room_id: "r1", last_seq: 10 });
    latest().receive(message(11));
    const edit = { ...message(12), type: "edit" as const, target_seq: 11 };
    latest().receive(edit);
    latest().receive(edit);
    latest().receive(message(13));
    const stream = events.flatMap((e) => (e.type === "frame" && "seq" in e.frame && e.frame.type !== "ack" ? [e.frame.seq] : []));
    expect(stream).toEqual([11, 12, 13]);
    expect(latest().sent.some((f) => f.type === "resume")).toBe(false);
  });

  it("resends unacknowledged messages after a reconnect with the same client_id", async () => {
    connection.open("r1");
    connection.start();
    await connected();
    latest().receive({ type: "joined", room_id: "r1", last_seq: 0 });
    const acked = connection.post("r1", "first");
    latest().receive({ type: "ack", client_id: acked, room_id: "r1", id: "x", seq: 1 });
    const lost = connection.post("r1", "second");
    latest().drop();
    const offline = connection.post("r1", "third");
    const picture = connection.post("r1", "", undefined, ["f1"]);
    await connected();
    const resent = latest().sent.filter((f) => f.type === "message");
    expect(resent.map((f) => f.type === "message" && f.client_id)).toEqual([lost, offline, picture]);
    expect(resent.map((f) => f.type === "message" && f.content)).toEqual(["second", "third", ""]);
    // A message's files go again with it; a message without files names none.
    expect(resent.map((f) => f.type === "message" && f.attachments)).toEqual([undefined, undefined, ["f1"]]);
  });

  it("resends a long outbox a batch a second, once per burst of refusals, until it is acknowledged", async () => {
    connection.open("r1");
    connection.start();
    await connected();
    latest().receive({ type: "joined", room_id: "r1", last_seq: 0 });
    latest().drop();
    // Typed while offline: 30 messages wait.
    const ids = Array.from({ length: 30 }, (_, i) => connection.post("r1", `m${i}`));
    await connected();
    const messages = () => latest().sent.filter((f) => f.type === "message");
    const clientIds = () => messages().map((f) => f.type === "message" && f.client_id);
    expect(clientIds()).toEqual(ids.slice(0, 10));
    // Every one of them refused: a single resend follows, after retry_after.
    for (let i = 0; i < 10; i++) {
      latest().receive({ type: "error", code: "rate_limited", message: "slow down", retry_after: 0.2 });
    }
    await vi.advanceTimersByTimeAsync(999);
    expect(messages()).toHaveLength(10);
    await vi.advanceTimersByTimeAsync(1);
    expect(clientIds().slice(10)).toEqual(ids.slice(0, 10));
    // The first 25 acknowledged: the next batch is the last 5, and then nothing more.
    for (const [i, id] of ids.slice(0, 25).entries()) {
      latest().receive({ type: "ack", client_id: id, room_id: "r1", id: `x${i}`, seq: i + 1 });
    }
    await vi.advanceTimersByTimeAsync(1000);
    expect(clientIds().slice(20)).toEqual(ids.slice(25));
    for (const [i, id] of ids.slice(25).entries()) {
      latest().receive({ type: "ack", client_id: id, room_id: "r1", id: `y${i}`, seq: 26 + i });
    }
    await vi.advanceTimersByTimeAsync(5000);
    expect(messages()).toHaveLength(25);
  });

  it("opens its rooms again when told a room is not open, then resends what was refused", async () => {
    connection.open("r1");
    connection.start();
    await connected();
    latest().receive({ type: "joined", room_id: "r1", last_seq: 4 });
    latest().drop();
    await connected();
    // The resume was refused while the server could not reach Redis, and so
    // were the messages after it.
    latest().receive({ type: "error", code: "unavailable", message: "retry" });
    const id = connection.post("r1", "hello");
    for (let i = 0; i < 5; i++) latest().receive({ type: "error", code: "not_joined", message: "not open" });
    const resumes = () => latest().sent.filter((f) => f.type === "resume").length;
    expect(resumes()).toBe(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(resumes()).toBe(2);
    expect(latest().sent.at(-1)).toEqual({ type: "resume", room_id: "r1", last_seq: 4 });
    await vi.advanceTimersByTimeAsync(1000);
    const again = latest().sent.filter((f) => f.type === "message" && f.client_id === id);
    expect(again.length).toBeGreaterThanOrEqual(2);
  });

  it("backs off further with every failed attempt", async () => {
    connection.start();
    await connected();
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      latest().drop();
      const status = events.at(-1);
      if (status?.type === "status" && status.retryInMs) delays.push(status.retryInMs);
      await vi.runOnlyPendingTimersAsync();
      await flush();
    }
    expect(delays).toEqual([375, 750, 1500, 3000]);
  });

  it("stops and reports the sign-out when no token can be had", async () => {
    connection.start();
    await connected();
    token = null;
    latest().drop(4001);
    await vi.runOnlyPendingTimersAsync();
    await flush();
    expect(events.some((e) => e.type === "signed_out")).toBe(true);
    expect(sockets).toHaveLength(1);
  });
});
