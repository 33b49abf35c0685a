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
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  const background = profile?.color ?? `hsl(${hash % 360} 55% 45%)`;
  return (
    <span className="avatar" style={{ background }} aria-hidden="true">
      {picture ? <img src={picture} alt="" /> : initials(shownName)}
      {presence !== undefined && <span className={`presence ${presence}`} />}
    </span>
  );
}

/** "Alice Liddell" → "AL"; "bob" → "BO". */
export function initials(name: string): string {
  const words = name.trim().split(/\s+/).filter(Boolean);
  if (words.length >= 2) return (words[0][0] + words[1][0]).toUpperCase();
  return name.trim().slice(0, 2).toUpperCase();
}
