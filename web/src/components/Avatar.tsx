import { useEffect, useState } from "react";
import type { FileCache } from "../files";
import type { Presence, Profile } from "../state";

/**
 * A person's picture if they chose one (fetched with the token, so only
 * ours: never a remote image), else their initials on their colour, or on
 * one derived from the name, stable across sessions.
 */
export function Avatar({
  name,
  presence,
  profile,
  files,
}: {
  name: string;
  /** Shown as a dot: green online, grey offline, hollow while unknown. */
  presence?: Presence;
  profile?: Profile;
  files?: FileCache;
}) {
  const [picture, setPicture] = useState<string | null>(null);
  const path = profile?.picture ?? null;
  useEffect(() => {
    setPicture(null);
    if (!path || !files) return;
    let shown = true;
    files.fetched(path).then(
      (url) => shown && setPicture(url),
      () => undefined,
    );
    return () => {
      shown = false;
    };
  }, [files, path]);
  const shownName = profile?.displayName ?? name;
  const background = profile?.color ?? colorOf(name);
  return (
    <span className="avatar" style={{ background, color: textOn(background) }} aria-hidden="true">
      {picture ? <img src={picture} alt="" /> : initials(shownName)}
      {presence !== undefined && <span className={`presence ${presence}`} />}
    </span>
  );
}

/**
 * The colour of someone who chose none, derived from their username so it
 * is stable across sessions: a hue from the name at 55% saturation and 45%
 * lightness, as `#rrggbb` (what a colour input shows).
 */
export function colorOf(name: string): string {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  const hue = hash % 360;
  const [s, l] = [0.55, 0.45];
  const a = s * Math.min(l, 1 - l);
  const channel = (n: number) => {
    const k = (n + hue / 30) % 12;
    const value = l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(value * 255)
      .toString(16)
      .padStart(2, "0");
  };
  return `#${channel(0)}${channel(8)}${channel(4)}`;
}

/** Black or white, whichever reads better on `background` (`#rrggbb`). */
export function textOn(background: string): string {
  const channels = [1, 3, 5].map((i) => parseInt(background.slice(i, i + 2), 16) / 255);
  if (channels.some(Number.isNaN)) return "#ffffff";
  const [r, g, b] = channels.map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
  const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  // Contrast with white is 1.05 / (L + 0.05), with black (L + 0.05) / 0.05.
  return 1.05 / (luminance + 0.05) >= (luminance + 0.05) / 0.05 ? "#ffffff" : "#000000";
}

/** "Alice Liddell" → "AL"; "bob" → "BO". */
export function initials(name: string): string {
  const words = name.trim().split(/\s+/).filter(Boolean);
  if (words.length >= 2) return (words[0][0] + words[1][0]).toUpperCase();
  return name.trim().slice(0, 2).toUpperCase();
}
