import { useEffect, useMemo, useState } from "react";
import { Api } from "./api";
import { AuthForms } from "./components/AuthForms";
import { ChatApp } from "./components/ChatApp";
import type { User } from "./protocol/types";

export function App() {
  const api = useMemo(() => new Api(), []);
  const [user, setUser] = useState<User | null>(api.user);
  useEffect(() => api.subscribe((next) => setUser(next)), [api]);
  return user ? <ChatApp key={user.id} api={api} me={user} /> : <AuthForms api={api} />;
}
