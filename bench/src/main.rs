//! chat-bench: opens many authenticated WebSockets against one or more chat
//! servers (or a peer: Socket.IO, Centrifugo), sends messages that carry their send time
//! at a fixed total rate, and measures delivery latency at every recipient.
//! Progress goes to stderr; the result is one JSON line on stdout.

mod baseline;
mod conn;
mod history;
mod setup;
mod system;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream;
use serde_json::json;
use tokio::sync::watch;

use conn::{Counters, Protocol, Spec};

#[derive(Parser, Debug)]
#[command(name = "chat-bench", version, about)]
struct Args {
    /// A server to connect to (repeat for several; connections are spread over them).
    #[arg(long = "url", required_unless_present = "insert_baseline")]
    urls: Vec<String>,
    #[arg(long, value_enum, default_value_t = Protocol::Chat)]
    protocol: Protocol,
    /// WebSocket connections to open.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Rooms the connections are spread over (connection i is in room i % rooms).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Accounts the connections are spread over (registration is slow on purpose: argon2id).
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Messages per second, in total.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of sending (or of holding the connections, at rate 0).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    ramp: f64,
    /// Source addresses 127.0.0.1 .. 127.0.0.N, for more connections than one
    /// address has ephemeral ports (about 28,000 each).
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// PIDs of the servers (same order as --url), to report their memory per connection.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Other processes whose CPU time to report while messages flow, as
    /// LABEL=PID (e.g. redis=1234); repeat for several.
    #[arg(long = "cpu-pid", value_parser = parse_labelled_pid)]
    cpu_pids: Vec<(String, u32)>,
    /// Fail (exit 1) unless there were no errors and every message reached every member.
    #[arg(long)]
    require_complete: bool,
    /// After sending, fetch this many history pages (50 messages) one by one
    /// and report their latency.
    #[arg(long, default_value_t = 0)]
    history_requests: usize,
    /// Centrifugo: the HMAC key its connection tokens are signed with
    /// (`client.token.hmac_secret_key`).
    #[arg(long, required_if_eq("protocol", "centrifugo"))]
    centrifugo_secret: Option<String>,
    /// Instead of a load run: the raw batch-insert rate of this MongoDB server
    /// for --duration seconds, to compare the persist pipeline with.
    #[arg(long, value_name = "MONGODB_URI")]
    insert_baseline: Option<String>,
    /// With --insert-baseline: documents per insert_many.
    #[arg(long, default_value_t = 500)]
    baseline_batch: usize,
    /// With --insert-baseline: the server's message indexes to create
    /// (comma-separated; `none` for the `_id` index alone).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "seq")]
    baseline_indexes: Vec<baseline::MessageIndex>,
}

/// Connection tokens for Centrifugo (HS256, `sub` the user), one per user,
/// valid for a day.
fn centrifugo_tokens(secret: &str, users: usize) -> anyhow::Result<Vec<String>> {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 86_400;
    (0..users)
        .map(|u| {
            let claims = json!({"sub": format!("user{u}"), "exp": expires});
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
                .context("signing a Centrifugo connection token")
        })
        .collect()
}

fn parse_labelled_pid(text: &str) -> Result<(String, u32), String> {
    let (label, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not LABEL=PID"))?;
    let pid = pid
        .parse()
        .map_err(|_| format!("{pid:?} in {text:?} is not a process id"))?;
    Ok((label.to_owned(), pid))
}

/// CPU time used so far by the servers (`server-0`, ...) and the other
/// processes named with --cpu-pid.
fn cpu_snapshot(args: &Args) -> Vec<(String, Option<system::CpuTime>)> {
    let servers = args
        .server_pids
        .iter()
        .enumerate()
        .map(|(i, pid)| (format!("server-{i}"), *pid));
    servers
        .chain(args.cpu_pids.iter().cloned())
        .map(|(label, pid)| (label, system::cpu_time(pid)))
        .collect()
}

#[tokio::main]
async fn main() {
    match run(Args::parse()).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("chat-bench: {error:#}");
            std::process::exit(2);
        }
    }
}

struct Server {
    http: String,
    authority: String,
    addr: SocketAddr,
}

fn servers(urls: &[String]) -> anyhow::Result<Vec<Server>> {
    urls.iter()
        .map(|url| {
            let authority = url
                .trim_start_matches("http://")
                .trim_start_matches("ws://")
                .trim_end_matches('/')
                .to_owned();
            let addr = authority
                .to_socket_addrs()
                .with_context(|| format!("resolving {authority}"))?
                .next()
                .with_context(|| format!("{authority} has no address"))?;
            Ok(Server {
                http: format!("http://{authority}"),
                authority,
                addr,
            })
        })
        .collect()
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(uri) = &args.insert_baseline {
        let options = baseline::Options {
            duration: Duration::from_secs_f64(args.duration),
            batch: args.baseline_batch.max(1),
            indexes: args.baseline_indexes.clone(),
            cpu_pids: args.cpu_pids.clone(),
        };
        let summary = baseline::run(uri, &options).await?;
        println!("{summary}");
        return Ok(true);
    }
    if args.connections == 0 || args.rooms == 0 || args.users == 0 {
        bail!("--connections, --rooms and --users must be positive");
    }
    let servers = servers(&args.urls)?;
    let limit = system::raise_descriptor_limit();
    if args.connections as u64 + 64 > limit {
        bail!(
            "{} connections need about {} file descriptors, and this process may have {limit} \
             (the hard limit; raise it with `ulimit -Hn` as root, or split the load over several \
             chat-bench processes)",
            args.connections,
            args.connections + 64
        );
    }
    let per_address = 28_000usize;
    if args.connections > per_address * args.source_ips as usize {
        bail!(
            "{} connections need {} source addresses (--source-ips): one has about {per_address} ephemeral ports",
            args.connections,
            args.connections.div_ceil(per_address)
        );
    }

    // Accounts and rooms.
    let started = Instant::now();
    let (credentials, rooms): (Vec<String>, Vec<String>) = match args.protocol {
        Protocol::Chat => {
            let fixture = setup::create(
                &servers[0].http,
                args.users.min(args.connections),
                args.rooms,
                args.connections,
            )
            .await?;
            (
                fixture.users.into_iter().map(|u| u.token).collect(),
                fixture.rooms,
            )
        }
        Protocol::Socketio => (
            (0..args.users).map(|u| format!("user{u}")).collect(),
            (0..args.rooms).map(|r| format!("room{r}")).collect(),
        ),
        Protocol::Centrifugo => (
            centrifugo_tokens(
                args.centrifugo_secret.as_deref().unwrap_or_default(),
                args.users,
            )?,
            (0..args.rooms).map(|r| format!("room{r}")).collect(),
        ),
    };
    eprintln!(
        "chat-bench: {} users and {} rooms ready in {:.1} s",
        credentials.len(),
        rooms.len(),
        started.elapsed().as_secs_f64()
    );

    let baseline: Vec<Option<u64>> = args
        .server_pids
        .iter()
        .map(|pid| system::rss_bytes(*pid))
        .collect();

    // Connections, ramped.
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let ramp_gap = Duration::from_secs_f64(1.0 / args.ramp.max(1.0));
    let connecting = tokio::time::Instant::now();
    let specs: Vec<Spec> = (0..args.connections)
        .map(|i| {
            // Connection i is in room i % rooms; taking the server from i / rooms
            // spreads every room's members over all servers (i % servers would
            // put a whole room on one server whenever the counts share a factor),
            // so messages cross between servers as they would between pods.
            let server_index = (i / rooms.len()) % servers.len();
            let server = &servers[server_index];
            let source = if server.addr.ip().is_loopback() {
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    0,
                    1 + (i % args.source_ips as usize) as u8,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            Spec {
                protocol: args.protocol,
                server: server.addr,
                authority: server.authority.clone(),
                source,
                room: rooms[i % rooms.len()].clone(),
                room_index: i % rooms.len(),
                server_index,
                credential: credentials[i % credentials.len()].clone(),
            }
        })
        .collect();
    let results: Vec<anyhow::Result<conn::Handle>> = stream::iter(specs.into_iter().enumerate())
        .map(|(i, spec)| {
            let counters = counters.clone();
            let stopped = stopped.clone();
            async move {
                // An absolute schedule: a slot freed late must not push the rest back.
                tokio::time::sleep_until(connecting + ramp_gap * i as u32).await;
                let result = conn::connect(spec, counters, stopped).await;
                if (i + 1) % 1000 == 0 {
                    eprintln!("chat-bench: {} connections opened", i + 1);
                }
                result
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    let mut handles = Vec::with_capacity(results.len());
    let mut connect_errors = 0u64;
    for result in results {
        match result {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                if connect_errors < 5 {
                    eprintln!("chat-bench: connecting: {error:#}");
                }
                connect_errors += 1;
            }
        }
    }
    let mut connect_times = conn::histogram();
    for handle in &handles {
        let _ = connect_times.record(handle.connect_time.as_micros().max(1) as u64);
    }
    eprintln!(
        "chat-bench: {} of {} connections open in {:.1} s ({connect_errors} failed)",
        handles.len(),
        args.connections,
        connecting.elapsed().as_secs_f64()
    );
    // Let the servers settle before measuring their memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded: Vec<Option<u64>> = args
        .server_pids
        .iter()
        .map(|pid| system::rss_bytes(*pid))
        .collect();

    // Who receives what: every open connection of a room, the sender's included.
    let mut members = vec![0u64; rooms.len()];
    for handle in &handles {
        members[handle.room_index] += 1;
    }

    // Send at the total rate, round-robin over the connections. CPU is
    // counted from here to the last delivery: set-up and sign-ins excluded.
    let cpu_before = cpu_snapshot(&args);
    let sending = Instant::now();
    let mut sent = 0u64;
    let mut expected = 0u64;
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_report = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    while sending.elapsed() < duration {
        tick.tick().await;
        if args.rate > 0.0 && !handles.is_empty() {
            let due = (sending.elapsed().as_secs_f64() * args.rate) as u64;
            while sent < due {
                let handle = &handles[next];
                let room = handle.room_index;
                let frame =
                    conn::message_frame(args.protocol, &rooms[room], sent, handle.server_index);
                if handle.outgoing.try_send(frame).is_ok() {
                    expected += members[room];
                } else {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
                next = (next + 1) % handles.len();
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "chat-bench: {:>5.1} s  sent {sent}  delivered {}  errors {}",
                sending.elapsed().as_secs_f64(),
                counters.delivered.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed)
            );
        }
    }
    let send_seconds = sending.elapsed().as_secs_f64();
    // Wait for the last deliveries (up to 10 s).
    let draining = Instant::now();
    while counters.delivered.load(Ordering::Relaxed) < expected
        && draining.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_used: Vec<(String, Option<system::CpuTime>)> = cpu_before
        .into_iter()
        .zip(cpu_snapshot(&args))
        .map(|((label, before), (_, after))| (label, after.zip(before).map(|(a, b)| a.since(b))))
        .collect();
    let history = if args.history_requests > 0 && args.protocol == Protocol::Chat {
        // Connection i's account is a member of connection i's room.
        let readers: Vec<history::Reader> = (0..args.connections.min(rooms.len()))
            .map(|i| history::Reader {
                token: credentials[i % credentials.len()].clone(),
                room: rooms[i % rooms.len()].clone(),
            })
            .collect();
        Some(history::sample(&servers[0].http, &readers, args.history_requests).await?)
    } else {
        None
    };
    let _ = stop.send(true);
    let mut latencies = conn::histogram();
    let mut same_server = conn::histogram();
    let mut cross_server = conn::histogram();
    let mut per_second = std::collections::BTreeMap::<u64, conn::Second>::new();
    let open = handles.len();
    let mut open_per_server = vec![0usize; servers.len()];
    for handle in &handles {
        open_per_server[handle.server_index] += 1;
    }
    for handle in handles {
        drop(handle.outgoing);
        if let Ok(connection) = handle.task.await {
            for (second, part) in connection.per_second {
                per_second.entry(second).or_default().add(part);
            }
            for (part, into) in [
                (connection.same_server, &mut same_server),
                (connection.cross_server, &mut cross_server),
            ] {
                for latency in part {
                    let _ = latencies.record(u64::from(latency));
                    let _ = into.record(u64::from(latency));
                }
            }
        }
    }

    let delivered = counters.delivered.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed) + connect_errors;
    let ms = |micros: u64| micros as f64 / 1000.0;
    let per_connection: Vec<Option<f64>> = baseline
        .iter()
        .zip(&loaded)
        .enumerate()
        .map(|(k, (before, after))| {
            let on_server = open_per_server.get(k).copied().unwrap_or(0).max(1);
            Some((after.as_ref()?.saturating_sub(*before.as_ref()?)) as f64 / on_server as f64)
        })
        .collect();
    let delivered_or_one = delivered.max(1) as f64;
    let server_cpu = cpu_used
        .iter()
        .filter(|(label, _)| label.starts_with("server-"))
        .filter_map(|(_, used)| *used)
        .fold(system::CpuTime::default(), |sum, used| system::CpuTime {
            user: sum.user + used.user,
            system: sum.system + used.system,
        });
    let cpu_seconds: serde_json::Map<String, serde_json::Value> = cpu_used
        .iter()
        .map(|(label, used)| (label.clone(), json!(used.map(system::CpuTime::total))))
        .collect();
    // The other processes (Redis, MongoDB) per message sent: in all, in user
    // space and in the kernel.
    let per_message =
        |part: fn(system::CpuTime) -> f64| -> serde_json::Map<String, serde_json::Value> {
            cpu_used
                .iter()
                .filter(|(label, _)| !label.starts_with("server-"))
                .map(|(label, used)| {
                    let per = used.map(|u| part(u) * 1e6 / sent.max(1) as f64);
                    (label.clone(), json!(per))
                })
                .collect()
        };
    // Seconds counted from the first message sent.
    let timeline: Vec<serde_json::Value> = per_second
        .values()
        .map(|s| json!([ms(s.max_micros), s.slow, s.deliveries]))
        .collect();
    let summary = json!({
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "servers": servers.len(),
        "connections": open,
        "rooms": rooms.len(),
        "rate": args.rate,
        "duration_s": send_seconds,
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "acked": counters.acked.load(Ordering::Relaxed),
        "errors": errors,
        "deliveries_per_sec": if send_seconds > 0.0 { delivered as f64 / send_seconds } else { 0.0 },
        "p50_ms": ms(latencies.value_at_quantile(0.50)),
        "p90_ms": ms(latencies.value_at_quantile(0.90)),
        "p99_ms": ms(latencies.value_at_quantile(0.99)),
        "p999_ms": ms(latencies.value_at_quantile(0.999)),
        "max_ms": ms(latencies.max()),
        // Sent through the recipient's own server, or through another (cross pod).
        "same_server_deliveries": same_server.len(),
        "same_server_p50_ms": ms(same_server.value_at_quantile(0.50)),
        "same_server_p99_ms": ms(same_server.value_at_quantile(0.99)),
        "cross_server_deliveries": cross_server.len(),
        "cross_server_p50_ms": ms(cross_server.value_at_quantile(0.50)),
        "cross_server_p99_ms": ms(cross_server.value_at_quantile(0.99)),
        "connect_p50_ms": ms(connect_times.value_at_quantile(0.50)),
        "connect_p99_ms": ms(connect_times.value_at_quantile(0.99)),
        "cpu_seconds": cpu_seconds,
        "server_cpu_us_per_delivery": server_cpu.total() * 1e6 / delivered_or_one,
        "server_user_cpu_us_per_delivery": server_cpu.user * 1e6 / delivered_or_one,
        "server_system_cpu_us_per_delivery": server_cpu.system * 1e6 / delivered_or_one,
        "cpu_us_per_message": per_message(system::CpuTime::total),
        "user_cpu_us_per_message": per_message(|u| u.user),
        "system_cpu_us_per_message": per_message(|u| u.system),
        "server_rss_bytes": loaded,
        "rss_per_connection_bytes": per_connection,
        // Per second of sending: [slowest delivery (ms), deliveries slower
        // than 10 ms, deliveries].
        "timeline": timeline,
        "history_requests": history.as_ref().map_or(0, |h| h.len()),
        "history_p50_ms": history.as_ref().map(|h| ms(h.value_at_quantile(0.50))),
        "history_p99_ms": history.as_ref().map(|h| ms(h.value_at_quantile(0.99))),
    });
    println!("{summary}");
    let complete = errors == 0 && delivered == expected && open == args.connections;
    if args.require_complete && !complete {
        eprintln!(
            "chat-bench: incomplete: {open} of {} connected, {delivered} of {expected} deliveries, {errors} errors",
            args.connections
        );
        return Ok(false);
    }
    Ok(true)
}
