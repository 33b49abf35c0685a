// End to end, in headless Chromium (Debian's, driven by playwright-core)
// against a real chat-server that this script starts and restarts:
// two people register, one creates a room, the other joins, they talk both
// ways live; the server restarts mid-conversation and both clients reconnect
// and resume with nothing missing and nothing twice; a third person does
// every flow with the keyboard alone (the focus always visible). Each main screen, at
// desktop (1280x800) and phone (390x844) width, is audited with axe-core
// and compared with its committed screenshot (tests/e2e/screens.mjs);
// screenshots go to web/test-results/.
//
//   node tests/e2e/chat.e2e.mjs      (after `npm run build` and `cargo build --workspace --all-targets`)
//
// CHAT_SERVER_BIN and CHROMIUM_PATH override where the server binary and
// the browser are.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";
import { check } from "./screens.mjs";

const web = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const root = resolve(web, "..");
const serverBin = process.env.CHAT_SERVER_BIN ?? join(root, "target/debug/chat-server");
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const results = join(web, "test-results");
const TIMEOUT = 20_000;

function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
    server.on("error", fail);
  });
}

/** The chat server on `port`, its data in `dataDir` (kept across restarts). */
class ChatServer {
  constructor(port, dataDir) {
    this.port = port;
    this.dataDir = dataDir;
    this.logs = "";
  }

  async start() {
    this.process = spawn(serverBin, [], {
      env: {
        ...process.env,
        CHAT_LISTEN_ADDR: `127.0.0.1:${this.port}`,
        CHAT_DATA_DIR: this.dataDir,
        CHAT_WEB_DIR: join(web, "dist"),
        CHAT_SHUTDOWN_GRACE_SECS: "2",
        CHAT_LOG_FORMAT: "json",
        RUST_LOG: "warn",
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.process.stderr.on("data", (chunk) => (this.logs += chunk));
    this.exited = new Promise((ok) => this.process.on("exit", ok));
    const deadline = Date.now() + TIMEOUT;
    while (Date.now() < deadline) {
      try {
        const response = await fetch(`http://127.0.0.1:${this.port}/readyz`);
        if (response.ok) return;
      } catch {
        // not listening yet
      }
      await new Promise((ok) => setTimeout(ok, 100));
    }
    throw new Error(`chat-server did not become ready:\n${this.logs}`);
  }

  async stop() {
    if (!this.process || this.process.exitCode !== null) return;
    this.process.kill("SIGTERM");
    await this.exited;
  }
}

async function register(page, base, name) {
  await page.goto(base);
  await page.getByRole("button", { name: "New here? Create an account" }).click();
  await page.getByLabel("Username").fill(name);
  await page.getByLabel("E-mail").fill(`${name}@example.com`);
  await page.getByLabel("Password").fill("correct horse battery");
  await page.getByRole("button", { name: "Create account" }).click();
  await connected(page);
}

const connected = (page) =>
  page.locator('.connection[data-status="online"]').waitFor({ timeout: TIMEOUT });

/** Messages shown in the open room, as text, in order (pending ones excluded). */
const shown = (page) =>
  page.locator(".messages > li.message:not(.pending):not(.system) > .bubble > .content").allTextContents();

async function send(page, text) {
  const box = page.getByRole("textbox", { name: /^Message / });
  await box.fill(text);
  await box.press("Enter");
}

/**
 * Uses one of a message's actions as people do: on a desktop they show on
 * hover; on a phone its "Message actions" button opens them.
 */
async function messageAction(page, message, name) {
  if ((page.viewportSize()?.width ?? 1280) < 700) {
    const shown = await message.locator(".message-actions").isVisible();
    if (!shown) await message.getByRole("button", { name: "Message actions" }).click();
  } else {
    await message.locator(".bubble").hover();
  }
  await message.getByRole("toolbar", { name: "Actions on this message" }).getByRole("button", { name, exact: true }).click();
}

/**
 * Moves the keyboard's focus with Tab alone until `target` has it, and
 * checks that it shows (a visible outline): what someone without a mouse
 * does to reach a control.
 */
async function tabTo(page, target, what) {
  for (let presses = 0; presses < 200; presses++) {
    await page.keyboard.press("Tab");
    if (await target.evaluate((element) => element === document.activeElement).catch(() => false)) {
      const outline = await target.evaluate((element) => getComputedStyle(element).outlineStyle);
      if (outline === "none") throw new Error(`${what} has the focus but does not show it`);
      return;
    }
  }
  throw new Error(`${what} cannot be reached with Tab`);
}

async function expectShown(page, who, expected) {
  const deadline = Date.now() + TIMEOUT;
  let got = [];
  while (Date.now() < deadline) {
    got = await shown(page);
    if (JSON.stringify(got) === JSON.stringify(expected)) return;
    await page.waitForTimeout(100);
  }
  throw new Error(`${who} sees ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
}

/** A `width` x `height` PNG of one colour (RGB, 8 bits, one IDAT). */
function png(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes) => {
    let c = 0xffffffff;
    for (const byte of bytes) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([length, body, sum]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.concat([Buffer.from([0]), Buffer.alloc(width * 3, 0x5a)]);
  const pixels = deflateSync(Buffer.concat(Array.from({ length: height }, () => row)));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", pixels),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** Registers `name` over the API (no browser) and returns an access token. */
async function signUp(base, name) {
  const account = { username: name, email: `${name}@example.com`, password: "correct horse battery" };
  const post = (path, body) =>
    fetch(base + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const registered = await post("/api/auth/register", account);
  if (registered.status !== 201) throw new Error(`register ${name}: ${registered.status}`);
  const session = await (await post("/api/auth/login", { email: account.email, password: account.password })).json();
  return session.token;
}

/** The id of the caller's direct room (the tests have one). */
async function directRoomId(base, token) {
  const list = await (await fetch(`${base}/api/rooms?limit=100`, { headers: { authorization: `Bearer ${token}` } })).json();
  const direct = list.rooms.find((room) => room.is_direct);
  if (!direct) throw new Error("no direct room");
  return direct.id;
}

async function main() {
  mkdirSync(results, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), "chat-e2e-"));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const server = new ChatServer(port, dataDir);
  const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
  try {
    await server.start();
    const desktop = { viewport: { width: 1280, height: 800 }, reducedMotion: "reduce", timezoneId: "UTC", locale: "en-GB" };
    const phone = { ...desktop, viewport: { width: 390, height: 844 }, hasTouch: true, isMobile: true };
    const alice = await (await browser.newContext(desktop)).newPage();
    const bob = await (await browser.newContext(phone)).newPage();
    // The server sends a strict Content-Security-Policy; the client must run under it untouched.
    const violations = [];
    for (const page of [alice, bob]) {
      page.on("pageerror", (error) => console.error("page error:", error));
      page.on("console", (message) => {
        if (message.type() === "error" && /Content Security Policy|Refused to/i.test(message.text())) {
          violations.push(message.text());
        }
      });
    }
    const landing = await alice.goto(base);
    const csp = landing?.headers()["content-security-policy"] ?? "";
    if (!csp.includes("script-src 'self'") || !csp.includes("frame-ancestors 'none'")) {
      throw new Error(`the web client is served without a strict CSP: ${csp}`);
    }

    await check(alice, "sign-in-desktop", results);
    await bob.goto(base);
    await check(bob, "sign-in-phone", results);
    await register(alice, base, "alice");
    await register(bob, base, "bob");
    console.log("registered alice and bob");

    // Alice creates a public room and is in it.
    await alice.getByRole("button", { name: "New room" }).click();
    await alice.getByRole("dialog", { name: "New room" }).waitFor({ timeout: TIMEOUT });
    await alice.getByLabel("Name", { exact: true }).fill("Launch");
    await alice.getByLabel("Description").fill("Release day <b>chatter</b>");
    await alice.getByRole("button", { name: "Create room" }).click();
    await alice.getByRole("heading", { name: "Launch" }).waitFor({ timeout: TIMEOUT });

    // Bob finds it among the public rooms at once (new rooms are pushed, no reload) and joins.
    await bob.getByRole("button", { name: "Join Launch" }).click();
    await bob.getByRole("heading", { name: "Launch" }).waitFor({ timeout: TIMEOUT });
    await alice.getByText("bob joined the room").waitFor({ timeout: TIMEOUT });
    await alice.getByRole("button", { name: "Members (2)" }).waitFor({ timeout: TIMEOUT });
    console.log("bob joined the room alice created");

    // Both ways, live; markup stays text.
    await send(alice, "Hello Bob <img src=x onerror=alert(1)>");
    await expectShown(bob, "bob", ["Hello Bob <img src=x onerror=alert(1)>"]);
    await bob.getByRole("textbox", { name: /^Message / }).fill("typing");
    await alice.getByText("bob is typing…").waitFor({ timeout: TIMEOUT });
    await send(bob, "Hi Alice! https://example.com/docs");
    const firstTwo = ["Hello Bob <img src=x onerror=alert(1)>", "Hi Alice! https://example.com/docs"];
    await expectShown(alice, "alice", firstTwo);
    if ((await alice.locator(".messages img").count()) !== 0) throw new Error("message markup was rendered as HTML");
    const link = alice.locator(".messages a", { hasText: "https://example.com/docs" });
    if ((await link.getAttribute("rel")) !== "noopener noreferrer nofollow") throw new Error("links must not reach the opener");
    // A screen reader hears the new message, and only that.
    const heard = alice.locator(".room-main p.visually-hidden[aria-live]");
    await heard.filter({ hasText: "bob: Hi Alice! https://example.com/docs" }).waitFor({ state: "attached", timeout: TIMEOUT });
    console.log("messages went both ways live, and alice's screen reader heard bob's");

    // The server restarts mid-conversation. Alice writes while it is down.
    await server.stop();
    await alice.locator('.connection[data-status="reconnecting"]').waitFor({ timeout: TIMEOUT });
    // Nobody's presence is known meanwhile: no green dot, only hollow ones.
    await alice.locator(".message .presence.unknown").first().waitFor({ timeout: TIMEOUT });
    if ((await alice.locator(".presence.online").count()) !== 0) throw new Error("presence shown as live while disconnected");
    await send(alice, "sent while the server was down");
    await alice.locator(".message.pending", { hasText: "sent while the server was down" }).waitFor({ timeout: TIMEOUT });
    await server.start();
    await connected(alice);
    await connected(bob);
    // And comes back with the connection: bob is online again in alice's view.
    await alice.locator(".message .presence.online").first().waitFor({ timeout: TIMEOUT });
    console.log("both reconnected after the restart; presence was unknown meanwhile, and came back");
    await send(bob, "back again");
    const all = [...firstTwo, "sent while the server was down", "back again"];
    await expectShown(alice, "alice", all);
    await expectShown(bob, "bob", all);
    if ((await alice.locator(".message.pending").count()) !== 0) throw new Error("a message stayed pending");
    console.log("nothing missing, nothing twice, after the restart");

    // Alice edits her message and Bob deletes his: both see both, live.
    const edited = "sent while the server was down, then edited";
    await messageAction(alice, alice.locator(".message.mine", { hasText: "sent while the server was down" }), "Edit");
    const editor = alice.getByRole("textbox", { name: "Edit your message" });
    await editor.fill(edited);
    await editor.press("Enter");
    const bobs = bob.locator(".message.mine", { hasText: "back again" });
    await messageAction(bob, bobs, "Delete");
    await messageAction(bob, bobs, "Yes, delete");
    const changed = [...firstTwo, edited, "This message was deleted."];
    await expectShown(alice, "alice after an edit and a deletion", changed);
    await expectShown(bob, "bob after an edit and a deletion", changed);
    await bob.locator(".message", { hasText: edited }).getByText("(edited)").waitFor({ timeout: TIMEOUT });
    console.log("an edit and a deletion reached both, live");

    // Bob reacts to Alice's first message; she sees it counted.
    const hello = bob.locator(".message", { hasText: "Hello Bob" });
    await messageAction(bob, hello, "React");
    await hello.getByRole("button", { name: "React with 👍" }).click();
    await alice
      .locator(".message", { hasText: "Hello Bob" })
      .getByRole("button", { name: /^👍 1: bob/ })
      .waitFor({ timeout: TIMEOUT });
    // Drawn in colour even where the system has no emoji font: the page brings its own.
    const emojiFont = await alice.evaluate(async () => (await document.fonts.load("16px Twemoji", "👍")).length);
    if (emojiFont !== 1) throw new Error("the emoji font did not load");
    console.log("a reaction reached alice, live, drawn by the page's emoji font");

    // Bob answers in the message's thread; Alice sees the count and opens it.
    // The thread opens beside the room (over it on his phone), the message above its replies.
    await messageAction(bob, hello, "Reply");
    const bobsThread = bob.getByRole("complementary", { name: /^Thread of / });
    await bobsThread.locator(".thread-parent", { hasText: "Hello Bob" }).waitFor({ timeout: TIMEOUT });
    const replyBox = bobsThread.getByRole("textbox", { name: "Reply in thread" });
    await replyBox.fill("answering in a thread");
    await replyBox.press("Enter");
    await bobsThread.locator(".reply", { hasText: "answering in a thread" }).waitFor({ timeout: TIMEOUT });
    await bobsThread.getByRole("button", { name: "Close the thread" }).click();
    const hers = alice.locator(".message", { hasText: "Hello Bob" });
    await messageAction(alice, hers, "1 reply");
    const alicesThread = alice.getByRole("complementary", { name: /^Thread of / });
    await alicesThread.locator(".reply", { hasText: "answering in a thread" }).waitFor({ timeout: TIMEOUT });
    // The reply is in the thread, not in the room's line.
    await expectShown(alice, "alice with a thread open", changed);
    console.log("a thread reply reached alice, counted on her message");

    // The server restarts again; the changes are still there after it.
    await server.stop();
    await server.start();
    await connected(alice);
    await connected(bob);
    await expectShown(alice, "alice after the second restart", changed);

    // History: a reload shows the conversation from the API, in order.
    await bob.reload();
    await connected(bob);
    // A page of history loaded is not read out.
    await bob.getByRole("button", { name: /Launch/ }).click();
    await expectShown(bob, "bob after a reload", changed);
    if ((await bob.locator(".room-main p.visually-hidden[aria-live]").textContent()) !== "") {
      throw new Error("loading history was announced");
    }
    await bob.locator(".message", { hasText: edited }).getByText("(edited)").waitFor({ timeout: TIMEOUT });

    // A direct message: it appears in Bob's list (on his phone: back at the
    // list) at once, named for Alice, with her presence, and her message
    // reaches him live.
    await bob.getByRole("button", { name: "Back to rooms" }).click();
    await alice.getByRole("button", { name: "New direct message" }).click();
    await alice.getByLabel("Username").fill("bob");
    await alice.getByRole("button", { name: "Message", exact: true }).click();
    await alice.getByRole("dialog").waitFor({ state: "detached", timeout: TIMEOUT });
    const rooms = bob.getByRole("navigation", { name: "Rooms" });
    // Named after her username now, after her display name once she sets one.
    const direct = rooms.getByRole("button", { name: /^@ (alice|Alice Liddell)\b/ });
    await direct.waitFor({ timeout: TIMEOUT });
    await direct.getByRole("img", { name: "online" }).waitFor({ timeout: TIMEOUT });
    await alice.getByRole("heading", { name: "bob" }).waitFor({ timeout: TIMEOUT });
    await send(alice, "just between us");
    await direct.click();
    await bob.getByRole("heading", { name: "alice" }).waitFor({ timeout: TIMEOUT });
    await expectShown(bob, "bob in the direct room", ["just between us"]);
    await alice
      .locator(".message", { hasText: "just between us" })
      .getByText("Seen by bob")
      .waitFor({ timeout: TIMEOUT });
    console.log("a direct message appeared live for bob, named for alice");

    // Alice sends Bob a picture: it uploads with a progress bar, and he sees
    // its thumbnail; Carol, who is not in the room, is refused the file.
    await alice.locator('input[type="file"]').setInputFiles({
      name: "map.png",
      mimeType: "image/png",
      buffer: png(640, 480),
    });
    await alice.getByRole("list", { name: "Files to send" }).getByText("map.png").waitFor({ timeout: TIMEOUT });
    // A second file, removed again before sending: it is not sent.
    await alice.locator('input[type="file"]').setInputFiles({
      name: "notes.txt",
      mimeType: "text/plain",
      buffer: Buffer.from("not for bob"),
    });
    await alice.getByRole("button", { name: "Remove notes.txt" }).click();
    const sendButton = alice.getByRole("button", { name: "Send", exact: true });
    await alice.waitForFunction(
      () => !document.querySelector('.composer button[type="submit"]')?.disabled,
      null,
      { timeout: TIMEOUT },
    );
    await sendButton.click();
    const thumbnail = bob.getByRole("img", { name: "map.png" });
    await thumbnail.waitFor({ timeout: TIMEOUT });
    await bob.waitForFunction(
      () => {
        const image = document.querySelector('.attachments img[alt="map.png"]');
        return image && image.complete && image.naturalWidth === 320 && image.naturalHeight === 240;
      },
      null,
      { timeout: TIMEOUT },
    );
    const bobsFiles = await bob.locator(".message", { has: thumbnail }).locator(".attachments > li").count();
    if (bobsFiles !== 1) throw new Error(`bob got ${bobsFiles} files, expected the picture alone`);
    await bob.screenshot({ path: join(results, "picture-phone.png") });
    const aliceToken = await alice.evaluate(() => JSON.parse(localStorage.getItem("chatcluster.session")).token);
    const carolToken = await signUp(base, "carol");
    const history = await (
      await fetch(`${base}/api/rooms/${await directRoomId(base, aliceToken)}/messages?limit=10`, {
        headers: { authorization: `Bearer ${aliceToken}` },
      })
    ).json();
    const picture = history.messages.flatMap((m) => m.attachments ?? []).find((f) => f.filename === "map.png");
    if (!picture || picture.content_type !== "image/png") throw new Error(`the picture is not in history: ${JSON.stringify(history)}`);
    for (const path of [`/api/attachments/${picture.id}`, `/api/attachments/${picture.id}/thumbnail`]) {
      const refused = await fetch(base + path, { headers: { authorization: `Bearer ${carolToken}` } });
      if (refused.status !== 404) throw new Error(`carol, no member, got ${path}: ${refused.status}`);
      const served = await fetch(base + path, { headers: { authorization: `Bearer ${aliceToken}` } });
      if (served.status !== 200) throw new Error(`alice could not get ${path}: ${served.status}`);
    }
    console.log("a picture reached bob as a thumbnail; carol, no member, was refused it");

    // Alice gives herself a display name and a picture; Bob sees both on her
    // messages at once.
    await alice.getByRole("button", { name: "Profile", exact: true }).click();
    const profile = alice.getByRole("dialog", { name: "Your profile" });
    await profile.getByLabel("Display name").fill("Alice Liddell");
    await profile.getByLabel("Picture").setInputFiles({ name: "me.png", mimeType: "image/png", buffer: png(200, 100) });
    await profile.locator(".profile-preview .avatar img").waitFor({ timeout: TIMEOUT });
    await alice.screenshot({ path: join(results, "profile.png") });
    await profile.getByRole("button", { name: "Save profile" }).click();
    await profile.waitFor({ state: "detached", timeout: TIMEOUT });
    const hersToBob = bob.locator(".message", { hasText: "just between us" });
    await hersToBob.locator(".author", { hasText: "Alice Liddell" }).waitFor({ timeout: TIMEOUT });
    await hersToBob.locator(".avatar img").waitFor({ timeout: TIMEOUT });
    console.log("alice's display name and picture reached bob, live");

    // Alice renames the room; Bob's list follows without a reload.
    await alice.getByRole("navigation", { name: "Rooms" }).getByRole("button", { name: /Launch/ }).click();
    await alice.getByRole("button", { name: "Rename" }).click();
    await alice.getByLabel("Room name").fill("Launch day");
    await alice.getByRole("button", { name: "Save" }).click();
    await alice.getByRole("heading", { name: "Launch day" }).waitFor({ timeout: TIMEOUT });
    await bob.getByRole("button", { name: "Back to rooms" }).click();
    await rooms.getByRole("button", { name: /Launch day/ }).waitFor({ timeout: TIMEOUT });
    console.log("a renamed room was renamed live in bob's list");
    // One name everywhere: his direct room with her is named after her display name too.
    await rooms.getByRole("button", { name: /^@ Alice Liddell/ }).waitFor({ timeout: TIMEOUT });
    console.log("bob's direct room with alice shows her display name");

    // Bob writes in the direct room while Alice looks at another: her tab's
    // title counts it.
    await direct.click();
    await send(bob, "are you there?");
    await alice.waitForFunction(() => document.title === "(1) chatcluster", null, { timeout: TIMEOUT });
    console.log("the unread count shows in the tab's title");

    // Alice mentions Bob in the room, completing his name from the
    // suggestions; Bob, reading the direct messages, sees a mention badge on
    // the room in his list.
    const box = alice.getByRole("textbox", { name: /^Message / });
    await box.fill("");
    await box.pressSequentially("@b");
    await alice.getByRole("option", { name: "@bob" }).waitFor({ timeout: TIMEOUT });
    await box.press("Enter");
    await box.pressSequentially("can you look?");
    if ((await box.inputValue()) !== "@bob can you look?") throw new Error(`completed to ${await box.inputValue()}`);
    await box.press("Enter");
    await bob.getByRole("button", { name: "Back to rooms" }).click();
    await rooms.getByRole("button", { name: /Launch day/ }).getByLabel("1 mention").waitFor({ timeout: TIMEOUT });
    console.log("a mention raised a badge in bob's list");

    // Bob searches; the hit shows the message as it is now, and opens its room.
    await bob.getByRole("searchbox", { name: "Search messages" }).fill("edited");
    await bob.getByRole("button", { name: "Search", exact: true }).click();
    const hit = bob.getByRole("button", { name: /sent while the server was down, then edited/ });
    await hit.waitFor({ timeout: TIMEOUT });
    if ((await hit.locator("mark").allTextContents()).join() !== "edited") throw new Error("the match is not marked");
    await hit.click();
    await bob.getByRole("heading", { name: "Launch day" }).waitFor({ timeout: TIMEOUT });
    console.log("a search found the edited message and opened its room");

    if (violations.length) throw new Error(`CSP violations:\n${violations.join("\n")}`);
    console.log("no Content-Security-Policy violation");

    // Every main screen, audited and compared with its baseline.
    const alicesRooms = alice.getByRole("navigation", { name: "Rooms" });
    await alicesRooms.getByRole("button", { name: /^# Launch day/ }).click();
    const openThread = alice.getByRole("complementary", { name: /^Thread of / });
    if (await openThread.count()) await openThread.getByRole("button", { name: "Close the thread" }).click();
    await check(alice, "room-desktop", results);
    await messageAction(alice, alice.locator(".message", { hasText: "Hello Bob" }), "1 reply");
    await openThread.locator(".reply").first().waitFor({ timeout: TIMEOUT });
    await check(alice, "thread-desktop", results);
    await openThread.getByRole("button", { name: "Close the thread" }).click();
    await alice.getByRole("button", { name: "Profile" }).click();
    await check(alice, "profile-desktop", results);
    await alice.keyboard.press("Escape");
    await alice.getByRole("searchbox", { name: "Search messages" }).fill("edited");
    await alice.getByRole("button", { name: "Search", exact: true }).click();
    await alice.getByRole("button", { name: /sent while the server was down, then edited/ }).waitFor({ timeout: TIMEOUT });
    await check(alice, "search-desktop", results);
    await check(bob, "room-phone", results);
    await messageAction(bob, bob.locator(".message", { hasText: "Hello Bob" }), "1 reply");
    const bobsOpenThread = bob.getByRole("complementary", { name: /^Thread of / });
    await bobsOpenThread.locator(".reply").first().waitFor({ timeout: TIMEOUT });
    await check(bob, "thread-phone", results);
    await bobsOpenThread.getByRole("button", { name: "Close the thread" }).click();
    await bob.getByRole("button", { name: "Back to rooms" }).click();
    await check(bob, "rooms-phone", results);
    console.log(`every main screen passed axe-core and matched its baseline; screenshots in ${results}`);

    // Carol does it all with the keyboard alone: sign up, join, write, edit,
    // react, reply in a thread, start a direct message, search, set her name.
    const carol = await (await browser.newContext(desktop)).newPage();
    await carol.goto(base);
    await tabTo(carol, carol.getByRole("button", { name: "New here? Create an account" }), "the sign-up switch");
    await carol.keyboard.press("Enter");
    await tabTo(carol, carol.getByLabel("Username"), "the username field");
    await carol.keyboard.type("carol_k");
    await carol.keyboard.press("Tab");
    await carol.keyboard.type("carol_k@example.com");
    await carol.keyboard.press("Tab");
    await carol.keyboard.type("correct horse battery");
    await carol.keyboard.press("Enter");
    await connected(carol);
    await tabTo(carol, carol.getByRole("button", { name: "Join Launch day" }), "joining a public room");
    await carol.keyboard.press("Enter");
    await carol.getByRole("heading", { name: "Launch day" }).waitFor({ timeout: TIMEOUT });
    await tabTo(carol, carol.getByRole("textbox", { name: /^Message / }), "the composer");
    await carol.keyboard.type("typed without a mouse");
    await carol.keyboard.press("Enter");
    const sent = carol.locator(".message.mine:not(.pending)", { hasText: "typed without a mouse" });
    await sent.waitFor({ timeout: TIMEOUT });
    const typed = carol.locator(`.message[data-id="${await sent.getAttribute("data-id")}"]`);
    const act = async (name, message = typed) => {
      await tabTo(carol, message.getByRole("button", { name: "Message actions" }), "a message's actions");
      await carol.keyboard.press("Enter");
      await tabTo(carol, message.getByRole("button", { name, exact: true }), `the ${name} action`);
      await carol.keyboard.press("Enter");
    };
    await act("Edit");
    await carol.keyboard.press("Control+A");
    await carol.keyboard.type("typed and edited without a mouse");
    await carol.keyboard.press("Enter");
    await typed.getByText("(edited)").waitFor({ timeout: TIMEOUT });
    await act("React");
    await tabTo(carol, typed.getByRole("button", { name: "React with 🎉" }), "the emoji picker");
    await carol.keyboard.press("Enter");
    await typed.getByRole("button", { name: /^🎉 1/ }).waitFor({ timeout: TIMEOUT });
    await act("Reply");
    const carolsThread = carol.getByRole("complementary", { name: /^Thread of / });
    // The reply box has the focus as the thread opens.
    await carolsThread.getByRole("textbox", { name: "Reply in thread" }).waitFor({ timeout: TIMEOUT });
    await carol.keyboard.type("a reply by keyboard");
    await carol.keyboard.press("Enter");
    await carolsThread.locator(".reply", { hasText: "a reply by keyboard" }).waitFor({ timeout: TIMEOUT });
    await tabTo(carol, carolsThread.getByRole("button", { name: "Close the thread" }), "closing the thread");
    await carol.keyboard.press("Enter");
    await tabTo(carol, carol.getByRole("textbox", { name: /^Message / }), "the composer");
    await carol.keyboard.type("a slip of the keyboard");
    await carol.keyboard.press("Enter");
    const slip = carol.locator(".message.mine:not(.pending)", { hasText: "a slip of the keyboard" });
    await slip.waitFor({ timeout: TIMEOUT });
    const slipped = carol.locator(`.message[data-id="${await slip.getAttribute("data-id")}"]`);
    await act("Delete", slipped);
    await tabTo(carol, slipped.getByRole("button", { name: "Yes, delete" }), "confirming the deletion");
    await carol.keyboard.press("Enter");
    await slipped.getByText("This message was deleted.").waitFor({ timeout: TIMEOUT });
    await tabTo(carol, carol.getByRole("button", { name: "New room" }), "a new room");
    await carol.keyboard.press("Enter");
    await carol.keyboard.type("Keyboard club");
    await carol.keyboard.press("Enter");
    await carol.getByRole("heading", { name: "Keyboard club" }).waitFor({ timeout: TIMEOUT });
    await tabTo(carol, carol.getByRole("button", { name: "New direct message" }), "a new direct message");
    await carol.keyboard.press("Enter");
    await carol.keyboard.type("alice");
    await carol.keyboard.press("Enter");
    await carol.getByRole("heading", { name: "Alice Liddell" }).waitFor({ timeout: TIMEOUT });
    await tabTo(carol, carol.getByRole("searchbox", { name: "Search messages" }), "the search box");
    await carol.keyboard.type("mouse");
    await carol.keyboard.press("Enter");
    const found = carol.getByRole("button", { name: /typed and edited without a mouse/ });
    await tabTo(carol, found, "a search result");
    await carol.keyboard.press("Enter");
    await carol.getByRole("heading", { name: "Launch day" }).waitFor({ timeout: TIMEOUT });
    await tabTo(carol, carol.getByRole("button", { name: "Profile" }), "the profile");
    await carol.keyboard.press("Enter");
    await carol.keyboard.type("Carol Keys");
    await carol.keyboard.press("Enter");
    await carol.getByRole("dialog").waitFor({ state: "detached", timeout: TIMEOUT });
    await carol.locator(".status-bar", { hasText: "Carol Keys" }).waitFor({ timeout: TIMEOUT });
    console.log("carol did every flow with the keyboard alone (join, write, edit, react, reply, delete, new room, " +
      "direct message, search, profile), the focus always visible");
  } catch (error) {
    console.error(`server log:\n${server.logs}`);
    throw error;
  } finally {
    await browser.close();
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().then(
  () => console.log("e2e: ok"),
  (error) => {
    console.error("e2e: FAILED:", error);
    process.exit(1);
  },
);
