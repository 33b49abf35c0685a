/** Initials on a colour derived from the name: stable, and never a remote image. */
export function Avatar({ name, online }: { name: string; online?: boolean }) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  const hue = hash % 360;
  return (
    <span className="avatar" style={{ background: `hsl(${hue} 55% 45%)` }} aria-hidden="true">
      {name.slice(0, 2).toUpperCase()}
      {online !== undefined && <span className={`presence ${online ? "online" : "offline"}`} />}
    </span>
  );
}
