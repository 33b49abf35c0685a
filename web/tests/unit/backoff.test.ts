import { describe, expect, it } from "vitest";
import { FIRST_DELAY_MS, MAX_DELAY_MS, reconnectDelay } from "../../src/protocol/backoff";

describe("reconnect backoff", () => {
  it("doubles per attempt up to a cap", () => {
    const highest = (attempt: number) => reconnectDelay(attempt, () => 0.999999);
    expect(highest(0)).toBe(FIRST_DELAY_MS);
    expect(highest(1)).toBe(FIRST_DELAY_MS * 2);
    expect(highest(3)).toBe(FIRST_DELAY_MS * 8);
    expect(highest(50)).toBe(MAX_DELAY_MS);
  });

  it("spreads clients over the upper half of the window", () => {
    expect(reconnectDelay(4, () => 0)).toBe((FIRST_DELAY_MS * 16) / 2);
    const delays = new Set(Array.from({ length: 50 }, () => reconnectDelay(4)));
    expect(delays.size).toBeGreaterThan(10);
    for (const delay of delays) {
      expect(delay).toBeGreaterThanOrEqual(FIRST_DELAY_MS * 8);
      expect(delay).toBeLessThanOrEqual(FIRST_DELAY_MS * 16);
    }
  });
});
