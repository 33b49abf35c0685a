//! One WebSocket connection: a reader task that handles the client's frames,
//! and a writer task that owns the socket's sending half and the delivery
//! cursors. They share only the bounded queue and the connection's kick signal.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::cursor::Cursors;
use super::hub::{Connection, Kick, Outbound, Replay};
use super::protocol::encode;
use super::protocol::{self, ClientFrame, FrameError, ServerFrame};
use crate::auth::Claims;
use crate::chat::ChatError;
use crate::metrics::Metrics;
use crate::model::Id;
use crate::state::AppState;

/// Frames waiting to be written to one client before it counts as slow.
pub const QUEUE_CAPACITY: usize = 512;
/// The server pings this often; browsers answer pings without any client code.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// No frame (a pong counts) for this long and the connection is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a closing connection may take to write what was queued before.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// Invalid frames in a row tolerated before the client is treated as abusive.
const MAX_BAD_FRAMES: u32 = 20;
/// Rate-limited messages in a row tolerated before the client is disconnected.
const MAX_REFUSED_MESSAGES: u32 = 50;

/// The connection's life, from registration to cleanup.
///
/// This future is the connection's task and stays allocated while the client is
/// idle, so the calls that await the store or the bus are boxed: their state
/// exists only while they run, not for the whole life of every connection.
pub async fn run(
    mut socket: WebSocket,
    state: AppState,
    claims: Claims,
    room: Option<Id>,
    address: IpAddr,
) {
    let (queue, outbound) = mpsc::channel(QUEUE_CAPACITY);
    let registered = state
        .chat
        .hub
        .register(claims.sub, claims.username.clone(), address, queue);
    let connection = match registered {
        Ok(connection) => connection,
        Err(reason) => {
            tracing::info!(user_id = %claims.sub, %address, reason = reason.label(), "websocket refused");
            state
                .metrics
                .ws_disconnects
                .with_label_values(&[reason.label()])
                .inc();
            let close = CloseFrame {
                code: reason.close_code(),
                reason: Utf8Bytes::from_static(reason.reason()),
            };
            let _ =
                tokio::time::timeout(CLOSE_DRAIN, socket.send(WsMessage::Close(Some(close)))).await;
            return;
        }
    };
    let (sink, stream) = socket.split();
    tracing::debug!(connection = connection.id, user_id = %claims.sub, "websocket connected");
    state.metrics.ws_connections.inc();
    let writer = tokio::spawn(write(
        sink,
        outbound,
        connection.clone(),
        state.metrics.clone(),
    ));
    Box::pin(state.chat.session_changed(&connection)).await;
    if let Some(room) = room
        && let Err(e) = Box::pin(state.chat.open(&connection, room, None)).await
    {
        send_error(&connection, &e.into());
    }
    let reason = read(stream, &state, &connection, claims.exp).await;
    connection.kick(reason);
    Box::pin(state.chat.disconnected(&connection)).await;
    // The writer may be stuck writing to a client that stopped reading; it gets
    // time to say goodbye, then the socket is dropped regardless.
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_DRAIN * 2, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    state.metrics.ws_connections.dec();
    state
        .metrics
        .ws_disconnects
        .with_label_values(&[reason.label()])
        .inc();
    tracing::debug!(connection = connection.id, ?reason, "websocket closed");
}

async fn read(
    mut stream: SplitStream<WebSocket>,
    state: &AppState,
    connection: &Arc<Connection>,
    exp: i64,
) -> Kick {
    let mut expires_at = deadline_of(exp);
    let mut bad_frames = 0u32;
    let mut refused = 0u32;
    loop {
        let idle = Instant::now() + IDLE_TIMEOUT;
        let frame = tokio::select! {
            frame = stream.next() => frame,
            reason = connection.kicked() => return reason,
            () = sleep_until(expires_at) => return Kick::TokenExpired,
            () = sleep_until(idle) => return Kick::Idle,
        };
        let text = match frame {
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(WsMessage::Binary(_))) => {
                bad_frames += 1;
                send_error(
                    connection,
                    &FrameError::new("malformed_frame", "frames must be JSON text"),
                );
                if bad_frames > MAX_BAD_FRAMES {
                    return Kick::Abuse;
                }
                continue;
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None => return Kick::Gone,
            // Oversized frames, invalid UTF-8 and protocol violations end here.
            Some(Err(e)) => {
                tracing::debug!(connection = connection.id, error = %e, "websocket read failed");
                return Kick::Broken;
            }
        };
        let frame = match protocol::parse(&text) {
            Ok(frame) => frame,
            Err(e) => {
                bad_frames += 1;
                send_error(connection, &e);
                if bad_frames > MAX_BAD_FRAMES {
                    return Kick::Abuse;
                }
                continue;
            }
        };
        bad_frames = 0;
        match Box::pin(handle(frame, state, connection, &mut expires_at)).await {
            Ok(()) => refused = 0,
            Err(Refusal::RateLimited(retry_after)) => {
                refused += 1;
                state.metrics.rate_limited.inc();
                connection.send(Outbound::direct(encode(&ServerFrame::Error {
                    code: "rate_limited".into(),
                    message: "too many frames; slow down".into(),
                    retry_after: Some((retry_after.as_secs_f64() * 1000.0).ceil() / 1000.0),
                })));
                if refused > MAX_REFUSED_MESSAGES {
                    return Kick::Flooding;
                }
            }
            Err(Refusal::Error(e)) => send_error(connection, &e),
        }
    }
}

enum Refusal {
    RateLimited(Duration),
    Error(FrameError),
}

impl From<FrameError> for Refusal {
    fn from(error: FrameError) -> Self {
        Refusal::Error(error)
    }
}

impl From<ChatError> for Refusal {
    fn from(error: ChatError) -> Self {
        match error {
            ChatError::RateLimited(wait) => Refusal::RateLimited(wait),
            other => Refusal::Error(other.into()),
        }
    }
}

impl From<ChatError> for FrameError {
    fn from(error: ChatError) -> Self {
        let code = match &error {
            ChatError::NotSubscribed => "not_joined",
            ChatError::NoSuchRoom => "not_found",
            ChatError::RateLimited(_) => "rate_limited",
            ChatError::TooFarBehind => "resume_too_far",
            ChatError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "bus unavailable for a websocket frame");
                return FrameError::new("unavailable", "messaging is unavailable; retry shortly");
            }
            ChatError::Store(crate::store::StoreError::Unavailable(detail)) => {
                tracing::warn!(error = %detail, "store unavailable for a websocket frame");
                return FrameError::new(
                    "unavailable",
                    "the database is unavailable; retry shortly",
                );
            }
            ChatError::Store(other) => {
                tracing::error!(error = %other, "store error on a websocket frame");
                return FrameError::new("internal", "something went wrong on our side; retry");
            }
        };
        FrameError::new(code, error.to_string())
    }
}

async fn handle(
    frame: ClientFrame,
    state: &AppState,
    connection: &Arc<Connection>,
    expires_at: &mut Instant,
) -> Result<(), Refusal> {
    let chat = &state.chat;
    if !matches!(
        frame,
        ClientFrame::Message { .. } | ClientFrame::Typing { .. } | ClientFrame::Read { .. }
    ) {
        chat.take_control(connection.user)?;
    }
    match frame {
        ClientFrame::Message {
            room_id,
            content,
            client_id,
        } => {
            let content = protocol::clean_content(&content)?;
            protocol::check_client_id(client_id.as_deref())?;

            let message = chat
                .post(connection, room_id, content, client_id.clone())
                .await?;
            state.metrics.messages_received.inc();
            connection.send(Outbound::direct(encode(&ServerFrame::Ack {
                client_id,
                room_id,
                id: message.id,
                seq: message.seq,
            })));
        }
        ClientFrame::Join { room_id } => {
            chat.ensure_member(room_id, &connection.author()).await?;
            chat.open(connection, room_id, None).await?;
        }
        ClientFrame::Leave { room_id } => chat.close(connection, room_id).await,
        ClientFrame::Resume { room_id, last_seq } => {
            let room = chat.visible_room(room_id, connection.user).await?;
            if !room.is_member(connection.user) {
                return Err(ChatError::NotSubscribed.into());
            }
            chat.open(connection, room_id, Some(last_seq)).await?;
        }
        ClientFrame::Typing { room_id } => {
            let frame = ServerFrame::Typing {
                room_id,
                user_id: connection.user,
                username: connection.username.clone(),
            };
            chat.relay_from(connection, room_id, &frame).await?;
        }
        ClientFrame::Read { room_id, seq } => {
            let frame = ServerFrame::Read {
                room_id,
                user_id: connection.user,
                seq,
            };
            chat.relay_from(connection, room_id, &frame).await?;
        }
        ClientFrame::Auth { token } => {
            let claims = super::verify(state, &token)
                .map_err(|_| FrameError::new("invalid_token", "the token is invalid or expired"))?;
            if claims.sub != connection.user {
                return Err(
                    FrameError::new("invalid_token", "the token belongs to another user").into(),
                );
            }
            *expires_at = deadline_of(claims.exp);
            connection.send(Outbound::direct(encode(&ServerFrame::Authenticated {
                exp: claims.exp,
            })));
        }
        ClientFrame::Ping => {
            connection.send(Outbound::direct(encode(&ServerFrame::Pong)));
        }
    }
    Ok(())
}

fn send_error(connection: &Connection, error: &FrameError) {
    connection.send(Outbound::direct(encode(&ServerFrame::from(error.clone()))));
}

/// When a token with this `exp` (seconds since the epoch) stops being valid.
fn deadline_of(exp: i64) -> Instant {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Instant::now() + Duration::from_secs(u64::try_from(exp - now).unwrap_or(0))
}

async fn write(
    mut sink: SplitSink<WebSocket, WsMessage>,
    mut outbound: mpsc::Receiver<Outbound>,
    connection: Arc<Connection>,
    metrics: Arc<Metrics>,
) {
    let mut cursors: Cursors<Utf8Bytes> = Cursors::default();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        let frames: Vec<Utf8Bytes> = tokio::select! {
            // A kick is seen before more queued frames, so a slow consumer is closed
            // promptly; the kick branch still drains what it owes (see there).
            biased;
            reason = connection.kicked() => {
                // What was queued before the kick (acks, errors) is still owed to
                // the client, unless its slowness is the reason: then close now.
                if !matches!(reason, Kick::SlowConsumer | Kick::Gone | Kick::Broken) {
                    let drain = async {
                        while let Ok(item) = outbound.try_recv() {
                            connection.dequeued(&item);
                            if !feed(&mut sink, deliverable(&mut cursors, item), &metrics).await {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(CLOSE_DRAIN, drain).await;
                }
                // A client that does not read would block these forever.
                let close = async {
                    if !matches!(reason, Kick::Gone | Kick::Broken) {
                        let close = CloseFrame { code: reason.close_code(), reason: Utf8Bytes::from_static(reason.reason()) };
                        let _ = sink.send(WsMessage::Close(Some(close))).await;
                    }
                    let _ = sink.close().await;
                };
                let _ = tokio::time::timeout(CLOSE_DRAIN, close).await;
                return;
            }
            item = outbound.recv() => match item {
                Some(item) => {
                    connection.dequeued(&item);
                    deliverable(&mut cursors, item)
                }
                None => return,
            },
            _ = ping.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    connection.kick(Kick::Broken);
                }
                continue;
            }
        };
        let mut written = feed(&mut sink, frames, &metrics).await;
        // Write what else is already queued before flushing: one syscall for a
        // burst, bounded so a kick is still noticed under constant traffic.
        for _ in 0..QUEUE_CAPACITY {
            let Ok(item) = outbound.try_recv() else { break };
            connection.dequeued(&item);
            if !written {
                break;
            }
            written = feed(&mut sink, deliverable(&mut cursors, item), &metrics).await;
        }
        if !written || sink.flush().await.is_err() {
            connection.kick(Kick::Broken);
        }
    }
}

/// Writes frames without flushing; false once the socket has failed.
async fn feed(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    frames: Vec<Utf8Bytes>,
    metrics: &Metrics,
) -> bool {
    for frame in frames {
        if sink.feed(WsMessage::Text(frame)).await.is_err() {
            return false;
        }
        metrics.frames_sent.inc();
    }
    true
}

/// What an outbound item means for this connection's socket, given its cursors.
fn deliverable(cursors: &mut Cursors<Utf8Bytes>, item: Outbound) -> Vec<Utf8Bytes> {
    match item {
        Outbound::Direct(frame) => vec![*frame],
        Outbound::Message(message) => cursors
            .live(message.room, message.seq, message.frame.clone())
            .into_iter()
            .collect(),
        Outbound::Event(event) => {
            if cursors.is_subscribed(event.room) {
                vec![event.frame.clone()]
            } else {
                Vec::new()
            }
        }
        Outbound::Left(event) => {
            cursors.left(event.room);
            vec![event.frame.clone()]
        }
        Outbound::Resuming { room } => {
            cursors.resuming(room);
            Vec::new()
        }
        Outbound::Reset { room } => {
            cursors.left(room);
            Vec::new()
        }
        Outbound::Replayed(replayed) => {
            let Replay {
                room,
                frame,
                replay,
                upto,
            } = *replayed;
            let mut frames = vec![frame];
            frames.extend(cursors.replayed(room, replay, upto));
            frames
        }
    }
}
