import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";

// `npm run dev` proxies the API and the WebSocket to a chat-server on :8080.
export default defineConfig({
  plugins: [react()],
  build: { outDir: "dist", sourcemap: true, assetsDir: "assets" },
  server: {
    proxy: {
      "/api": "http://localhost:8080",
      "/ws": { target: "ws://localhost:8080", ws: true },
    },
  },
  test: { include: ["tests/unit/**/*.test.{ts,tsx}"], environment: "node" },
});
