// A message's text: plain text with links and mentions marked.

/**
 * Message text as text: React escapes it, so markup shows as typed. Only
 * http(s) URLs become links, opening in a new tab without access to this one.
 */
export function Content({ text, myName }: { text: string; myName: string }) {
  const parts = text.split(/(https?:\/\/[^\s<>"']+)/g);
  return (
    <>
      {parts.map((part, i) =>
        /^https?:\/\//.test(part) ? (
          <a key={i} href={part} target="_blank" rel="noopener noreferrer nofollow">
            {part}
          </a>
        ) : (
          <Mentions key={i} text={part} myName={myName} />
        ),
      )}
    </>
  );
}

/** Text with its @mentions marked, those of me (or of the whole room) more. */
function Mentions({ text, myName }: { text: string; myName: string }) {
  const parts = text.split(/((?:^|(?<=[^A-Za-z0-9_.-]))@[A-Za-z0-9_.-]*[A-Za-z0-9_])/g);
  return (
    <>
      {parts.map((part, i) => {
        if (!part.startsWith("@") || part.length < 2) return part;
        const name = part.slice(1).toLowerCase();
        const me = name === myName.toLowerCase() || name === "room" || name === "here" || name === "channel";
        return (
          <span key={i} className={me ? "mention me" : "mention"}>
            {part}
          </span>
        );
      })}
    </>
  );
}
