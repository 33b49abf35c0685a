import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Api } from "../../src/api";

/** localStorage as tabs of one origin share it. */
class SharedStorage {
  private values = new Map<string, string>();
  getItem(key: string) {
    return this.values.get(key) ?? null;
  }
  setItem(key: string, value: string) {
    this.values.set(key, value);
  }
  removeItem(key: string) {
    this.values.delete(key);
  }
}

const user = { id: "u1", username: "alice" };

function answer(n: number) {
  return { token: `access-${n}`, token_type: "Bearer", expires_in: 900, refresh_token: `refresh-${n}`, user };
}

describe("refreshing a session shared by several tabs", () => {
  let refreshed: string[];

  beforeEach(() => {
    refreshed = [];
    vi.stubGlobal("localStorage", new SharedStorage());
    vi.stubGlobal(
      "fetch",
      vi.fn(async (_url: string, init: { body: string }) => {
        const { refresh_token } = JSON.parse(init.body) as { refresh_token: string };
        refreshed.push(refresh_token);
        const n = Number(refresh_token.split("-")[1]) + 1;
        return new Response(JSON.stringify(answer(n)), { status: 200, headers: { "Content-Type": "application/json" } });
      }),
    );
    // A session whose access token is about to lapse, as both tabs loaded it.
    localStorage.setItem(
      "chatcluster.session",
      JSON.stringify({ token: "access-1", refreshToken: "refresh-1", expiresAt: Date.now() + 1000, user }),
    );
  });

  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it("uses each refresh token once: a second tab adopts the first tab's new session", async () => {
    const first = new Api();
    const second = new Api();
    expect((await first.refresh())?.refreshToken).toBe("refresh-2");
    expect((await second.refresh())?.refreshToken).toBe("refresh-2");
    expect(refreshed).toEqual(["refresh-1"]);
    expect(await second.token()).toBe("access-2");
  });
});
