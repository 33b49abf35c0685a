import { describe, expect, it } from "vitest";
import { initialState, nameOf, presenceOf, reducer, seenBy, typingIn } from "../../src/state";
import { initials } from "../../src/components/Avatar";
import { room, text } from "./fixtures";

const start = () => reducer(reducer(initialState("me", "me"), { type: "rooms", rooms: [room("a"), room("b")] }), { type: "select", roomId: "a" });

describe("chat state", () => {
  it("follows profiles live, and never takes a remote picture", () => {
    const user = {
      id: "u1",
      username: "alice",
      display_name: "Alice Liddell",
      avatar_url: "/api/users/u1/avatar?v=abc",
      avatar_color: "#3a7bd5",
      created_at: "2026-11-30T00:00:00Z",
    };
    let state = start();
    expect(nameOf(state, "u1", "alice")).toBe("alice");
    state = reducer(state, { type: "frame", frame: { type: "user_updated", user }, now: 0 });
    expect(nameOf(state, "u1", "alice")).toBe("Alice Liddell");
    expect(state.profiles.u1).toEqual({ displayName: "Alice Liddell", color: "#3a7bd5", picture: "/api/users/u1/avatar?v=abc" });
    const remote = { ...user, display_name: null, avatar_url: "https://tracker.example/pixel.png" };
    state = reducer(state, { type: "frame", frame: { type: "user_updated", user: remote }, now: 0 });
    expect(state.profiles.u1.picture).toBeNull();
    expect(nameOf(state, "u1", "alice")).toBe("alice");
    expect([initials("Alice Liddell"), initials("bob")]).toEqual(["AL", "BO"]);
  });

  it("tells no presence while its own connection is down", () => {
    let state = reducer(start(), { type: "status", status: "online" });
    state = reducer(state, {
      type: "frame",
      frame: { type: "presence", room_id: "a", user_id: "bob", username: "bob", status: "online" },
      now: 0,
    });
    expect(presenceOf(state, "bob")).toBe("online");
    expect(presenceOf(state, "carol")).toBe("offline");
    state = reducer(state, { type: "status", status: "reconnecting", retryInMs: 1000 });
    expect([presenceOf(state, "bob"), presenceOf(state, "carol")]).toEqual(["unknown", "unknown"]);
    state = reducer(state, { type: "status", status: "online" });
    expect(presenceOf(state, "bob")).toBe("online");
  });

  it("shows one name for a person everywhere: their display name once they set one", () => {
    let state = start();
    state = reducer(state, { type: "frame", frame: { type: "typing", room_id: "a", user_id: "bob", username: "bob" }, now: 0 });
    expect(typingIn(state, "a", 1)).toEqual(["bob"]);
    expect(nameOf(state, "bob")).toBe("bob");
    expect(nameOf(state, "nobody")).toBe("someone");
    const bob = { id: "bob", username: "bob", display_name: "Bob Builder", avatar_url: null, avatar_color: null, created_at: "" };
    state = reducer(state, { type: "frame", frame: { type: "user_updated", user: bob }, now: 0 });
    expect(typingIn(state, "a", 1)).toEqual(["Bob Builder"]);
    expect(nameOf(state, "bob")).toBe("Bob Builder");
    expect(nameOf(state, "bob", "bob")).toBe("Bob Builder");
  });


  it("counts unread messages in other rooms only, not my own, and clears on opening", () => {
    let state = start();
    state = reducer(state, { type: "frame", frame: text("a", 1), now: 0 });
    state = reducer(state, { type: "frame", frame: text("b", 1), now: 0 });
    state = reducer(state, { type: "frame", frame: text("b", 2), now: 0 });
    state = reducer(state, { type: "frame", frame: text("b", 3, "me"), now: 0 });
    expect(state.unread).toEqual({ a: 0, b: 2 });
    state = reducer(state, { type: "select", roomId: "b" });
    expect(state.unread.b).toBe(0);
  });

  it("does not count a message twice", () => {
    let state = reducer(start(), { type: "select", roomId: "b" });
    state = reducer(state, { type: "frame", frame: text("a", 1), now: 0 });
    state = reducer(state, { type: "frame", frame: text("a", 1), now: 0 });
    expect(state.unread.a).toBe(1);
    expect(state.timelines.a.messages).toHaveLength(1);
  });

  it("shows typing for a few seconds, and ends it when that person's message arrives", () => {
    let state = start();
    state = reducer(state, { type: "frame", frame: { type: "typing", room_id: "a", user_id: "bob", username: "bob" }, now: 1000 });
    expect(typingIn(state, "a", 2000)).toEqual(["bob"]);
    expect(typingIn(state, "a", 6000)).toEqual([]);
    state = reducer(state, { type: "frame", frame: text("a", 1), now: 2000 });
    expect(typingIn(state, "a", 2000)).toEqual([]);
  });

  it("tracks presence and read markers", () => {
    let state = start();
    state = reducer(state, {
      type: "frame",
      frame: { type: "presence", room_id: "a", user_id: "bob", username: "bob", status: "online" },
      now: 0,
    });
    expect(state.online.bob).toBe(true);
    state = reducer(state, { type: "frame", frame: { type: "read", room_id: "a", user_id: "bob", seq: 4 }, now: 0 });
    state = reducer(state, { type: "frame", frame: { type: "read", room_id: "a", user_id: "bob", seq: 2 }, now: 0 });
    expect(state.reads.a.bob).toBe(4);
  });

  it("moves my message from pending to the timeline when acknowledged", () => {
    let state = start();
    state = reducer(state, { type: "pending", pending: { clientId: "c1", roomId: "a", content: "hi", sentAt: "" } });
    expect(state.timelines.a.pending).toHaveLength(1);
    state = reducer(state, { type: "frame", frame: text("a", 1, "me"), now: 0 });
    state = reducer(state, { type: "frame", frame: { type: "ack", client_id: "c1", room_id: "a", id: "a-1", seq: 1 }, now: 0 });
    expect(state.timelines.a.pending).toEqual([]);
    expect(state.timelines.a.messages.map((m) => m.seq)).toEqual([1]);
  });

  it("forgets a private room I was removed from", () => {
    let state = reducer(start(), { type: "room", room: { ...room("secret"), is_private: true } });
    state = reducer(state, { type: "select", roomId: "secret" });
    state = reducer(state, { type: "frame", frame: { type: "left", room_id: "secret" }, now: 0 });
    expect(state.rooms.secret).toBeUndefined();
    expect(state.active).toBeNull();
  });

  it("adds and removes rooms as the server announces them, without a reload", () => {
    const dm = { ...room("dm"), is_private: true, is_direct: true, members: ["bob", "me"] };
    let state = reducer(start(), { type: "frame", frame: { type: "room_added", room: dm }, now: 0 });
    expect(state.rooms.dm).toEqual(dm);
    // Announced again (another tab, a reconnect): still one room, the newest view.
    state = reducer(state, { type: "frame", frame: { type: "room_added", room: { ...dm, name: "renamed" } }, now: 0 });
    expect(Object.keys(state.rooms).sort()).toEqual(["a", "b", "dm"]);
    expect(state.rooms.dm.name).toBe("renamed");
    state = reducer(state, { type: "select", roomId: "dm" });
    state = reducer(state, { type: "frame", frame: { type: "room_removed", room_id: "dm" }, now: 0 });
    expect(state.rooms.dm).toBeUndefined();
    expect(state.active).toBeNull();
  });

  it("puts a reply in its thread, not the room's line, and counts it on its parent once", () => {
    let state = reducer(start(), { type: "frame", frame: text("a", 1), now: 0 });
    const reply = { ...text("a", 2), reply_to: 1 };
    state = reducer(state, { type: "frame", frame: reply, now: 0 });
    state = reducer(state, { type: "frame", frame: reply, now: 0 });
    expect(state.timelines.a.messages.map((m) => m.seq)).toEqual([1]);
    expect(state.timelines.a.messages[0].reply_count).toBe(1);
    expect(state.threads["a:1"].map((m) => m.seq)).toEqual([2]);
    // Loading the thread later merges without doubling.
    state = reducer(state, { type: "thread", roomId: "a", parent: 1, messages: [reply, { ...text("a", 3), reply_to: 1 }] });
    expect(state.threads["a:1"].map((m) => m.seq)).toEqual([2, 3]);
  });

  it("knows when people were last seen, from the server and from going offline", () => {
    let state = reducer(start(), { type: "users", users: [{ id: "carol", username: "carol", online: false, last_seen_at: "2026-11-23T09:00:00.000Z" }] });
    expect(state.lastSeen.carol).toBe("2026-11-23T09:00:00.000Z");
    const now = Date.parse("2026-11-23T10:00:00.000Z");
    state = reducer(state, { type: "frame", frame: { type: "presence", room_id: "a", user_id: "bob", username: "bob", status: "offline" }, now });
    expect(state.lastSeen.bob).toBe("2026-11-23T10:00:00.000Z");
    expect(state.online.bob).toBe(false);
  });

  it("puts each person's read receipt on the last message they read", () => {
    let state = start();
    for (const seq of [1, 2, 4]) state = reducer(state, { type: "frame", frame: text("a", seq), now: 0 });
    state = reducer(state, { type: "frame", frame: { type: "read", room_id: "a", user_id: "bob", seq: 3 }, now: 0 });
    state = reducer(state, { type: "frame", frame: { type: "read", room_id: "a", user_id: "carol", seq: 4 }, now: 0 });
    state = reducer(state, { type: "frame", frame: { type: "read", room_id: "a", user_id: "me", seq: 4 }, now: 0 });
    expect(seenBy(state, "a")).toEqual({ 2: ["bob"], 4: ["carol"] });
  });
});
