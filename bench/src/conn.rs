//! One benchmark connection: a WebSocket from a chosen source address, the
//! protocol's handshake (chatcluster's, Socket.IO's or Centrifugo's), then
//! frames out from the scheduler and messages in, each timed against the send
//! time it carries.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// chatcluster's `/ws` (docs/protocol.md).
    Chat,
    /// Socket.IO v4 over its WebSocket transport (bench/peers/socketio).
    Socketio,
    /// Centrifugo's bidirectional JSON protocol over `/connection/websocket`:
    /// each connection subscribes to its room's channel and publishes into it.
    Centrifugo,
}

/// Counters every connection adds to.
#[derive(Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub errors: AtomicU64,
}

pub struct Spec {
    pub protocol: Protocol,
    pub server: SocketAddr,
    /// Host and port as the URL names them.
    pub authority: String,
    pub source: IpAddr,
    pub room: String,
    /// Which of the run's rooms `room` is.
    pub room_index: usize,
    pub server_index: usize,
    /// chatcluster and Centrifugo: the connection token; Socket.IO: the user's name.
    pub credential: String,
}

/// A connected benchmark connection.
pub struct Handle {
    pub room_index: usize,
    /// Which server (index of --url) it is connected to.
    pub server_index: usize,
    pub outgoing: mpsc::Sender<String>,
    pub connect_time: Duration,
    pub task: tokio::task::JoinHandle<Latencies>,
}

/// One connection's delivery latencies (µs), apart by where the message was
/// sent: through the same server as this connection, or through another one
/// (so it crossed the bus between pods). Plain vectors, made into histograms
/// after the run: a histogram is ~160 KiB, and allocating one per connection
/// on its first delivery faulted in hundreds of MiB in the load generator's
/// first second of sending, which showed up as every system's slowest
/// deliveries.
#[derive(Default)]
pub struct Latencies {
    pub same_server: Vec<u32>,
    pub cross_server: Vec<u32>,
    /// Per second of sending (µs since the epoch / 10^6): the slowest
    /// delivery and how many took longer than [`SLOW_MICROS`], so a p99 can
    /// be told apart as a steady tail or a few stalls.
    pub per_second: BTreeMap<u64, Second>,
}

/// A delivery slower than this counts as slow in the timeline.
pub const SLOW_MICROS: u64 = 10_000;

#[derive(Default, Clone, Copy)]
pub struct Second {
    pub max_micros: u64,
    pub slow: u64,
    pub deliveries: u64,
}

impl Second {
    pub fn record(&mut self, latency: u64) {
        self.max_micros = self.max_micros.max(latency);
        self.slow += u64::from(latency > SLOW_MICROS);
        self.deliveries += 1;
    }

    pub fn add(&mut self, other: Second) {
        self.max_micros = self.max_micros.max(other.max_micros);
        self.slow += other.slow;
        self.deliveries += other.deliveries;
    }
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// The frame that posts a message carrying its send time and the server it
/// is sent through: `<µs since the epoch>:<server index>`.
pub fn message_frame(protocol: Protocol, room: &str, sequence: u64, server_index: usize) -> String {
    let sent = format!("{}:{server_index}", now_micros());
    match protocol {
        Protocol::Chat => json!({"type": "message", "room_id": room, "content": sent, "client_id": format!("b{sequence}")}).to_string(),
        Protocol::Socketio => format!("42{}", json!(["message", {"room": room, "content": sent}])),
        // Ids 1 and 2 are the handshake's.
        Protocol::Centrifugo => json!({"id": sequence + 3, "publish": {"channel": room, "data": {"content": sent}}}).to_string(),
    }
}

pub async fn connect(
    spec: Spec,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Handle> {
    let started = Instant::now();
    let socket = if spec.server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket
        .bind(SocketAddr::new(spec.source, 0))
        .with_context(|| format!("binding {}", spec.source))?;
    let stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(spec.server))
        .await
        .context("TCP connect timed out")?
        .context("TCP connect")?;
    stream.set_nodelay(true)?;
    let url = match spec.protocol {
        Protocol::Chat => format!(
            "ws://{}/ws?token={}&room_id={}",
            spec.authority, spec.credential, spec.room
        ),
        Protocol::Socketio => format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            spec.authority
        ),
        Protocol::Centrifugo => format!("ws://{}/connection/websocket", spec.authority),
    };
    // A small read buffer, like the server's: thousands of these run in one process.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)),
    )
    .await
    .context("WebSocket handshake timed out")?
    .context("WebSocket handshake")?;
    let (mut sink, mut source) = ws.split();

    // Ready means: the room is open (chat: `joined`; Socket.IO: connected,
    // then joined; Centrifugo: connected, then subscribed).
    if spec.protocol == Protocol::Centrifugo {
        let connect = json!({"id": 1, "connect": {"token": spec.credential, "name": "chat-bench"}});
        sink.send(Message::text(connect.to_string())).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    'handshake: loop {
        let frame = tokio::time::timeout_at(deadline.into(), source.next())
            .await
            .context("no answer to the handshake")?
            .context("closed during the handshake")??;
        let Message::Text(text) = frame else { continue };
        match spec.protocol {
            Protocol::Chat => {
                if text.contains("\"joined\"") {
                    break;
                }
                if text.contains("\"error\"") {
                    anyhow::bail!("opening the room: {text}");
                }
            }
            Protocol::Socketio => {
                if text.starts_with('0') {
                    sink.send(Message::text(format!(
                        "40{}",
                        json!({"user": spec.credential})
                    )))
                    .await?;
                } else if text.starts_with("40") {
                    sink.send(Message::text(format!("42{}", json!(["join", spec.room]))))
                        .await?;
                } else if text.starts_with("42[\"joined\"") {
                    break;
                } else if text == "2" {
                    sink.send(Message::text("3")).await?;
                }
            }
            Protocol::Centrifugo => {
                for line in text.lines() {
                    let reply: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                    if reply.get("error").is_some() {
                        anyhow::bail!("opening the channel: {line}");
                    }
                    match reply["id"].as_u64() {
                        Some(1) => {
                            let subscribe = json!({"id": 2, "subscribe": {"channel": spec.room}});
                            sink.send(Message::text(subscribe.to_string())).await?;
                        }
                        Some(2) => break 'handshake,
                        _ => {}
                    }
                }
            }
        }
    }
    let connect_time = started.elapsed();

    let (outgoing, mut queue) = mpsc::channel::<String>(256);
    let protocol = spec.protocol;
    let server_index = spec.server_index;
    let task = tokio::spawn(async move {
        let mut latencies = Latencies::default();
        loop {
            tokio::select! {
                frame = queue.recv() => {
                    let Some(frame) = frame else { break };
                    if sink.send(Message::text(frame)).await.is_err() {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                incoming = source.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(text))) => text,
                        // tungstenite answers pings itself; nothing else is for us.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_))) => continue,
                        closed => {
                            if !*stop.borrow() {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                eprintln!("chat-bench: a connection closed: {closed:?}");
                            }
                            break;
                        }
                    };
                    // Centrifugo puts several replies and pushes in one
                    // frame, one per line; no protocol here has a raw
                    // newline inside one.
                    for part in text.lines() {
                        match received(protocol, part) {
                            Received::Message { sent, origin } => {
                                let latency = now_micros().saturating_sub(sent).max(1);
                                let bucket = if origin == server_index { &mut latencies.same_server } else { &mut latencies.cross_server };
                                bucket.push(u32::try_from(latency).unwrap_or(u32::MAX));
                                latencies.per_second.entry(sent / 1_000_000).or_default().record(latency);
                                counters.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            Received::Ack => { counters.acked.fetch_add(1, Ordering::Relaxed); }
                            Received::Ping(pong) => { let _ = sink.send(Message::text(pong)).await; }
                            Received::Error(error) => {
                                if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                                    eprintln!("chat-bench: server error: {error}");
                                }
                            }
                            Received::Other => {}
                        }
                    }
                }
                _ = stop.changed() => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
            }
        }
        latencies
    });
    Ok(Handle {
        room_index: spec.room_index,
        server_index: spec.server_index,
        outgoing,
        connect_time,
        task,
    })
}

enum Received {
    /// A chat message with the send time and server index it carries.
    Message {
        sent: u64,
        origin: usize,
    },
    Ack,
    /// The server's ping, with the answer it wants.
    Ping(&'static str),
    Error(String),
    Other,
}

fn received(protocol: Protocol, text: &str) -> Received {
    match protocol {
        Protocol::Chat => {
            if text.contains("\"type\":\"text\"") {
                let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                value["content"]
                    .as_str()
                    .map_or(Received::Other, parse_content)
            } else if text.contains("\"type\":\"ack\"") {
                Received::Ack
            } else if text.contains("\"type\":\"error\"") {
                Received::Error(text.to_owned())
            } else {
                Received::Other
            }
        }
        Protocol::Socketio => {
            if text == "2" {
                Received::Ping("3")
            } else if let Some(payload) = text.strip_prefix("42") {
                let value: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
                match value[0].as_str() {
                    Some("message") => value[1]["content"]
                        .as_str()
                        .map_or(Received::Other, parse_content),
                    Some("ack") => Received::Ack,
                    _ => Received::Other,
                }
            } else {
                Received::Other
            }
        }
        Protocol::Centrifugo => {
            // An empty object is the server's ping, answered by one.
            if text == "{}" {
                return Received::Ping("{}");
            }
            let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if let Some(content) = value["push"]["pub"]["data"]["content"].as_str() {
                parse_content(content)
            } else if value.get("error").is_some() {
                Received::Error(text.to_owned())
            } else if value.get("publish").is_some() {
                Received::Ack
            } else {
                Received::Other
            }
        }
    }
}

/// The content [`message_frame`] wrote, or `Other` for anyone else's.
fn parse_content(content: &str) -> Received {
    let parsed = content
        .split_once(':')
        .and_then(|(sent, origin)| Some((sent.parse().ok()?, origin.parse().ok()?)));
    match parsed {
        Some((sent, origin)) => Received::Message { sent, origin },
        None => Received::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_sends_in_both_protocols() {
        let chat = message_frame(Protocol::Chat, "r", 1, 3);
        let content = serde_json::from_str::<Value>(&chat).unwrap()["content"].clone();
        let delivered = json!({"type": "text", "content": content}).to_string();
        assert!(
            matches!(received(Protocol::Chat, &delivered), Received::Message { origin: 3, sent } if sent > 0)
        );

        let socketio = message_frame(Protocol::Socketio, "r", 1, 0);
        let payload: Value = serde_json::from_str(socketio.strip_prefix("42").unwrap()).unwrap();
        let delivered = format!(
            "42{}",
            json!(["message", {"room": "r", "content": payload[1]["content"]}])
        );
        assert!(matches!(
            received(Protocol::Socketio, &delivered),
            Received::Message { origin: 0, .. }
        ));
    }

    #[test]
    fn reads_back_what_it_sends_to_centrifugo() {
        let frame = message_frame(Protocol::Centrifugo, "room0", 7, 1);
        let command: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(command["id"], 10);
        let data = command["publish"]["data"].clone();
        let push = json!({"push": {"channel": "room0", "pub": {"data": data, "offset": 3}}});
        assert!(matches!(
            received(Protocol::Centrifugo, &push.to_string()),
            Received::Message { origin: 1, .. }
        ));
        let reply = json!({"id": 10, "publish": {}}).to_string();
        assert!(matches!(
            received(Protocol::Centrifugo, &reply),
            Received::Ack
        ));
        assert!(matches!(
            received(Protocol::Centrifugo, "{}"),
            Received::Ping("{}")
        ));
        let refused = json!({"id": 11, "error": {"code": 103, "message": "permission denied"}});
        assert!(matches!(
            received(Protocol::Centrifugo, &refused.to_string()),
            Received::Error(_)
        ));
    }

    #[test]
    fn other_content_is_not_timed() {
        let delivered = json!({"type": "text", "content": "hello"}).to_string();
        assert!(matches!(
            received(Protocol::Chat, &delivered),
            Received::Other
        ));
    }
}
