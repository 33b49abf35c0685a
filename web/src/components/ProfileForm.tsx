import { useState, type FormEvent } from "react";
import { ApiError } from "../api";
import type { Profile } from "../state";
import type { ChatActions } from "../actions";
import { Avatar, colorOf } from "./Avatar";
import { Dialog, DialogButtons, FieldError } from "./Dialog";

/** My display name, avatar colour and picture, as everyone sees them. */
export function ProfileForm({
  username,
  profile,
  actions,
  onDone,
}: {
  username: string;
  profile?: Profile;
  actions: ChatActions;
  onDone: () => void;
}) {
  const [displayName, setDisplayName] = useState(profile?.displayName ?? "");
  // The swatch starts at the colour people see now: theirs, or the one
  // derived from the name.
  const [color, setColor] = useState(profile?.color ?? colorOf(username));
  // Without a colour of their own, people keep the one derived from their
  // name until they pick one.
  const [colorChosen, setColorChosen] = useState(Boolean(profile?.color));
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function run(work: () => Promise<void>) {
    setBusy(true);
    setError(null);
    try {
      await work();
    } catch (failure) {
      setError(failure instanceof ApiError ? failure.message : "The server cannot be reached.");
    } finally {
      setBusy(false);
    }
  }

  async function save(event: FormEvent) {
    event.preventDefault();
    await run(async () => {
      await actions.updateProfile({
        display_name: displayName.trim() || null,
        ...(colorChosen ? { avatar_color: color } : {}),
      });
      onDone();
    });
  }

  return (
    <Dialog title="Your profile" onClose={onDone}>
      <form onSubmit={save} className="profile">
        <div className="profile-preview">
          <Avatar
            name={username}
            profile={{
              displayName: displayName.trim() || null,
              color: colorChosen ? color : (profile?.color ?? null),
              picture: profile?.picture ?? null,
            }}
            files={actions.files}
          />
          <span>
            {displayName.trim() || username} <span className="muted">@{username}</span>
          </span>
        </div>
        <label>
          Display name
          <input value={displayName} onChange={(e) => setDisplayName(e.target.value)} maxLength={64} autoFocus />
        </label>
        <label>
          Avatar colour
          <input
            type="color"
            value={color}
            onChange={(e) => {
              setColor(e.target.value);
              setColorChosen(true);
            }}
          />
        </label>
        <label>
          Picture
          <input
            type="file"
            accept="image/png,image/jpeg,image/gif,image/webp"
            disabled={busy}
            onChange={(e) => {
              const picture = e.target.files?.[0];
              e.target.value = "";
              if (picture) void run(() => actions.setAvatar(picture));
            }}
          />
        </label>
        {profile?.picture && (
          <button type="button" disabled={busy} onClick={() => void run(actions.removeAvatar)}>
            Remove picture
          </button>
        )}
        <FieldError error={error} />
        <DialogButtons submit="Save profile" onCancel={onDone} cancel="Close" busy={busy} />
      </form>
    </Dialog>
  );
}
