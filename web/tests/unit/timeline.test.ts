import { describe, expect, it } from "vitest";
import {
  acknowledge,
  addMessages,
  addOlder,
  addPending,
  applyChange,
  emptyTimeline,
  openedAt,
  revealsGap,
} from "../../src/protocol/timeline";
import type { ChatChange, ChatMessage } from "../../src/protocol/types";

const message = (seq: number, id = `m${seq}`): ChatMessage => ({
  type: "text",
  id,
  room_id: "r1",
  user_id: "u1",
  username: "alice",
  content: `message ${seq}`,
  timestamp: "2026-11-23T10:00:00.000Z",
  seq,
});

describe("timeline", () => {
  it("orders messages by seq whatever order they arrive in", () => {
    const timeline = addMessages(emptyTimeline(), [message(3), message(1), message(2)]);
    expect(timeline.messages.map((m) => m.seq)).toEqual([1, 2, 3]);
    expect(timeline.lastSeq).toBe(3);
  });

  it("shows each message once, deduplicated by id and by seq", () => {
    let timeline = addMessages(emptyTimeline(), [message(1), message(2)]);
    timeline = addMessages(timeline, [message(2), message(2, "m2"), message(3)]);
    timeline = addMessages(timeline, [message(3, "m3")]);
    expect(timeline.messages.map((m) => m.id)).toEqual(["m1", "m2", "m3"]);
  });

  it("advances lastSeq only through a contiguous run, so resume asks for the gap", () => {
    let timeline = addMessages(emptyTimeline(), [message(1), message(2), message(4)]);
    expect(timeline.lastSeq).toBe(2);
    expect(revealsGap(timeline, message(4))).toBe(true);
    expect(revealsGap(timeline, message(3))).toBe(false);
    timeline = addMessages(timeline, [message(3)]);
    expect(timeline.lastSeq).toBe(4);
  });

  it("starts the contiguous run where the room was opened", () => {
    let timeline = openedAt(emptyTimeline(), 40);
    timeline = addMessages(timeline, [message(41)]);
    expect(timeline.lastSeq).toBe(41);
    expect(openedAt(timeline, 10).lastSeq).toBe(41);
  });

  it("shows own messages at once and drops the pending copy on the ack", () => {
    let timeline = addPending(emptyTimeline(), { clientId: "c1", roomId: "r1", content: "hi", sentAt: "" });
    expect(timeline.pending).toHaveLength(1);
    timeline = addMessages(timeline, [message(1)]);
    timeline = acknowledge(timeline, "c1");
    expect(timeline.pending).toEqual([]);
    expect(timeline.messages).toHaveLength(1);
  });

  it("prepends older pages and knows when history is exhausted", () => {
    let timeline = addMessages(emptyTimeline(), [message(51), message(52)]);
    const page = Array.from({ length: 50 }, (_, i) => message(i + 1));
    timeline = addOlder(timeline, page.slice(25), 25);
    expect(timeline.messages[0].seq).toBe(26);
    expect(timeline.hasOlder).toBe(true);
    timeline = addOlder(timeline, page.slice(0, 25), 25);
    expect(timeline.messages.map((m) => m.seq)).toEqual([...Array.from({ length: 50 }, (_, i) => i + 1), 51, 52]);
    expect(timeline.hasOlder).toBe(false);
  });

  it("applies edits and deletions to the message they change, a deletion for good", () => {
    const change = (type: "edit" | "delete", seq: number, target: number, content = ""): ChatChange => ({
      type,
      id: `c${seq}`,
      room_id: "r1",
      user_id: "u1",
      username: "alice",
      content,
      timestamp: "2026-11-23T10:05:00.000Z",
      target_seq: target,
      seq,
    });
    const file = { id: "f1", filename: "map.png", content_type: "image/png", size: 10, thumbnail: true };
    let timeline = addMessages(emptyTimeline(), [{ ...message(1), attachments: [file] }, { ...message(2), attachments: [file] }]);
    timeline = applyChange(timeline, change("edit", 3, 1, "fixed"));
    expect(timeline.messages[0]).toMatchObject({ content: "fixed", edited_at: "2026-11-23T10:05:00.000Z", attachments: [file] });
    timeline = applyChange(timeline, change("delete", 4, 2));
    expect(timeline.messages[1]).toMatchObject({ content: "", deleted: true });
    expect(timeline.messages[1].attachments).toBeUndefined();
    const after = applyChange(timeline, change("edit", 5, 2, "back?"));
    expect(after).toBe(timeline);
    // A change to a message not shown changes nothing (history brings it as it is now).
    expect(applyChange(timeline, change("edit", 6, 99, "x"))).toBe(timeline);
  });

  it("keeps reactions as a set of users per emoji", () => {
    const reaction = (type: "react" | "unreact", seq: number, user: string, emoji = "👍"): ChatChange => ({
      type,
      id: `r${seq}`,
      room_id: "r1",
      user_id: user,
      username: user,
      content: emoji,
      timestamp: "2026-11-23T10:05:00.000Z",
      target_seq: 1,
      seq,
    });
    let timeline = addMessages(emptyTimeline(), [message(1)]);
    for (const change of [reaction("react", 2, "bob"), reaction("react", 3, "bob"), reaction("react", 4, "carol"), reaction("react", 5, "bob", "🎉")]) {
      timeline = applyChange(timeline, change);
    }
    expect(timeline.messages[0].reactions).toEqual({ "👍": ["bob", "carol"], "🎉": ["bob"] });
    timeline = applyChange(timeline, reaction("unreact", 6, "bob", "🎉"));
    timeline = applyChange(timeline, reaction("unreact", 7, "bob"));
    expect(timeline.messages[0].reactions).toEqual({ "👍": ["carol"] });
  });
});
