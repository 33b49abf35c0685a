import { describe, expect, it } from "vitest";
import { complete, mentionAt, mentionsMe, suggestions } from "../../src/mentions";
import { initialState, reducer } from "../../src/state";
import type { ChatMessage } from "../../src/protocol/types";
import { room, text as message } from "./fixtures";

const text = (roomId: string, seq: number, extra: Partial<ChatMessage> = {}) => message(roomId, seq, "bob", extra);

describe("mentions", () => {
  it("finds the name being typed at the caret, not in an e-mail address", () => {
    expect(mentionAt("hi @bo", 6)).toEqual({ start: 3, query: "bo" });
    expect(mentionAt("@", 1)).toEqual({ start: 0, query: "" });
    expect(mentionAt("hi @bob there", 13)).toBeNull();
    expect(mentionAt("mail me@ex", 10)).toBeNull();
  });

  it("suggests members by prefix, and the room to those who may call it", () => {
    const person = (username: string, name = username) => ({ username, name });
    const names = (found: { username: string }[]) => found.map((p) => p.username);
    expect(names(suggestions("b", [person("carol"), person("bob"), person("Bea")], false))).toEqual(["Bea", "bob"]);
    expect(names(suggestions("r", [person("bob")], true))).toEqual(["room"]);
    expect(suggestions("r", [person("bob")], false)).toEqual([]);
    // By the shown name's words as well as the username, listed by shown name.
    const people = [person("bob", "Robert Smith"), person("al", "Alice"), person("rita")];
    expect(names(suggestions("sm", people, false))).toEqual(["bob"]);
    expect(names(suggestions("r", people, false))).toEqual(["rita", "bob"]);
    expect(names(suggestions("al", people, false))).toEqual(["al"]);
    expect(complete("hi @bo!", 3, 6, "bob")).toEqual({ text: "hi @bob !", caret: 8 });
  });

  it("counts mentions of me in rooms I am not looking at, and clears them on opening", () => {
    let state = reducer(reducer(initialState("me", "me"), { type: "rooms", rooms: [room("a"), room("b")] }), {
      type: "select",
      roomId: "a",
    });
    state = reducer(state, { type: "frame", frame: text("b", 1, { mentions: ["me"] }), now: 0 });
    state = reducer(state, { type: "frame", frame: text("b", 2, { mentions_room: true }), now: 0 });
    state = reducer(state, { type: "frame", frame: text("b", 3, { mentions: ["carol"] }), now: 0 });
    state = reducer(state, { type: "frame", frame: text("a", 1, { mentions: ["me"] }), now: 0 });
    expect(state.mentions.b).toBe(2);
    expect(state.mentions.a ?? 0).toBe(0);
    expect(state.unread.b).toBe(3);
    expect(mentionsMe(text("b", 4, { user_id: "me", mentions_room: true }), "me")).toBe(false);
    state = reducer(state, { type: "select", roomId: "b" });
    expect(state.mentions.b).toBe(0);
  });
});
