// The REST API (docs/api.md) and the session: tokens kept in localStorage,
// the access token refreshed a minute before it expires, and once more on a
// 401, so a user stays signed in for as long as the refresh token lives.

import type { AttachedFile, History, Room, RoomsPage, SearchView, SessionView, User } from "./protocol/types";

/** An error the API answered with: `{"error":{"code","message","field"?}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

interface Session {
  token: string;
  refreshToken: string;
  /** Unix milliseconds when the access token lapses. */
  expiresAt: number;
  user: User;
}


const STORAGE_KEY = "chatcluster.session";
/** Refresh this long before the access token lapses. */
const REFRESH_MARGIN_MS = 60_000;

function loadSession(): Session | null {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    return saved ? (JSON.parse(saved) as Session) : null;
  } catch {
    return null;
  }
}

/** Runs `work` while no other tab of this origin runs it (where Web Locks exist). */
function oneTabAtATime<T>(work: () => Promise<T>): Promise<T> {
  const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
  return locks ? (locks.request("chatcluster.refresh", work) as Promise<T>) : work();
}

export class Api {
  private session: Session | null = null;
  private refreshing: Promise<Session | null> | null = null;
  private listeners = new Set<(user: User | null, token: string | null) => void>();

  constructor(private readonly base = "") {
    this.session = loadSession();
  }

  get user(): User | null {
    return this.session?.user ?? null;
  }

  /** Called with the user (null when signed out) and a fresh token on every change. */
  subscribe(listener: (user: User | null, token: string | null) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async register(username: string, email: string, password: string): Promise<void> {
    await this.call("POST", "/api/auth/register", { username, email, password }, false);
    await this.login(email, password);
  }

  async login(email: string, password: string): Promise<User> {
    const answer = await this.call<SessionView>("POST", "/api/auth/login", { email, password }, false);
    this.save(answer);
    return answer.user;
  }

  async logout(): Promise<void> {
    const refreshToken = this.session?.refreshToken;
    this.setSession(null);
    if (refreshToken) {
      await this.call("POST", "/api/auth/logout", { refresh_token: refreshToken }, false).catch(() => undefined);
    }
  }

  /** A current access token, refreshed first when it is about to lapse. */
  async token(): Promise<string | null> {
    const session = this.session;
    if (!session) return null;
    if (session.expiresAt - Date.now() > REFRESH_MARGIN_MS) return session.token;
    return (await this.refresh())?.token ?? null;
  }

  /** Milliseconds until the token should be refreshed (for a timer). */
  refreshDueInMs(): number | null {
    if (!this.session) return null;
    return Math.max(0, this.session.expiresAt - Date.now() - REFRESH_MARGIN_MS);
  }

  /**
   * Rotates the refresh token; concurrent callers share one request. Tabs
   * share the session through localStorage, and a refresh token presented
   * twice revokes the sign-in (the server takes it for a stolen copy), so
   * tabs refresh one at a time (Web Locks) and a tab that finds a newer
   * session stored by another adopts it instead of refreshing.
   */
  refresh(): Promise<Session | null> {
    if (!this.refreshing) {
      this.refreshing = oneTabAtATime(async () => {
        const stored = loadSession();
        if (stored && stored.refreshToken !== this.session?.refreshToken) {
          this.setSession(stored);
          if (stored.expiresAt - Date.now() > REFRESH_MARGIN_MS) return stored;
        }
        const refreshToken = this.session?.refreshToken;
        if (!refreshToken) return null;
        try {
          const answer = await this.call<SessionView>(
            "POST",
            "/api/auth/refresh",
            { refresh_token: refreshToken },
            false,
          );
          return this.save(answer);
        } catch (error) {
          // Refused (expired, revoked): signed out. A network error keeps the
          // session for the next try.
          if (error instanceof ApiError && error.status === 401) this.setSession(null);
          return null;
        }
      }).finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  me = () => this.call<User>("GET", "/api/users/me");
  userById = (id: string) => this.call<User>("GET", `/api/users/${encodeURIComponent(id)}`);
  userByName = (username: string) =>
    this.call<User>("GET", `/api/users?username=${encodeURIComponent(username)}`);
  rooms = (offset = 0, limit = 100) =>
    this.call<RoomsPage>("GET", `/api/rooms?limit=${limit}&offset=${offset}`);
  room = (id: string) => this.call<Room>("GET", `/api/rooms/${id}`);
  createRoom = (name: string, description: string, isPrivate: boolean) =>
    this.call<Room>("POST", "/api/rooms", { name, description, is_private: isPrivate });
  joinRoom = (id: string) => this.call<Room>("POST", `/api/rooms/${id}/join`);
  renameRoom = (id: string, name: string, description: string) =>
    this.call<Room>("PATCH", `/api/rooms/${id}`, { name, description });
  leaveRoom = (id: string) => this.call<void>("POST", `/api/rooms/${id}/leave`);
  addMember = (roomId: string, userId: string) =>
    this.call<Room>("POST", `/api/rooms/${roomId}/members/${userId}`);
  removeMember = (roomId: string, userId: string) =>
    this.call<Room>("DELETE", `/api/rooms/${roomId}/members/${userId}`);
  direct = (userId: string) => this.call<Room>("POST", `/api/dm/${userId}`);
  latest = (roomId: string, limit: number) =>
    this.call<History>("GET", `/api/rooms/${roomId}/messages?limit=${limit}&offset=0`);
  search = (q: string) =>
    this.call<SearchView>("GET", `/api/search?q=${encodeURIComponent(q)}&limit=20`);
  thread = (roomId: string, parent: number) =>
    this.call<History>("GET", `/api/rooms/${roomId}/messages?thread=${parent}&limit=100`);
  before = (roomId: string, seq: number, limit: number) =>
    this.call<History>("GET", `/api/rooms/${roomId}/messages?limit=${limit}&before_seq=${seq}`);

  /**
   * Uploads `file` into a room (the bytes as the body, so the browser can
   * report progress through `onProgress`, 0 to 1). fetch() cannot report an
   * upload's progress; XMLHttpRequest can.
   */
  async upload(roomId: string, file: File, onProgress: (fraction: number) => void): Promise<AttachedFile> {
    const path = `/api/rooms/${roomId}/attachments?filename=${encodeURIComponent(file.name)}`;
    const send = (token: string | null) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const request = new XMLHttpRequest();
        request.open("POST", this.base + path);
        if (token) request.setRequestHeader("authorization", `Bearer ${token}`);
        request.setRequestHeader("content-type", "application/octet-stream");
        request.upload.onprogress = (event) => {
          if (event.lengthComputable) onProgress(event.loaded / event.total);
        };
        request.onload = () => resolve({ status: request.status, text: request.responseText });
        request.onerror = () => reject(new ApiError(0, "network", "The server cannot be reached."));
        request.send(file);
      });
    let answer = await send(await this.token());
    if (answer.status === 401) {
      const renewed = await this.refresh();
      if (!renewed) throw new ApiError(401, "signed_out", "Your session has ended. Please sign in again.");
      answer = await send(renewed.token);
    }
    return parseAnswer<AttachedFile>(answer.status, answer.text);
  }

  /** Bytes the API serves (an attachment, a picture), fetched with the token. */
  async blob(path: string): Promise<Blob> {
    const response = await this.request("GET", path);
    if (!response.ok) return parseAnswer<never>(response.status, await response.text());
    return response.blob();
  }

  deleteAttachment = (id: string) => this.call<void>("DELETE", `/api/attachments/${id}`);

  updateProfile = (change: { display_name?: string | null; avatar_color?: string | null }) =>
    this.call<User>("PATCH", "/api/users/me", change);

  /** Makes `picture` my avatar (the server crops and scales it). */
  async setAvatar(picture: File): Promise<User> {
    const response = await this.request("PUT", "/api/users/me/avatar", picture);
    return parseAnswer<User>(response.status, await response.text());
  }

  removeAvatar = () => this.call<User>("DELETE", "/api/users/me/avatar");

  private async call<T>(method: string, path: string, body?: unknown, authenticated = true): Promise<T> {
    const response = await this.request(method, path, body, authenticated);
    if (response.status === 204) return undefined as T;
    return parseAnswer<T>(response.status, await response.text());
  }

  /** Sends a request with the access token, refreshing it once on a 401. */
  private async request(method: string, path: string, body?: unknown, authenticated = true): Promise<Response> {
    // A file goes as it is; anything else as JSON.
    const raw = body instanceof Blob;
    const send = async (token: string | null) => {
      const headers: Record<string, string> = {};
      if (body !== undefined) headers["content-type"] = raw ? "application/octet-stream" : "application/json";
      if (token) headers.authorization = `Bearer ${token}`;
      return fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
      });
    };
    const response = await send(authenticated ? await this.token() : null);
    if (!authenticated || response.status !== 401) return response;
    // The token lapsed between the check and the call (or was revoked): once more.
    const renewed = await this.refresh();
    if (!renewed) throw new ApiError(401, "signed_out", "Your session has ended. Please sign in again.");
    return send(renewed.token);
  }

  private save(answer: SessionView): Session {
    const session = {
      token: answer.token,
      refreshToken: answer.refresh_token,
      expiresAt: Date.now() + answer.expires_in * 1000,
      user: answer.user,
    };
    this.setSession(session);
    return session;
  }

  private setSession(session: Session | null): void {
    this.session = session;
    try {
      if (session) localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
      else localStorage.removeItem(STORAGE_KEY);
    } catch {
      // Private browsing without storage: the session lives in memory only.
    }
    for (const listener of this.listeners) listener(session?.user ?? null, session?.token ?? null);
  }
}

/** The JSON of a successful answer, or the ApiError of a failed one. */
function parseAnswer<T>(status: number, text: string): T {
  const json = text ? safeJson(text) : null;
  if (status < 200 || status >= 300) {
    const error = (json as { error?: { code?: string; message?: string; field?: string } } | null)?.error;
    throw new ApiError(status, error?.code ?? "http_error", error?.message ?? `The server answered ${status}.`, error?.field);
  }
  return json as T;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
