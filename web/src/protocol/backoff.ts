// Reconnection delays: exponential, capped, with jitter so that thousands of
// clients cut off by one server restart do not all come back at once.

export const FIRST_DELAY_MS = 500;
export const MAX_DELAY_MS = 30_000;

/**
 * The wait before reconnection attempt `attempt` (0 for the first retry):
 * half of the exponential delay, plus a random share of the other half
 * ("equal jitter"), so the delay still grows but never synchronises.
 */
export function reconnectDelay(attempt: number, random: () => number = Math.random): number {
  const exponential = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** Math.min(attempt, 16));
  const half = exponential / 2;
  return Math.round(half + random() * half);
}
