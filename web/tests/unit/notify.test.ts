import { describe, expect, it } from "vitest";
import { desktopNotice, pageTitle, retracts } from "../../src/notify";
import { initialState, reducer } from "../../src/state";
import { room, text as message } from "./fixtures";

const direct = (id: string) => room(id, { is_private: true, is_direct: true });
const text = (roomId: string, seq: number, user = "bob") => message(roomId, seq, user, { content: "psst" });

const start = () =>
  reducer(reducer(initialState("me", "me"), { type: "rooms", rooms: [direct("dm"), room("lobby")] }), {
    type: "select",
    roomId: "lobby",
  });

describe("browser notices", () => {
  it("puts the unread count in the tab's title", () => {
    let state = start();
    expect(pageTitle(state)).toBe("chatcluster");
    state = reducer(state, { type: "frame", frame: text("dm", 1), now: 0 });
    state = reducer(state, { type: "frame", frame: text("dm", 2), now: 0 });
    expect(pageTitle(state)).toBe("(2) chatcluster");
    state = reducer(state, { type: "select", roomId: "dm" });
    expect(pageTitle(state)).toBe("chatcluster");
  });

  it("notifies of a direct message I am not looking at, once, and never of my own or a group's", () => {
    const state = start();
    expect(desktopNotice(state, text("dm", 1), false)).toEqual({
      title: "bob",
      body: "psst",
      tag: "dm",
      roomId: "dm",
      seq: 1,
    });
    const picture = message("dm", 2, "bob", {
      content: "",
      attachments: [{ id: "f1", filename: "map.png", content_type: "image/png", size: 10 }],
    });
    expect(desktopNotice(state, picture, false)?.body).toBe("sent map.png");
    expect(desktopNotice(state, text("lobby", 1), true)).toBeNull();
    expect(desktopNotice(state, text("dm", 1, "me"), true)).toBeNull();
    const looking = reducer(state, { type: "select", roomId: "dm" });
    expect(desktopNotice(looking, text("dm", 1), false)).toBeNull();
    expect(desktopNotice(looking, text("dm", 1), true)).not.toBeNull();
    // A message already shown (a replay after a reconnect) is not news.
    const shown = reducer(state, { type: "frame", frame: text("dm", 1), now: 0 });
    expect(desktopNotice(shown, text("dm", 1), true)).toBeNull();
  });

  it("takes a notification back when its message is deleted", () => {
    const notice = desktopNotice(start(), text("dm", 4), true);
    expect(notice).not.toBeNull();
    if (!notice) return;
    const change = (type: "delete" | "edit", target: number, roomId = "dm") => ({
      ...text(roomId, 9),
      type,
      content: "",
      target_seq: target,
    });
    expect(retracts(notice, change("delete", 4))).toBe(true);
    expect(retracts(notice, change("delete", 3))).toBe(false);
    expect(retracts(notice, change("delete", 4, "lobby"))).toBe(false);
    expect(retracts(notice, change("edit", 4))).toBe(false);
  });
});
