import { useEffect, useId, useRef, type ReactNode } from "react";

/**
 * A modal dialog over the chat: named by its title, closed by Escape, by a
 * click beside it or by its own buttons; the keyboard's focus goes in when
 * it opens (to the first field that asks for it, else the dialog) and back
 * to where it was when it closes.
 */
export function Dialog({ title, onClose, children }: { title: string; onClose: () => void; children: ReactNode }) {
  const id = useId();
  const box = useRef<HTMLElement>(null);
  useEffect(() => {
    const before = document.activeElement as HTMLElement | null;
    if (box.current && !box.current.contains(document.activeElement)) box.current.focus();
    return () => before?.focus();
  }, []);
  // Escape closes it wherever the focus is (it is modal).
  const close = useRef(onClose);
  close.current = onClose;
  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if (event.key === "Escape") close.current();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);
  return (
    <div
      className="dialog-backdrop"
      onMouseDown={(event) => {
        if (event.target === event.currentTarget) onClose();
      }}
    >
      <section
        ref={box}
        className="dialog"
        role="dialog"
        aria-modal="true"
        aria-labelledby={id}
        tabIndex={-1}
      >
        <h2 id={id}>{title}</h2>
        {children}
      </section>
    </div>
  );
}

/** Why a form was refused, read out as it appears; nothing when it was not. */
export function FieldError({ error }: { error: string | null }) {
  if (!error) return null;
  return (
    <p className="field-error" role="alert">
      {error}
    </p>
  );
}

/** A dialog's form's buttons: do it, or close without doing it. */
export function DialogButtons({
  submit,
  onCancel,
  cancel = "Cancel",
  busy = false,
}: {
  submit: string;
  onCancel: () => void;
  cancel?: string;
  busy?: boolean;
}) {
  return (
    <div className="dialog-buttons">
      <button type="submit" disabled={busy}>
        {submit}
      </button>
      <button type="button" onClick={onCancel}>
        {cancel}
      </button>
    </div>
  );
}
