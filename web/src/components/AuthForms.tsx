import { useState, type FormEvent } from "react";
import { ApiError, type Api } from "../api";

type Mode = "login" | "register";

/** Sign in and registration, with the API's own messages next to the field they concern. */
export function AuthForms({ api }: { api: Api }) {
  const [mode, setMode] = useState<Mode>("login");
  const [username, setUsername] = useState("");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<{ message: string; field?: string } | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setError(null);
    if (mode === "register" && password.length < 8) {
      setError({ message: "Use at least 8 characters.", field: "password" });
      return;
    }
    setBusy(true);
    try {
      if (mode === "register") await api.register(username.trim(), email.trim(), password);
      else await api.login(email.trim(), password);
    } catch (e) {
      if (e instanceof ApiError) setError({ message: e.message, field: e.field });
      else setError({ message: "The server cannot be reached. Check your connection and try again." });
    } finally {
      setBusy(false);
    }
  }

  const fieldError = (field: string) =>
    error?.field === field ? (
      <p className="field-error" id={`${field}-error`} role="alert">
        {error.message}
      </p>
    ) : null;

  return (
    <main className="auth">
      <h1>chatcluster</h1>
      <form onSubmit={submit} aria-labelledby="auth-title" noValidate>
        <h2 id="auth-title">{mode === "login" ? "Sign in" : "Create an account"}</h2>
        {mode === "register" && (
          <label>
            Username
            <input
              name="username"
              autoComplete="username"
              value={username}
              onChange={(e) => setUsername(e.target.value)}
              required
              minLength={3}
              maxLength={32}
              aria-invalid={error?.field === "username"}
              aria-describedby={error?.field === "username" ? "username-error" : undefined}
            />
            {fieldError("username")}
          </label>
        )}
        <label>
          E-mail
          <input
            name="email"
            type="email"
            autoComplete="email"
            value={email}
            onChange={(e) => setEmail(e.target.value)}
            required
            aria-invalid={error?.field === "email"}
            aria-describedby={error?.field === "email" ? "email-error" : undefined}
          />
          {fieldError("email")}
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete={mode === "login" ? "current-password" : "new-password"}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
            required
            aria-invalid={error?.field === "password"}
            aria-describedby={error?.field === "password" ? "password-error" : undefined}
          />
          {fieldError("password")}
        </label>
        {error && !error.field && (
          <p className="form-error" role="alert">
            {error.message}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? "Please wait…" : mode === "login" ? "Sign in" : "Create account"}
        </button>
        <button
          type="button"
          className="link"
          onClick={() => {
            setMode(mode === "login" ? "register" : "login");
            setError(null);
          }}
        >
          {mode === "login" ? "New here? Create an account" : "Have an account? Sign in"}
        </button>
      </form>
    </main>
  );
}
