// The peer: a chat server as the original article recommends, Socket.IO with
// the Redis adapter so several Node processes share rooms. It speaks the
// protocol chat-bench's `--protocol socketio` uses:
//   connect with auth {user}; emit "join" room -> "joined" room;
//   emit "message" {room, content} -> every socket in the room (the sender
//   too) gets "message" {room, user, content, timestamp}, and the sender "ack".
// No persistence: it measures the pub/sub path only, which favours it.
//
//   PORT=9001 REDIS_URL=redis://127.0.0.1:6379 node server.js

import { createServer } from "node:http";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

const port = Number(process.env.PORT ?? 9001);
const redisUrl = process.env.REDIS_URL;

const http = createServer((request, response) => {
  if (request.url === "/healthz") {
    response.writeHead(200).end("ok");
    return;
  }
  response.writeHead(404).end();
});
const io = new Server(http, { transports: ["websocket"], serveClient: false });

if (redisUrl) {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

io.use((socket, next) => {
  const user = socket.handshake.auth?.user;
  if (typeof user !== "string" || user.length === 0) return next(new Error("unauthorized"));
  socket.data.user = user;
  next();
});

io.on("connection", (socket) => {
  socket.on("join", (room) => {
    if (typeof room !== "string") return;
    socket.join(room);
    socket.emit("joined", room);
  });
  socket.on("message", (message) => {
    if (!message || typeof message.room !== "string" || typeof message.content !== "string") return;
    if (!socket.rooms.has(message.room)) return;
    io.to(message.room).emit("message", {
      room: message.room,
      user: socket.data.user,
      content: message.content,
      timestamp: new Date().toISOString(),
    });
    socket.emit("ack", message.room);
  });
});

http.listen(port, "127.0.0.1", () => console.error(`socket.io peer on :${port}${redisUrl ? ` with Redis ${redisUrl}` : ""}`));
