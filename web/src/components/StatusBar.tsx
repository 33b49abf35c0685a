import { useState } from "react";
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
  shownAs,
  onProfile,
  onSignOut,
}: {
  status: Status;
  retryInMs?: number;
  me: User;
  /** My display name, else my username. */
  shownAs: string;
  onProfile: () => void;
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
      <NotificationsButton />
      <span className="me">
        Signed in as <strong title={`@${me.username}`}>{shownAs}</strong>
      </span>
      <button type="button" onClick={onProfile}>
        Profile
      </button>
      <button type="button" onClick={onSignOut}>
        Sign out
      </button>
    </header>
  );
}

/**
 * Offers desktop notifications (for direct messages while the tab is
 * hidden). The browser is asked only on this click, never on load.
 */
function NotificationsButton() {
  const supported = typeof window !== "undefined" && "Notification" in window;
  const [permission, setPermission] = useState(supported ? Notification.permission : "denied");
  if (!supported || permission !== "default") return null;
  return (
    <button
      type="button"
      className="notifications"
      onClick={() => void Notification.requestPermission().then(setPermission)}
    >
      Enable notifications
    </button>
  );
}
