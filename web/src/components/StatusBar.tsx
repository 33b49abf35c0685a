import type { Status } from "../protocol/client";
import type { User } from "../protocol/types";

const LABELS: Record<Status, string> = {
  connecting: "Connecting…",
  online: "Connected",
  reconnecting: "Connection lost, reconnecting",
  offline: "Offline",
};

/** Always visible: who I am and whether messages are flowing. */
export function StatusBar({
  status,
  retryInMs,
  me,
  onSignOut,
}: {
  status: Status;
  retryInMs?: number;
  me: User;
  onSignOut: () => void;
}) {
  const retry = status === "reconnecting" && retryInMs ? ` (next try in ${Math.ceil(retryInMs / 1000)} s)` : "";
  return (
    <header className="status-bar">
      <span className="brand">chatcluster</span>
      <span className={`connection ${status}`} role="status" aria-live="polite" data-status={status}>
        <span className="dot" aria-hidden="true" />
        {LABELS[status]}
        {retry}
      </span>
      <span className="me">
        Signed in as <strong>{me.username}</strong>
      </span>
      <button type="button" onClick={onSignOut}>
        Sign out
      </button>
    </header>
  );
}
