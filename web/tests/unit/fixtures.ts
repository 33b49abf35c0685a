// Rooms and messages for the unit tests: what the server would send, with
// the fields a test cares about overridden.
import type { ChatMessage, Room } from "../../src/protocol/types";

/** A public room of "me" and "bob". */
export const room = (id: string, extra: Partial<Room> = {}): Room => ({
  id,
  name: id,
  description: "",
  is_private: false,
  is_direct: false,
  creator_id: "me",
  members: ["me", "bob"],
  admins: [],
  created_at: "2026-11-23T10:00:00.000Z",
  ...extra,
});

/** A text message by `user` in `roomId` at `seq`. */
export const text = (roomId: string, seq: number, user = "bob", extra: Partial<ChatMessage> = {}): ChatMessage => ({
  type: "text",
  id: `${roomId}-${seq}`,
  room_id: roomId,
  user_id: user,
  username: user,
  content: "hi",
  timestamp: "2026-11-23T10:00:00.000Z",
  seq,
  ...extra,
});
