// What the screens can ask of the chat: ChatApp implements these over the
// API and the connection; the components only call them. Its own module so
// components and ChatApp do not import each other.

import type { FileCache } from "./files";
import type { AttachedFile, Room, SearchHit } from "./protocol/types";

export type ChatActions = {
  select: (roomId: string | null) => void;
  create: (name: string, description: string, isPrivate: boolean) => Promise<string | null>;
  join: (roomId: string) => Promise<void>;
  leave: (room: Room) => Promise<void>;
  direct: (username: string) => Promise<string | null>;
  invite: (room: Room, username: string) => Promise<string | null>;
  rename: (room: Room, name: string, description: string) => Promise<string | null>;
  remove: (room: Room, userId: string) => Promise<void>;
  send: (roomId: string, content: string, attachments?: AttachedFile[]) => void;
  /** Uploads a file into a room; rejects with the ApiError that refused it. */
  upload: (roomId: string, file: File, onProgress: (fraction: number) => void) => Promise<AttachedFile>;
  /** Deletes a file uploaded and not sent after all (best effort). */
  discard: (file: AttachedFile) => void;
  files: FileCache;
  editMessage: (roomId: string, seq: number, content: string) => void;
  deleteMessage: (roomId: string, seq: number) => void;
  react: (roomId: string, seq: number, emoji: string, on: boolean) => void;
  search: (q: string) => Promise<SearchHit[]>;
  openThread: (roomId: string, parent: number) => Promise<void>;
  reply: (roomId: string, parent: number, content: string) => void;
  typing: (roomId: string) => void;
  read: (roomId: string, seq: number) => void;
  older: (roomId: string, beforeSeq: number) => Promise<void>;
  /** Profile changes; they reject with the ApiError that refused them. */
  updateProfile: (change: { display_name: string | null; avatar_color?: string }) => Promise<void>;
  setAvatar: (picture: File) => Promise<void>;
  removeAvatar: () => Promise<void>;
  dismiss: () => void;
  signOut: () => void;
};
