"""Runs chatcluster and its peers through the same scenarios on this machine,
alternating, several times, and writes the medians and ratios. The peers:
Socket.IO with its Redis adapter (bench/peers/socketio), and Centrifugo on a
Redis engine, with history and recovery (`centrifugo-history`: a Lua script
per publication appends to a stream and publishes, as ours does) and without
(`centrifugo`), built from the Go module proxy into target/peers/ on first use.

  cargo build --release -p chat-server -p chat-bench
  .venv/bin/python bench/run.py [--repeats 3] [--quick] [--systems chatcluster,centrifugo-history]

Before and after a change: build the old commit's chat-server, then

  .venv/bin/python bench/run.py --scenarios efficiency --baseline /path/to/old/chat-server

runs the old build (`baseline`) alternating with this one instead of the
peer, prints the medians side by side and keeps summary.json as it is.

Each run starts its own processes on free ports (redis-server, SecantusDB as
the MongoDB stand-in for the two-instance cluster, chat-server, node) and
stops them after. Raw results go to bench/results/raw/ (ignored by git), the
summary to bench/results/summary.json, and bench/chart.py draws
docs/benchmarks.svg from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
PEER = ROOT / "bench" / "peers" / "socketio"
PEER_BIN = ROOT / "target" / "peers"
CENTRIFUGO_VERSION = "v6.9.1"
CENTRIFUGO_SECRET = "bench-centrifugo-secret-that-is-long-enough"
# Every system the runs compare, in the order they alternate.
SYSTEMS = ("chatcluster", "centrifugo-history", "centrifugo", "socketio")
PEERS = SYSTEMS[1:]
RESULTS = ROOT / "bench" / "results"
JWT_SECRET = "bench-secret-that-is-long-enough-for-hs256-signing"
MONGODB_DB = "bench"
# A chat-server built from another commit (--baseline), run as the system
# "baseline" through the same scenarios as this build.
BASELINE: Path | None = None
ALL_SCENARIOS = {"idle", "fanout", "throughput", "persistence", "efficiency", "scale", "ceiling", "stages", "indexes"}
# The indexes scenario: the server's message indexes added one at a time
# (chat-bench --baseline-indexes), ending with all of them.
INDEX_SETS = ("none", "seq", "seq,dedupe", "seq,dedupe,reply", "seq,dedupe,reply,change")
# Messages per persist batch at 1,000 msg/s on two instances (docs/benchmarks.md).
INDEX_BATCH = 90
# Scale-out (the `scale` scenario): chatcluster instances and Redis shards (1:
# one Redis; more: a Redis Cluster of that many masters).
SCALE = [(2, 1), (4, 1), (2, 3), (4, 3)]


def raise_descriptor_limit() -> None:
    """Servers get as many descriptors as the machine allows (one per socket)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class Processes:
    """Processes of one run, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []
        # The shared services' process ids by name ("redis", "mongodb"), for CPU.
        self.pids: dict[str, int] = {}
        # The port of the (single) Redis, for INFO.
        self.redis_port: int | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="chat-bench-"))

    def start(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{Path(args[0]).name}-{len(self.running)}.log", "w")
        process = subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=cwd,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=raise_descriptor_limit)
        self.running.append(process)
        return process

    def log_of(self, process: subprocess.Popen) -> str:
        index = self.running.index(process)
        logs = sorted(self.dir.glob(f"*-{index}.log"))
        return logs[0].read_text()[-2000:] if logs else ""

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.running):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis(p: Processes) -> int:
    port = free_port()
    process = p.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(p.dir)])
    p.pids["redis"] = process.pid
    p.redis_port = port
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def redis_cluster(p: Processes, masters: int = 3) -> list[int]:
    """A Redis Cluster of `masters` masters on loopback ports, each with AOF as
    `redis` has; their pids are recorded as redis-0, redis-1..."""
    ports = []
    for i in range(masters):
        port = free_port()
        node_dir = p.dir / f"redis-{port}"
        node_dir.mkdir()
        process = p.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(node_dir),
                           "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                           # The bus port is the port + 10000 unless given: not free, or past 65535.
                           "--cluster-port", str(free_port())])
        p.pids[f"redis-{i}"] = process.pid
        ports.append(port)
    for port in ports:
        deadline = time.time() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{port}" for port in ports], "--cluster-yes"],
                   check=True, capture_output=True)
    deadline = time.time() + 30
    while not all("cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                                                       capture_output=True, text=True).stdout for port in ports):
        if time.time() > deadline:
            raise RuntimeError("the redis cluster never became ok")
        time.sleep(0.1)
    return ports


def mongodb(p: Processes) -> str:
    port = free_port()
    storage = p.dir / "secantus"
    storage.mkdir()
    process = p.start([sys.executable, "-m", "secantus", "--port", str(port), "--storage-path", str(storage)])
    p.pids["mongodb"] = process.pid
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"mongodb://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("SecantusDB did not start")


# Every simulated client comes from 127.0.0.1 and the fixture gives each user
# many connections: the per-client limits would measure themselves.
UNLIMITED = {
    "CHAT_RATE_LIMIT_PER_SEC": "100000",
    "CHAT_RATE_LIMIT_BURST": "100000",
    "CHAT_SIGNUPS_PER_ADDRESS_PER_HOUR": "1000000",
    "CHAT_MAX_CONNECTIONS_PER_ADDRESS": "1000000",
    "CHAT_MAX_CONNECTIONS_PER_USER": "100000",
}


def is_chat(system: str) -> bool:
    """Whether `system` is a build of chatcluster (this one or the baseline)."""
    return system in ("chatcluster", "baseline")


def protocol_of(system: str) -> str:
    if is_chat(system):
        return "chat"
    return "centrifugo" if system.startswith("centrifugo") else "socketio"


def binary_of(system: str) -> Path:
    return BASELINE if system == "baseline" and BASELINE else RELEASE / "chat-server"


def chat_servers(p: Processes, count: int, redis_port: int | list[int] | None,
                 mongodb_uri: str | None, binary: Path = RELEASE / "chat-server",
                 extra_env: dict[str, str] = UNLIMITED, name: str = "bench") -> list[tuple[str, int]]:
    servers = []
    for i in range(count):
        port = free_port()
        env = {
            "CHAT_LISTEN_ADDR": f"127.0.0.1:{port}",
            "CHAT_DATA_DIR": str(p.dir / f"data-{i}"),
            "CHAT_POD_NAME": f"{name}-{i}",
            "RUST_LOG": "warn",
            "CHAT_WEB_DIR": str(p.dir / "no-web"),
            **extra_env,
        }
        if isinstance(redis_port, list):
            env["CHAT_REDIS_URL"] = ",".join(f"redis://127.0.0.1:{port}" for port in redis_port)
        elif redis_port:
            env["CHAT_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
        if mongodb_uri:
            env.update({"CHAT_MONGODB_URI": mongodb_uri, "CHAT_MONGODB_DB": MONGODB_DB, "CHAT_JWT_SECRET": JWT_SECRET})
        process = p.start([str(binary)], env)
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
        except RuntimeError:
            raise RuntimeError(f"chat-server did not start: {p.log_of(process)}")
        servers.append((f"http://127.0.0.1:{port}", process.pid))
    return servers


def peers(p: Processes, count: int, redis_port: int | None) -> list[tuple[str, int]]:
    if not (PEER / "node_modules").exists():
        print("installing the Socket.IO peer (npm ci)", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEER, check=True)
    servers = []
    for _ in range(count):
        port = free_port()
        env = {"PORT": str(port)}
        if redis_port:
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
        process = p.start(["node", "server.js"], env, cwd=PEER)
        wait_http(f"http://127.0.0.1:{port}/healthz")
        servers.append((f"http://127.0.0.1:{port}", process.pid))
    return servers


def centrifugo_binary() -> Path:
    """Centrifugo CENTRIFUGO_VERSION, built from the Go module proxy the first
    time (a few minutes) and kept in target/peers/."""
    binary = PEER_BIN / f"centrifugo-{CENTRIFUGO_VERSION}"
    if not binary.exists():
        print(f"building Centrifugo {CENTRIFUGO_VERSION} from the Go module proxy", flush=True)
        with tempfile.TemporaryDirectory() as gobin:
            subprocess.run(["go", "install", "-trimpath", f"github.com/centrifugal/centrifugo/v6@{CENTRIFUGO_VERSION}"],
                           env={**os.environ, "GOBIN": gobin}, check=True)
            PEER_BIN.mkdir(parents=True, exist_ok=True)
            shutil.move(Path(gobin) / "centrifugo", binary)
    return binary


def centrifugo_config(port: int, redis_port: int | None, history: bool) -> dict:
    """One Centrifugo node: clients authenticate with an HS256 token, may
    subscribe to any channel and publish into the ones they are subscribed to
    (as a member posts into a room); the Redis engine when there is a Redis.
    With history, each channel keeps its last 1,000 publications (as our
    resume buffer does) and resubscribing clients recover what they missed."""
    channel = {"allow_subscribe_for_client": True, "allow_publish_for_subscriber": True}
    if history:
        channel |= {"history_size": 1000, "history_ttl": "24h", "force_recovery": True}
    config = {
        "log": {"level": "error"},
        "http_server": {"address": "127.0.0.1", "port": port},
        "client": {"token": {"hmac_secret_key": CENTRIFUGO_SECRET}, "allowed_origins": ["*"]},
        "channel": {"without_namespace": channel},
        "health": {"enabled": True},
    }
    if redis_port:
        config["engine"] = {"type": "redis", "redis": {"address": [f"redis://127.0.0.1:{redis_port}"]}}
    return config


def centrifugo(p: Processes, count: int, redis_port: int | None, history: bool) -> list[tuple[str, int]]:
    binary = centrifugo_binary()
    servers = []
    for i in range(count):
        port = free_port()
        config = p.dir / f"centrifugo-{i}.json"
        config.write_text(json.dumps(centrifugo_config(port, redis_port, history)))
        process = p.start([str(binary), "--config", str(config)])
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
        except RuntimeError:
            raise RuntimeError(f"centrifugo did not start: {p.log_of(process)}")
        servers.append((f"http://127.0.0.1:{port}", process.pid))
    return servers


def servers_of(p: Processes, system: str, count: int, redis_port: int | None) -> list[tuple[str, int]]:
    """`count` instances of a peer on one Redis (none: each on its own)."""
    if system == "socketio":
        return peers(p, count, redis_port)
    return centrifugo(p, count, redis_port, history=system == "centrifugo-history")


def metric(base: str, name: str) -> float | None:
    """One unlabelled sample from a server's /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def bench(servers: list[tuple[str, int]], protocol: str, **options) -> dict:
    args = [str(RELEASE / "chat-bench"), "--protocol", protocol]
    if protocol == "centrifugo":
        args += ["--centrifugo-secret", CENTRIFUGO_SECRET]
    for url, pid in servers:
        args += ["--url", url, "--server-pid", str(pid)]
    for key, value in options.items():
        for one in value if isinstance(value, list) else [value]:
            args += [f"--{key.replace('_', '-')}", str(one)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"chat-bench failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def scenario_idle(system: str, connections: int) -> dict:
    with Processes() as p:
        servers = (chat_servers(p, 1, None, None, binary_of(system)) if is_chat(system)
                   else servers_of(p, system, 1, None))
        return bench(servers, protocol_of(system),
                     connections=connections, rooms=100, users=20, rate=0, duration=5, source_ips=4)


FIRST_SECONDS = 10


def scenario_fanout(system: str, connections: int, rate: float, duration: float) -> dict:
    """The load on fresh servers for their first FIRST_SECONDS (every user's
    first posts, nothing cached yet), then on the same servers, warm, for
    `duration` (steady state, the figures the table shows)."""
    with Processes() as p:
        servers, _ = instances(p, system)
        load = dict(connections=connections, rooms=50, users=50, rate=rate)
        first = bench(servers, protocol_of(system), duration=FIRST_SECONDS, **load)
        # Then history pages of the rooms just written (the peer keeps none).
        extra = {"history_requests": 200} if is_chat(system) else {}
        result = bench(servers, protocol_of(system), duration=duration, **load, **extra)
    return result | {"first_p50_ms": first["p50_ms"], "first_p99_ms": first["p99_ms"],
                     "first_delivered": first["delivered"], "first_expected": first["expected"]}


def instances(p: Processes, system: str, count: int = 2, shards: int = 1) -> tuple[list[tuple[str, int]], list[str]]:
    """`count` instances of `system` sharing one Redis, or for chatcluster a
    Redis Cluster of `shards` masters (and the MongoDB stand-in), and the
    --cpu-pid arguments for those shared services."""
    redis_port = redis(p) if shards == 1 else redis_cluster(p, shards)
    servers = (chat_servers(p, count, redis_port, mongodb(p), binary_of(system)) if is_chat(system)
               else servers_of(p, system, count, redis_port))
    return servers, [f"{name}={pid}" for name, pid in p.pids.items()]


def scenario_efficiency(system: str, rate: float, connections: int, duration: float,
                        count: int = 2, shards: int = 1) -> dict:
    """CPU per delivery of the instances and CPU per message of Redis (each
    shard, and all of them) and of the MongoDB stand-in while messages flow,
    every room split over the instances."""
    with Processes() as p:
        servers, cpu = instances(p, system, count, shards)
        result = bench(servers, protocol_of(system), connections=connections,
                       rooms=50, users=50, rate=rate, duration=duration, cpu_pid=cpu)
    redis_cpu = {name: seconds for name, seconds in result["cpu_seconds"].items()
                 if name.startswith("redis") and seconds is not None}
    total = sum(redis_cpu.values())
    result["redis_cpu_us_per_message"] = sum(v for k, v in result["cpu_us_per_message"].items()
                                             if k.startswith("redis") and v is not None)
    # 50 rooms should spread over the shards: each one's part of Redis's CPU.
    result["shard_share"] = {name: seconds / total if total else None for name, seconds in redis_cpu.items()}
    return result


def latency_histogram(base: str, name: str) -> dict[float, float]:
    """A histogram's cumulative counts by upper bound (seconds) from /metrics."""
    buckets = {}
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + "_bucket"):
                bound = line.split('le="')[1].split('"')[0]
                buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.split()[1])
    return buckets


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding the q-quantile."""
    total = buckets.get(float("inf"), 0)
    return next((bound * 1000 for bound, count in sorted(buckets.items()) if total and count >= q * total), None)


def redis_info(port: int, section: str) -> dict[str, str]:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", section], capture_output=True, text=True).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def scenario_stages(system: str, rate: float, connections: int, duration: float,
                    pause_stand_in: bool = False) -> dict:
    """Where a message's time goes, at the efficiency load: the clients' p99,
    for chatcluster the pods' append (acceptance to Redis's answer, what the
    ack waits for) and hand-off (to the pod's recipients) histograms, and
    Redis's own time per script call (INFO latencystats). With
    `pause_stand_in` the MongoDB stand-in is stopped (SIGSTOP) once a second
    of load has been appended, and let go after: acks and deliveries do not
    wait for the database (the persist stream holds the backlog), so the
    difference is what the stand-in's CPU, taken from the same 2 cores,
    costs everyone else."""
    with Processes() as p:
        servers, cpu = instances(p, system)
        port = p.redis_port
        names = ("chat_append_latency_seconds", "chat_delivery_latency_seconds") if is_chat(system) else ()
        before = {n: [latency_histogram(url, n) for url, _ in servers] for n in names}
        subprocess.run(["redis-cli", "-p", str(port), "CONFIG", "RESETSTAT"], capture_output=True, check=True)
        stop = threading.Event()

        def pause_when_loaded() -> None:
            while not stop.wait(0.2):
                calls = redis_info(port, "commandstats").get("cmdstat_evalsha", "calls=0").split(",")[0]
                if int(calls.removeprefix("calls=")) > rate:
                    os.kill(p.pids["mongodb"], signal.SIGSTOP)
                    return

        pauser = threading.Thread(target=pause_when_loaded)
        if pause_stand_in:
            pauser.start()
        try:
            result = bench(servers, protocol_of(system), connections=connections, rooms=50, users=50,
                           rate=rate, duration=duration, cpu_pid=cpu)
        finally:
            stop.set()
            if pause_stand_in:
                pauser.join()
                os.kill(p.pids["mongodb"], signal.SIGCONT)
        latency = redis_info(port, "latencystats").get("latency_percentiles_usec_evalsha", "")
        stages = {f"redis_script_{k.replace('.', '')}_us": float(v)
                  for k, v in (part.split("=") for part in latency.split(",") if "=" in part)}
        for name in names:
            after = [latency_histogram(url, name) for url, _ in servers]
            merged = {bound: sum(a[bound] - b.get(bound, 0) for a, b in zip(after, before[name]))
                      for bound in after[0]}
            stage = "append" if "append" in name else "handoff"
            stages |= {f"{stage}_p50_ms": bucket_quantile(merged, 0.5), f"{stage}_p99_ms": bucket_quantile(merged, 0.99)}
    timeline = result.get("timeline") or []
    # After the first 3 s (the pause comes about a second in): deliveries over 10 ms.
    stages["slow_after_3s"] = sum(second[1] for second in timeline[3:])
    return result | stages


CEILING_P99_MS = 25


CEILING_P99_MS = 25


def scenario_ceiling(system: str, rates: list[float], connections: int, duration: float,
                     count: int = 2, shards: int = 1) -> dict:
    """The highest of `rates` that `count` instances sustain with p99 at most
    CEILING_P99_MS and every message delivered, trying them in turn."""
    steps = []
    with Processes() as p:
        servers, cpu = instances(p, system, count, shards)
        for rate in rates:
            result = bench(servers, protocol_of(system), connections=connections,
                           rooms=50, users=50, rate=rate, duration=duration, cpu_pid=cpu)
            steps.append({k: result[k] for k in ["rate", "p99_ms", "delivered", "expected", "server_cpu_us_per_delivery",
                                                 "server_user_cpu_us_per_delivery"]})
            print(f"  ceiling {system} x{count} on {shards} shard(s) {rate:>6.0f}/s: p99 {result['p99_ms']:.2f} ms, "
                  f"{result['delivered']}/{result['expected']} delivered", flush=True)
            if result["p99_ms"] > CEILING_P99_MS or result["delivered"] < result["expected"]:
                break
    sustained = [s["rate"] for s in steps if s["p99_ms"] <= CEILING_P99_MS and s["delivered"] >= s["expected"]]
    return {"sustained_rate": max(sustained, default=None), "steps": steps}


PERSIST_BATCH = 500  # messages waiting: enough that the persist worker, not the load, sets the pace


def scenario_persistence(rate: float, duration: float, baseline_seconds: float) -> dict:
    """The persist pipeline's rate against the raw batch-insert rate of the same
    MongoDB server. A load faster than MongoDB builds a backlog in the Redis
    stream; once the load stops, the pipeline drains it on an otherwise idle
    machine. The pipeline's rate is taken while at least a full batch was
    waiting (then nothing but it limits). The raw insert_many baseline (same
    driver, document shape, index and batch size, one batch at a time) runs on
    the same idle machine twice: before, into an empty scratch collection, and
    after, into the server's own collection, as big as when the pipeline
    drained it. The ratio is against the latter, the like-for-like one."""
    with Processes() as p:
        redis_port, uri = redis(p), mongodb(p)
        before = bench_baseline(uri, baseline_seconds)
        servers = chat_servers(p, 1, redis_port, uri)
        base = servers[0][0]
        samples: list[tuple[float, float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    persisted, backlog = metric(base, "chat_persisted_messages_total"), metric(base, "chat_persist_backlog")
                    samples.append((time.monotonic(), persisted or 0.0, backlog or 0.0))
                except OSError as e:
                    print(f"  persistence: cannot read metrics: {e}", flush=True)
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = bench(servers, "chat", connections=20, rooms=20, users=20, rate=rate, duration=duration)
        load_ended = time.monotonic()
        deadline = load_ended + 300
        while time.monotonic() < deadline and (not samples or samples[-1][0] < load_ended or samples[-1][2] > 0):
            time.sleep(0.25)
        done.set()
        sampler.join()
        # Into the server's own collection, now as big as when it was drained.
        after = bench_baseline(f"{uri}/{MONGODB_DB}", baseline_seconds)
    drain = [s for s in samples if s[0] >= load_ended]
    persisted = seconds = 0.0
    for (t0, p0, b0), (t1, p1, _) in zip(drain, drain[1:]):
        if b0 >= PERSIST_BATCH:
            persisted += p1 - p0
            seconds += t1 - t0
    raw = after["inserts_per_sec"]
    pipeline = persisted / seconds if seconds else None
    return {
        "offered_rate": rate, "sent": load["sent"], "acked": load["acked"],
        "peak_backlog": max((s[2] for s in samples), default=0),
        "persisted_total": samples[-1][1] if samples else 0,
        "pipeline_per_sec": pipeline, "measured_over_s": seconds,
        "raw_insert_per_sec_before": before["inserts_per_sec"], "raw_insert_per_sec_after": after["inserts_per_sec"],
        "documents_when_drained": after["documents_before"],
        "ratio": pipeline / raw if pipeline else None,
    }


def bench_baseline(uri: str, seconds: float, *options: str) -> dict:
    result = subprocess.run([str(RELEASE / "chat-bench"), "--insert-baseline", uri, "--duration", str(seconds),
                             *options], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"chat-bench --insert-baseline failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def scenario_indexes(seconds: float, batch: int) -> list[dict]:
    """What each index of the messages collection costs the MongoDB stand-in
    per document: batches of the persist worker's size (at 1,000 msg/s) into
    a fresh stand-in with the server's message indexes added one at a time,
    its CPU read around the inserts."""
    results = []
    for indexes in INDEX_SETS:
        with Processes() as p:
            uri = mongodb(p)
            result = bench_baseline(uri, seconds, "--baseline-batch", str(batch), "--baseline-indexes", indexes,
                                    "--cpu-pid", f"mongodb={p.pids['mongodb']}")
        results.append({"indexes": indexes, "batch": batch, "inserts_per_sec": result["inserts_per_sec"]}
                       | (result["cpu"].get("mongodb") or {}))
    return results


def scenario_throughput(rates: list[float], duration: float, with_redis: bool) -> list[dict]:
    """One chatcluster instance at rising rates until p99 passes 50 ms or a
    delivery is missing: on the embedded store (each message committed to disk
    before its ack) or with Redis and MongoDB (acked once in the Redis stream)."""
    found = []
    with Processes() as p:
        servers = chat_servers(p, 1, redis(p), mongodb(p)) if with_redis else chat_servers(p, 1, None, None)
        for rate in rates:
            result = bench(servers, "chat", connections=200, rooms=20, users=20, rate=rate, duration=duration)
            found.append(result)
            print(f"  throughput {rate:>7.0f}/s: p99 {result['p99_ms']:.2f} ms, "
                  f"{result['delivered']}/{result['expected']} delivered", flush=True)
            if result["p99_ms"] > 50 or result["delivered"] < result["expected"]:
                break
    return found


def median(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small and short, to try the harness")
    parser.add_argument("--scenarios", default=",".join(sorted(ALL_SCENARIOS)),
                        help="comma-separated subset of idle,fanout,throughput,persistence,efficiency,"
                             "scale,ceiling,stages,indexes "
                             "(the others keep their figures in summary.json)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--baseline", type=Path,
                        help="a chat-server built from another commit: run it instead of the peer, alternating "
                             "with this build, print both and leave summary.json alone")
    args = parser.parse_args()
    global BASELINE
    BASELINE = args.baseline
    systems = ("chatcluster", "baseline") if BASELINE else tuple(args.systems.split(","))
    unknown = set(systems) - set(SYSTEMS) - {"baseline"}
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {','.join(SYSTEMS)}")
    chosen = set(args.scenarios.split(","))
    idle_connections = 2000 if args.quick else 19_000
    fanout = dict(connections=200 if args.quick else 1000, rate=100 if args.quick else 500,
                  duration=5 if args.quick else 20)
    raw = RESULTS / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}

    efficiency = dict(connections=200 if args.quick else 1000, duration=5 if args.quick else 20)
    efficiency_rates = [250, 1000] if args.quick else [1000, 4000]
    scale_rate = 250 if args.quick else 1000
    stages_rate = 250 if args.quick else 1000
    ceiling_rates = [250, 500, 1000] if args.quick else [250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000]
    persistence = dict(rate=2000 if args.quick else 6000, duration=5 if args.quick else 30,
                       baseline_seconds=3 if args.quick else 10)
    for repeat in range(args.repeats):
        for system in systems:  # alternating, so drift hits both
            if "idle" in chosen:
                print(f"[{repeat + 1}/{args.repeats}] {system}: idle {idle_connections}", flush=True)
                runs.setdefault(f"idle/{system}", []).append(scenario_idle(system, idle_connections))
            if "fanout" in chosen:
                print(f"[{repeat + 1}/{args.repeats}] {system}: fan-out {fanout}", flush=True)
                result = scenario_fanout(system, **fanout)
                print(f"  p99 {result['p99_ms']:.2f} ms (first {FIRST_SECONDS} s: {result['first_p99_ms']:.2f} ms), "
                      f"{result['delivered']}/{result['expected']} delivered", flush=True)
                runs.setdefault(f"fanout/{system}", []).append(result)
            if "efficiency" in chosen:
                for rate in efficiency_rates:
                    print(f"[{repeat + 1}/{args.repeats}] {system}: efficiency {rate}/s {efficiency}", flush=True)
                    result = scenario_efficiency(system, rate, **efficiency)
                    print(f"  server {result['server_cpu_us_per_delivery']:.2f} us/delivery "
                          f"(user {result['server_user_cpu_us_per_delivery']:.2f}), "
                          f"per message {result['cpu_us_per_message']}, p99 {result['p99_ms']:.2f} ms, "
                          f"{result['delivered']}/{result['expected']} delivered", flush=True)
                    runs.setdefault(f"efficiency-{rate}/{system}", []).append(result)
            if "stages" in chosen:
                for paused in (False, True) if is_chat(system) else (False,):
                    name = "stages-paused" if paused else "stages"
                    print(f"[{repeat + 1}/{args.repeats}] {system}: {name} {stages_rate}/s {efficiency}", flush=True)
                    result = scenario_stages(system, stages_rate, **efficiency, pause_stand_in=paused)
                    print(f"  p99 {result['p99_ms']:.2f} ms, append p99 {result.get('append_p99_ms')} ms, "
                          f"hand-off p99 {result.get('handoff_p99_ms')} ms, Redis script p99 "
                          f"{result.get('redis_script_p99_us')} us, over 10 ms after 3 s {result['slow_after_3s']}, "
                          f"{result['delivered']}/{result['expected']} delivered", flush=True)
                    runs.setdefault(f"{name}/{system}", []).append(result)
            if "scale" in chosen and is_chat(system):
                for count, shards in SCALE:
                    print(f"[{repeat + 1}/{args.repeats}] {system}: {count} instances on {shards} Redis shard(s), "
                          f"efficiency {scale_rate}/s", flush=True)
                    result = scenario_efficiency(system, scale_rate, **efficiency, count=count, shards=shards)
                    print(f"  server {result['server_cpu_us_per_delivery']:.2f} us/delivery, redis (all shards) "
                          f"{result['redis_cpu_us_per_message']:.1f} us/message, shares {result['shard_share']}, "
                          f"p99 {result['p99_ms']:.2f} ms, {result['delivered']}/{result['expected']} delivered",
                          flush=True)
                    runs.setdefault(f"scale-{count}x{shards}/{system}", []).append(result)
    if "ceiling" in chosen:
        for system in systems:
            print(f"ceiling: {system}, two instances, p99 <= {CEILING_P99_MS} ms", flush=True)
            runs[f"ceiling/{system}"] = [scenario_ceiling(system, ceiling_rates, efficiency["connections"],
                                                          5 if args.quick else 10)]
    for count, shards in SCALE if "scale" in chosen else []:
        for system in filter(is_chat, systems):
            print(f"ceiling: {system}, {count} instances on {shards} Redis shard(s)", flush=True)
            runs[f"scale-ceiling-{count}x{shards}/{system}"] = [
                scenario_ceiling(system, ceiling_rates, efficiency["connections"], 5 if args.quick else 10,
                                 count=count, shards=shards)]
    for repeat in range(args.repeats if "persistence" in chosen else 0):
        print(f"[{repeat + 1}/{args.repeats}] chatcluster: persistence {persistence}", flush=True)
        result = scenario_persistence(**persistence)
        print(f"  pipeline {result['pipeline_per_sec'] or 0:.0f}/s, raw insert_many "
              f"{result['raw_insert_per_sec_before']:.0f}/s before and {result['raw_insert_per_sec_after']:.0f}/s "
              f"after, ratio {result['ratio'] or 0:.2f}", flush=True)
        runs.setdefault("persistence/chatcluster", []).append(result)
    for repeat in range(args.repeats if "indexes" in chosen else 0):
        print(f"[{repeat + 1}/{args.repeats}] MongoDB stand-in: indexes", flush=True)
        for result in scenario_indexes(3 if args.quick else 10, INDEX_BATCH):
            print(f"  {result['indexes']}: {result.get('cpu_us_per_document') or 0:.0f} us of its CPU per document, "
                  f"{result['inserts_per_sec']:.0f} documents/s", flush=True)
            runs.setdefault(f"indexes-{result['indexes'].replace(',', '+')}/mongodb", []).append(result)
    rates = [250, 1000] if args.quick else [100, 250, 500, 1000, 2000, 4000, 8000, 16000]
    for name, with_redis in (("embedded", False), ("redis", True)):
        if "throughput" not in chosen:
            break
        print(f"throughput: one chatcluster instance, {name}", flush=True)
        runs[f"throughput/chatcluster-{name}"] = scenario_throughput(rates, 5 if args.quick else 10, with_redis)
    (raw / f"runs-{int(time.time())}.json").write_text(json.dumps(runs, indent=1))
    if BASELINE:
        compare_with_baseline(runs)
        return

    keys = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "deliveries_per_sec", "errors", "delivered", "expected",
            "history_p50_ms", "history_p99_ms", "same_server_p50_ms", "same_server_p99_ms",
            "cross_server_p50_ms", "cross_server_p99_ms", "first_p50_ms", "first_p99_ms"]
    summary: dict = {"machine": machine(), "repeats": args.repeats, "quick": args.quick, "scenarios": {}}
    previous = RESULTS / "summary.json"
    if chosen != ALL_SCENARIOS and previous.exists():
        # A subset re-run keeps the other scenarios' figures (each has its date).
        summary["scenarios"] = json.loads(previous.read_text()).get("scenarios", {})
    today = time.strftime("%Y-%m-%d")
    for name, results in runs.items():
        if not results:
            continue
        summary["scenarios"].pop(name, None)
        if name.startswith("indexes"):
            summary["scenarios"][name] = {k: median(results, k) for k in [
                "cpu_us_per_document", "user_cpu_us_per_document", "system_cpu_us_per_document",
                "inserts_per_sec"]} | {"indexes": results[0]["indexes"], "batch": results[0]["batch"],
                                       "runs": len(results), "date": today}
            continue
        if name.startswith("persistence"):
            summary["scenarios"][name] = {k: median(results, k) for k in results[0]} | {"runs": len(results), "date": today}
            continue
        if name.startswith(("ceiling", "scale-ceiling")):
            summary["scenarios"][name] = results[0] | {"date": today}
            continue
        if name.startswith("scale"):
            entry = {k: median(results, k) for k in ["server_cpu_us_per_delivery", "server_user_cpu_us_per_delivery",
                                                       "redis_cpu_us_per_message", "p50_ms", "p99_ms", "delivered",
                                                       "expected", "errors"]}
            for service in results[0]["cpu_us_per_message"]:
                entry[f"{service}_cpu_us_per_message"] = median(
                    [{"v": r["cpu_us_per_message"].get(service)} for r in results], "v")
            entry["largest_shard_share"] = median([{"v": max(r["shard_share"].values())} for r in results], "v")
            summary["scenarios"][name] = entry | {"runs": len(results), "date": today}
            continue
        if name.startswith("stages"):
            summary["scenarios"][name] = {k: median(results, k) for k in [
                "p50_ms", "p99_ms", "p999_ms", "append_p50_ms", "append_p99_ms", "handoff_p50_ms", "handoff_p99_ms",
                "redis_script_p50_us", "redis_script_p99_us", "redis_script_p999_us", "slow_after_3s",
                "delivered", "expected"]} | {"runs": len(results), "date": today}
            continue
        if name.startswith("efficiency"):
            entry = {k: median(results, k) for k in ["server_cpu_us_per_delivery", "server_user_cpu_us_per_delivery",
                                                       "server_system_cpu_us_per_delivery", "p50_ms", "p99_ms",
                                                       "delivered", "expected", "errors", "deliveries_per_sec"]}
            for service in ("redis", "mongodb"):
                for part in ("", "user_", "system_"):
                    entry[f"{service}_{part}cpu_us_per_message"] = median(
                        [{"v": (r.get(f"{part}cpu_us_per_message") or {}).get(service)} for r in results], "v")
            summary["scenarios"][name] = entry | {"runs": len(results), "date": today}
            continue
        if name.startswith("throughput"):
            sustained = [r for r in results if r["p99_ms"] <= 50 and r["delivered"] >= r["expected"]]
            summary["scenarios"][name] = {"steps": [{k: r[k] for k in ["rate", "p50_ms", "p99_ms", "deliveries_per_sec", "delivered", "expected"]} for r in results],
                                          "sustained_rate": max((r["rate"] for r in sustained), default=None),
                                          "date": today}
            continue
        entry = {k: median(results, k) for k in keys}
        per_connection = [v for r in results for v in r.get("rss_per_connection_bytes") or [] if v]
        entry["rss_per_connection_bytes"] = statistics.median(per_connection) if per_connection else None
        entry["connections"] = results[0]["connections"]
        entry["runs"] = len(results)
        entry["date"] = today
        summary["scenarios"][name] = entry
    for scenario in ("idle", "fanout"):
        ours, theirs = summary["scenarios"].get(f"{scenario}/chatcluster"), summary["scenarios"].get(f"{scenario}/socketio")
        if ours and theirs:
            summary["scenarios"][f"{scenario}/ratio"] = {
                k: (theirs[k] / ours[k]) if ours.get(k) and theirs.get(k) else None
                for k in ["p50_ms", "p99_ms", "same_server_p99_ms", "cross_server_p99_ms", "rss_per_connection_bytes"]
            }
    for rate in efficiency_rates:
        ours = summary["scenarios"].get(f"efficiency-{rate}/chatcluster")
        summary["scenarios"].pop(f"efficiency-{rate}/ratio", None)  # against Socket.IO alone, before Centrifugo
        for peer in PEERS:
            theirs = summary["scenarios"].get(f"efficiency-{rate}/{peer}")
            if ours and theirs:
                # Ours over theirs: below 1 means less than the peer.
                summary["scenarios"][f"efficiency-{rate}/ratio-{peer}"] = {
                    k: (ours[k] / theirs[k]) if ours.get(k) is not None and theirs.get(k) else None
                    for k in ["server_cpu_us_per_delivery", "server_user_cpu_us_per_delivery",
                              "redis_cpu_us_per_message", "p99_ms"]
                }
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def compare_with_baseline(runs: dict[str, list[dict]]) -> None:
    """Medians of this build and of the baseline, scenario by scenario, and
    this build's over the baseline's (below 1: this build needs less)."""
    keys = ["server_cpu_us_per_delivery", "server_user_cpu_us_per_delivery", "p50_ms", "p99_ms", "deliveries_per_sec",
            "delivered", "expected", "first_p50_ms", "first_p99_ms"]
    for name in sorted({name.split("/")[0] for name in runs}):
        ours, before = runs.get(f"{name}/chatcluster"), runs.get(f"{name}/baseline")
        if not ours or not before:
            continue
        print(f"{name} (medians of {len(ours)} and {len(before)} runs)")
        rows = [(k, median(ours, k), median(before, k)) for k in keys]
        for service in ("redis", "mongodb"):
            pick = lambda rs: median([{"v": (r.get("cpu_us_per_message") or {}).get(service)} for r in rs], "v")
            rows.append((f"{service}_cpu_us_per_message", pick(ours), pick(before)))
        for key, now, then in rows:
            ratio = f"{now / then:.2f}" if now is not None and then else "-"
            print(f"  {key:32} this {now if now is not None else '-':>12}  baseline "
                  f"{then if then is not None else '-':>12}  ratio {ratio}")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    memory = next((line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory,
            "kernel": os.uname().release, "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    main()
