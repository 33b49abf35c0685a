"""Soak: two chat servers on one Redis and the MongoDB stand-in while clients
churn for a long time (sign in, connect to either pod, join, talk, leave,
disconnect, again), sampling every 10 s each server's memory (RSS), open
descriptors and threads, Redis's memory and the persist backlog. After the
warm-up each must stay flat: the median of the last three samples within 10%
of the first three after warm-up (plus a small absolute allowance for tiny
values). A leak of memory, descriptors, tasks or Redis keys fails it.

  .venv/bin/python bench/soak.py --minutes 60 --binary target/release/chat-server \\
      --json bench/results/soak.json --svg docs/soak.svg
  .venv/bin/python bench/soak.py --minutes 2      # the test command's short run

Every acked message must also be stored: the run fails if the history holds
fewer messages than were acked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Processes, chat_servers, mongodb, redis  # noqa: E402

SAMPLE_EVERY = 10.0
AGENTS = 40
ROOMS = 8
PASSWORD = "soak-password-1"
# Allowances on top of 10% for values too small for a percentage to mean much.
SLACK = {"rss_kib": 4096, "fds": 16, "threads": 2, "redis_kib": 1024, "backlog": 200, "connections": 10}


# The agents pose as clients behind an Ingress on 127.0.0.1, each with its own
# address, so per-address limits see them apart; every other limit is the
# default. Dedupe keys live this long in Redis (a day by default): a short
# window lets Redis's memory reach its steady state in the warm-up, so what is
# measured after it is everything else.
SOAK_ENV = {"CHAT_TRUSTED_PROXIES": "127.0.0.1", "CHAT_DEDUPE_TTL_SECS": "60"}


def call(method: str, url: str, body: dict | None = None, token: str | None = None,
         forwarded_for: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body or {}).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if forwarded_for:
        request.add_header("X-Forwarded-For", forwarded_for)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text) if text.startswith("{") else {}


class Stats:
    def __init__(self) -> None:
        self.sign_ins = self.refreshes = self.connections = self.acked = self.retries = 0
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def rest(*args, **kwargs) -> tuple[int, dict]:
    return await asyncio.to_thread(call, *args, **kwargs)


async def agent(i: int, bases: list[str], rooms: list[str], deadline: float, stats: Stats) -> None:
    """One person: signs in, talks a while on one pod, leaves, and again."""
    rng = random.Random(i)
    address = f"10.{i // 250}.{i % 250}.1"
    email = f"soak{i}@example.com"
    sent = 0
    session: dict | None = None
    while time.monotonic() < deadline:
        base = rng.choice(bases)
        # Sign in now and then (sign-ins are rate limited per account and
        # address, as for a person), and rotate the refresh token more often.
        if session is None or rng.random() < 0.05:
            status, answer = await rest("POST", f"{base}/api/auth/login", {"email": email, "password": PASSWORD},
                                        forwarded_for=address)
            stats.sign_ins += status == 200
        elif rng.random() < 0.3:
            status, answer = await rest("POST", f"{base}/api/auth/refresh",
                                        {"refresh_token": session["refresh_token"]})
            stats.refreshes += status == 200
        else:
            status, answer = 200, session
        if status != 200:
            stats.error(f"sign-in {status}")
            session = None
            await asyncio.sleep(1 + rng.random())
            continue
        session = answer
        token = session["token"]
        room = rng.choice(rooms)
        if rng.random() < 0.2:
            # Leave the room over REST and come back: system messages, membership churn.
            await rest("POST", f"{base}/api/rooms/{room}/leave", token=token)
        await rest("POST", f"{base}/api/rooms/{room}/join", token=token)
        try:
            url = base.replace("http://", "ws://") + f"/ws?token={token}"
            async with websockets.connect(url, max_size=1 << 20, open_timeout=30) as ws:
                stats.connections += 1
                await ws.send(json.dumps({"type": "join", "room_id": room}))
                await until(ws, lambda f: f.get("type") == "joined")
                for _ in range(rng.randint(3, 12)):
                    sent += 1
                    client_id = f"a{i}-{sent}"
                    frame = {"type": "message", "room_id": room, "content": f"soak {client_id}", "client_id": client_id}
                    while True:
                        await ws.send(json.dumps(frame))
                        answer = await until(ws, lambda f: f.get("type") == "error" or
                                             (f.get("type") == "ack" and f.get("client_id") == client_id))
                        if answer["type"] == "ack":
                            stats.acked += 1
                            break
                        stats.retries += 1
                        await asyncio.sleep(float(answer.get("retry_after") or 0.2))
                    await asyncio.sleep(rng.uniform(0.1, 0.6))
                if rng.random() < 0.5:
                    await ws.send(json.dumps({"type": "leave", "room_id": room}))
                    await until(ws, lambda f: f.get("type") == "left")
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as error:
            stats.error(type(error).__name__)
        await asyncio.sleep(rng.uniform(0, 1.0))


async def until(ws, wanted) -> dict:
    """The next frame `wanted` accepts, within 30 s."""
    async with asyncio.timeout(30):
        while True:
            frame = json.loads(await ws.recv())
            if wanted(frame):
                return frame


def proc_sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def scrape(base: str, name: str) -> float:
    total = 0.0
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                key = line.split()[0]
                if key == name or key.startswith(name + "{"):
                    total += float(line.split()[1])
    return total


def redis_used_kib(port: int) -> int:
    info = subprocess.run(["redis-cli", "-p", str(port), "INFO", "memory"], capture_output=True, text=True).stdout
    for line in info.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1]) // 1024
    return 0


async def sampler(servers_: list[tuple[str, int]], redis_port: int, started: float, deadline: float,
                  samples: list[dict]) -> None:
    while time.monotonic() < deadline:
        await asyncio.sleep(SAMPLE_EVERY)
        sample: dict = {"t": round(time.monotonic() - started)}
        for i, (base, pid) in enumerate(servers_):
            for key, value in proc_sample(pid).items():
                sample[f"{key}/{i}"] = value
            sample[f"connections/{i}"] = scrape(base, "chat_ws_connections")
        sample["backlog"] = scrape(servers_[0][0], "chat_persist_backlog")
        sample["redis_kib"] = redis_used_kib(redis_port)
        samples.append(sample)
        print(json.dumps(sample), flush=True)


def flatness(samples: list[dict], warm_up: float) -> list[dict]:
    """Per series: the first three samples after warm-up against the last three."""
    after = [s for s in samples if s["t"] >= warm_up]
    verdicts = []
    for key in [k for k in samples[0] if k != "t"]:
        values = [s[key] for s in after]
        if len(values) < 4:
            continue
        baseline = statistics.median(values[:3])
        final = statistics.median(values[-3:])
        allowance = baseline * 0.10 + SLACK[key.split("/")[0]]
        verdicts.append({"series": key, "baseline": baseline, "final": final, "peak": max(values),
                         "flat": final <= baseline + allowance})
    return verdicts


def svg(samples: list[dict], path: Path) -> None:
    """One small plot per measure: each server's RSS, descriptors and threads,
    Redis's memory and the persist backlog over time."""
    panels = [("RSS (MiB)", "rss_kib", 1 / 1024), ("open descriptors", "fds", 1), ("threads", "threads", 1),
              ("WebSocket connections", "connections", 1), ("Redis used memory (MiB)", "redis_kib", 1 / 1024),
              ("persist backlog (messages)", "backlog", 1)]
    width, height, pad = 360, 170, 34
    colours = ["#1f77b4", "#d62728", "#2ca02c"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * 3}" height="{height * 2}" '
             f'font-family="sans-serif" font-size="11">']
    end = max(s["t"] for s in samples) or 1
    for index, (title, key, scale) in enumerate(panels):
        x0, y0 = (index % 3) * width, (index // 3) * height
        series = sorted({k for k in samples[0] if k.split("/")[0] == key})
        top = max(max(s[k] * scale for s in samples) for k in series) * 1.15 or 1
        parts.append(f'<text x="{x0 + pad}" y="{y0 + 14}">{title} (max {top / 1.15:.1f})</text>')
        parts.append(f'<rect x="{x0 + pad}" y="{y0 + 20}" width="{width - 2 * pad}" height="{height - 50}" '
                     f'fill="none" stroke="#999"/>')
        for n, k in enumerate(series):
            points = " ".join(
                f"{x0 + pad + (s['t'] / end) * (width - 2 * pad):.1f},"
                f"{y0 + 20 + (height - 50) * (1 - s[k] * scale / top):.1f}" for s in samples)
            parts.append(f'<polyline fill="none" stroke="{colours[n % 3]}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{x0 + pad}" y="{y0 + height - 16}">0 to {end // 60} min</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--binary", type=Path, default=ROOT / "target" / "debug" / "chat-server")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--svg", type=Path)
    args = parser.parse_args()
    duration = args.minutes * 60
    warm_up = max(60.0, duration / 4)
    with Processes() as p:
        redis_port = redis(p)
        mongodb_uri = mongodb(p)
        pods = chat_servers(p, 2, redis_port, mongodb_uri, binary=args.binary, extra_env=SOAK_ENV, name="soak")
        bases = [base for base, _ in pods]
        owner = f"{bases[0]}/api"
        for i in range(AGENTS + 1):
            status, _ = call("POST", f"{owner}/auth/register",
                             {"username": f"soak{i}", "email": f"soak{i}@example.com", "password": PASSWORD},
                             forwarded_for=f"10.{i // 250}.{i % 250}.1")
            assert status == 201, status
        _, admin = call("POST", f"{owner}/auth/login", {"email": f"soak{AGENTS}@example.com", "password": PASSWORD},
                        forwarded_for="10.99.0.1")
        rooms = [call("POST", f"{owner}/rooms", {"name": f"soak {r}", "description": "", "is_private": False},
                      token=admin["token"])[1]["id"] for r in range(ROOMS)]
        stats = Stats()
        samples: list[dict] = []
        started = time.monotonic()
        deadline = started + duration
        await asyncio.gather(sampler(pods, redis_port, started, deadline, samples),
                             *(agent(i, bases, rooms, deadline, stats) for i in range(AGENTS)))
        # Every acked message is in the history once the persist workers catch
        # up (with a fresh token: the first one lapsed long ago in a long run).
        _, admin = call("POST", f"{owner}/auth/login", {"email": f"soak{AGENTS}@example.com", "password": PASSWORD},
                        forwarded_for="10.99.0.1")
        stored = 0
        wait_until = time.monotonic() + 60
        while time.monotonic() < wait_until:
            stored = 0
            for room in rooms:
                _, page = call("GET", f"{owner}/rooms/{room}/messages?limit=1", token=admin["token"])
                stored += page.get("total", 0)
            if stored >= stats.acked:
                break
            time.sleep(1)
        verdicts = flatness(samples, warm_up)
        report = {"minutes": args.minutes, "agents": AGENTS, "rooms": ROOMS, "sign_ins": stats.sign_ins, "refreshes": stats.refreshes,
                  "connections": stats.connections, "acked": stats.acked, "stored_including_system": stored,
                  "retries": stats.retries, "errors": stats.errors, "flatness": verdicts, "samples": samples}
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.svg:
        svg(samples, args.svg)
    failures = [v["series"] for v in verdicts if not v["flat"]]
    if failures:
        print(f"soak: FAILED: not flat after warm-up: {failures}", file=sys.stderr)
        return 1
    if stored < stats.acked:
        print(f"soak: FAILED: {stats.acked} acked, only {stored} stored", file=sys.stderr)
        return 1
    if sum(stats.errors.values()) > stats.connections // 20:
        print(f"soak: FAILED: too many errors: {stats.errors}", file=sys.stderr)
        return 1
    print(f"soak: ok: {stats.sign_ins} sign-ins, {stats.connections} connections, {stats.acked} messages acked")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
