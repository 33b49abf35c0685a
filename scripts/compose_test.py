"""Docker Compose for real: `docker compose up --scale server=3 --wait` with
compose.yaml (and deploy/compose/standin.yaml: the images of
scripts/images.sh, the MongoDB stand-in), then what a user does through
HAProxy: register, log in, create and join a room, two people on different
servers chat, history; then 1,000 WebSocket connections through the
balancer with every message delivered (chat-bench --require-complete); then
`docker compose stop`: every container ends on its stop signal (none killed
after the grace period), and `down --volumes` leaves nothing.

Runs a private Docker engine (the one scripts/images.sh builds into, data
under .cache/docker, so the images are already there) without iptables,
IP forwarding or a default bridge: Compose's networks are bridges of its own
on 10.252.0.0/16, the published port is docker-proxy on loopback. The engine
is stopped by PID, its mounts removed, whatever happens. Needs root.

    .venv/bin/python scripts/compose_test.py   (after scripts/images.sh)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / ".cache/docker"
SOCKET = DOCKER_DIR / "docker.sock"
COMPOSE = Path(sys.executable).parent / "docker-compose"
PROJECT = "chatcluster-test"
REGISTRY = "localhost:5000"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


class Engine:
    """dockerd, as scripts/images.sh runs it, but with Compose's networks."""

    def __init__(self) -> None:
        self.log = open(DOCKER_DIR / "dockerd-compose.log", "w")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(DOCKER_DIR / "data"), "--exec-root", str(DOCKER_DIR / "exec"),
             "--host", f"unix://{SOCKET}", "--pidfile", str(DOCKER_DIR / "docker.pid"),
             "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
             "--ip-forward=false", "--default-address-pool", "base=10.252.0.0/16,size=24"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while subprocess.run(["docker", "version"], env=self.env(), capture_output=True).returncode != 0:
            if time.time() > deadline or self.process.poll() is not None:
                self.stop()
                sys.exit(f"dockerd did not start: {DOCKER_DIR / 'dockerd-compose.log'}")
            time.sleep(0.25)

    @staticmethod
    def env() -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
        for mount in sorted((m for m in mounts.split() if m.startswith(f"{DOCKER_DIR}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        self.log.close()


class Compose:
    def __init__(self) -> None:
        self.env = {
            **Engine.env(),
            # Host port 0: the engine picks a free one as it binds, so no
            # other process (a load generator's outgoing connections) can
            # take it between a pick and the bind; read back after `up`.
            "CHAT_HTTP_PORT": "0",
            "CHAT_SERVER_IMAGE": f"{REGISTRY}/chat-server:test",
            "CHAT_REDIS_IMAGE": f"{REGISTRY}/redis:test",
            "CHAT_HAPROXY_IMAGE": f"{REGISTRY}/haproxy:test",
            "CHAT_MONGODB_IMAGE": f"{REGISTRY}/mongodb-standin:test",
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(COMPOSE), "-p", PROJECT, "-f", str(ROOT / "compose.yaml"),
                   "-f", str(ROOT / "deploy/compose/standin.yaml"), *args]
        result = subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed:\n{result.stdout}{result.stderr}\n"
                               + self.logs())
        return result

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "30", check=False).stdout


def call(base: str, method: str, path: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def person(base: str, name: str) -> dict:
    status, body = call(base, "POST", "/api/auth/register",
                        body={"username": name, "email": f"{name}@example.com", "password": "password123"})
    assert status == 201, f"registering {name}: {status} {body}"
    status, body = call(base, "POST", "/api/auth/login",
                        body={"email": f"{name}@example.com", "password": "password123"})
    assert status == 200, f"logging {name} in: {status} {body}"
    return {"name": name, "token": body["token"], "id": body["user"]["id"]}


async def next_of(socket, kind: str) -> dict:
    async with asyncio.timeout(15):
        while True:
            frame = json.loads(await socket.recv())
            if frame.get("type") == kind:
                return frame


async def server_of(base: str, who: dict) -> str:
    """The server (container hostname) holding `who`'s one live socket."""
    deadline = time.time() + 20
    while time.time() < deadline:
        status, body = call(base, "GET", "/api/sessions", who["token"])
        sessions = body.get("sessions", []) if status == 200 else []
        if len(sessions) == 1:
            return sessions[0]["pod"]
        await asyncio.sleep(0.25)
    raise AssertionError(f"{who['name']}'s session never listed: {body}")


async def seed_flow(base: str) -> None:
    """The README's first steps, through HAProxy, with Alice's and Bob's
    sockets on different servers."""
    alice, bob = person(base, "alice"), person(base, "bob")
    status, room = call(base, "POST", "/api/rooms", alice["token"],
                        {"name": "General", "description": "compose", "is_private": False})
    assert status == 201, room
    status, body = call(base, "POST", f"/api/rooms/{room['id']}/join", bob["token"])
    assert status < 300, body
    ws = base.replace("http://", "ws://")
    alice_socket = await websockets.connect(f"{ws}/ws?token={alice['token']}&room_id={room['id']}")
    alice_server = await server_of(base, alice)
    # leastconn sends a new connection to a server with fewer: try a few.
    for _ in range(10):
        bob_socket = await websockets.connect(f"{ws}/ws?token={bob['token']}&room_id={room['id']}")
        bob_server = await server_of(base, bob)
        if bob_server != alice_server:
            break
        await bob_socket.close()
        await asyncio.sleep(0.5)
    assert bob_server != alice_server, f"both sockets on {alice_server}"
    print(f"alice on {alice_server}, bob on {bob_server}")

    for sender, receiver, content in ((alice_socket, bob_socket, "hello from alice"),
                                      (bob_socket, alice_socket, "hello from bob")):
        await sender.send(json.dumps({"type": "message", "room_id": room["id"], "content": content,
                                      "client_id": f"compose-{content}"}))
        ack = await next_of(sender, "ack")
        while True:
            received = await next_of(receiver, "text")
            if received["content"] == content:
                break
        assert received["seq"] == ack["seq"], (received, ack)
    await alice_socket.close()
    await bob_socket.close()

    deadline = time.time() + 30
    while True:
        status, body = call(base, "GET", f"/api/rooms/{room['id']}/messages?limit=50", bob["token"])
        contents = [m["content"] for m in body.get("messages", []) if m.get("type") == "text"]
        if contents == ["hello from alice", "hello from bob"] or time.time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert contents == ["hello from alice", "hello from bob"], (status, body)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("compose_test: must run as root (a Docker engine)")
    bench = ROOT / "target/debug/chat-bench"
    if not bench.exists():
        sys.exit("compose_test: target/debug/chat-bench missing: cargo build first")
    engine = Engine()
    compose = Compose()
    base = ""
    try:
        compose("down", "--volumes", "--remove-orphans", check=False)
        say("docker compose up --scale server=3 --wait")
        started = time.time()
        compose("up", "--detach", "--pull", "never", "--no-build", "--scale", "server=3", "--wait",
                "--wait-timeout", "180")
        print(f"up and healthy in {time.time() - started:.1f} s")
        # "0.0.0.0:PORT" (and "[::]:PORT"): the port the engine chose.
        published = compose("port", "lb", "8080").stdout.split()
        assert published, "the load balancer has no published port"
        base = f"http://127.0.0.1:{published[0].rsplit(':', 1)[-1]}"
        servers = compose("ps", "--format", "json", "server").stdout
        servers = [json.loads(line) for line in servers.splitlines() if line.strip()]
        assert len(servers) == 3 and all(s["Health"] == "healthy" for s in servers), servers

        say("register, log in, a room, two people on different servers, history: through HAProxy")
        asyncio.run(seed_flow(base))

        say("1,000 WebSocket connections through HAProxy, every message delivered")
        subprocess.run([str(bench), "--url", base, "--connections", "1000", "--rooms", "50", "--users", "20",
                        "--rate", "100", "--duration", "10", "--require-complete"], check=True)

        say("docker compose stop: every container ends on its stop signal")
        ids = compose("ps", "--all", "--quiet").stdout.split()
        started = time.time()
        compose("stop")
        print(f"stopped in {time.time() - started:.1f} s")
        states = json.loads(subprocess.run(["docker", "inspect", *ids], env=Engine.env(), capture_output=True,
                                           text=True, check=True).stdout)
        killed = [s["Name"] for s in states if s["State"]["ExitCode"] == 137 or s["State"]["OOMKilled"]]
        assert not killed, f"killed after the grace period instead of stopping: {killed}"
    except BaseException:
        print(compose.logs(), file=sys.stderr)
        raise
    finally:
        compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        left = subprocess.run(["docker", "ps", "-aq"], env=Engine.env(), capture_output=True, text=True).stdout
        engine.stop()
        if left.strip():
            sys.exit(f"containers left after down: {left}")
    say("compose: passed")


if __name__ == "__main__":
    main()
