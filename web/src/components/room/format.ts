// How the room shows times.

/** A message's time of day, in the reader's locale. */
export function time(timestamp: string): string {
  const date = new Date(timestamp);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** A past moment in words: "just now", "5 min ago", "3 h ago", or a date. */
export function ago(then: number, now: number): string {
  const minutes = Math.floor((now - then) / 60_000);
  if (Number.isNaN(minutes)) return "a while ago";
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  if (minutes < 24 * 60) return `${Math.floor(minutes / 60)} h ago`;
  return `on ${new Date(then).toLocaleDateString()}`;
}
