//! One WebSocket connection: a reader task that handles the client's frames,
//! and a flusher task that writes what the socket could not take at once and
//! says goodbye. Frames reach the socket through the connection's outbox,
//! from whichever task has them (see `outbox`).

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::MAX_MESSAGE_BYTES;
use crate::auth::Claims;
use crate::engine::chat::{Change, ChatError, Post};
use crate::engine::hub::{Connection, Outbound, QUEUE_FRAMES};
use crate::engine::outbox::{Opcode, Outbox, Sent, close_payload};
use crate::model::Id;
use crate::state::AppState;
use crate::wire::errors::{ErrorCode, Kick, WireError};
use crate::wire::frames::{self as protocol, ClientFrame, ServerFrame, encode};

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
/// tungstenite's default 128 KiB read buffer is allocated and zero-filled for
/// every connection, idle or not. Chat frames are small; a bigger one grows the
/// buffer to its length as it arrives.
const READ_BUFFER_BYTES: usize = 1024;

/// The connection's life, from registration to cleanup. `early` holds what
/// the client sent right behind its handshake.
///
/// This future is the connection's task and stays allocated while the client is
/// idle, so the calls that await the store or the bus are boxed: their state
/// exists only while they run, not for the whole life of every connection.
pub(crate) async fn run(
    socket: TcpStream,
    early: Bytes,
    state: AppState,
    claims: Claims,
    room: Option<Id>,
    address: IpAddr,
) {
    let socket = Arc::new(socket);
    let registered =
        state
            .chat
            .hub
            .register(claims.sub, claims.username.clone(), address, socket.clone());
    let connection = match registered {
        Ok(connection) => connection,
        Err(reason) => {
            tracing::info!(user_id = %claims.sub, %address, reason = reason.label(), "websocket refused");
            state
                .metrics
                .ws_disconnects
                .with_label_values(&[reason.label()])
                .inc();
            let outbox = Outbox::new(socket, MAX_MESSAGE_BYTES, QUEUE_FRAMES);
            let _ = outbox.frame(
                &mut outbox.lock(),
                Opcode::Close,
                close_payload(reason.close_code(), reason.reason()),
            );
            let _ = tokio::time::timeout(CLOSE_DRAIN, outbox.flush()).await;
            return;
        }
    };
    tracing::debug!(connection = connection.id, user_id = %claims.sub, "websocket connected");
    state.metrics.ws_connections.inc();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let client = ClientSide {
        socket,
        early,
        connection: connection.clone(),
    };
    let mut stream = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
    let flusher = tokio::spawn(flush(connection.clone()));
    Box::pin(state.chat.session_changed(&connection)).await;
    if let Some(room) = room
        && let Err(e) = Box::pin(state.chat.open(&connection, room, None)).await
    {
        send_error(&connection, &e.into());
    }
    let reason = read(&mut stream, &state, &connection, claims.exp).await;
    connection.kick(reason);
    Box::pin(state.chat.disconnected(&connection)).await;
    // The flusher may be stuck writing to a client that stopped reading; it
    // gets time to say goodbye, then the socket is dropped regardless.
    let mut flusher = flusher;
    if tokio::time::timeout(CLOSE_DRAIN * 2, &mut flusher)
        .await
        .is_err()
    {
        flusher.abort();
    }
    if !matches!(reason, Kick::Gone | Kick::Broken) {
        linger(&mut stream).await;
    }
    state.metrics.ws_connections.dec();
    state
        .metrics
        .ws_disconnects
        .with_label_values(&[reason.label()])
        .inc();
    tracing::debug!(connection = connection.id, ?reason, "websocket closed");
}

/// What tungstenite reads the client's frames from: the socket (after the
/// bytes that came with the handshake). What it writes by itself (pongs, the
/// answer to a client's close) goes through the outbox like every frame.
struct ClientSide {
    socket: Arc<TcpStream>,
    early: Bytes,
    connection: Arc<Connection>,
}

impl AsyncRead for ClientSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = buf.remaining().min(this.early.len());
            buf.put_slice(&this.early[..n]);
            this.early.advance(n);
            if this.early.is_empty() {
                this.early = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.socket.poll_read_ready(cx))?;
            match this.socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ClientSide {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.connection.outbox.raw(buf) == Sent::Overflow {
            self.connection.kick(Kick::SlowConsumer);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// After the server's close frame, reads (and ignores) what the client still
/// sends until its own close frame, briefly. Closing a socket with unread
/// bytes makes the kernel answer with a reset, and a reset can destroy what
/// the client has not read yet: the close frame and the reason in it.
async fn linger(stream: &mut WebSocketStream<ClientSide>) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while let Some(Ok(frame)) = stream.next().await {
            if matches!(frame, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn read(
    stream: &mut WebSocketStream<ClientSide>,
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
                    &WireError::new(ErrorCode::MalformedFrame, "frames must be JSON text"),
                );
                if bad_frames > MAX_BAD_FRAMES {
                    return Kick::Abuse;
                }
                continue;
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
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
                send_error(
                    connection,
                    &WireError::rate_limited("too many frames; slow down", retry_after),
                );
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
    Error(WireError),
}

impl From<WireError> for Refusal {
    fn from(error: WireError) -> Self {
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

async fn handle(
    frame: ClientFrame,
    state: &AppState,
    connection: &Arc<Connection>,
    expires_at: &mut Instant,
) -> Result<(), Refusal> {
    let chat = &state.chat;
    if !matches!(
        frame,
        ClientFrame::Message { .. }
            | ClientFrame::Edit { .. }
            | ClientFrame::Delete { .. }
            | ClientFrame::React { .. }
            | ClientFrame::Unreact { .. }
            | ClientFrame::Typing { .. }
            | ClientFrame::Read { .. }
    ) {
        chat.limits.control(connection.user)?;
    }
    match frame {
        ClientFrame::Message {
            room_id,
            content,
            client_id,
            reply_to,
            attachments,
        } => {
            let content = protocol::clean_post(&content, &attachments)?;
            protocol::check_client_id(client_id.as_deref())?;

            let post = Post {
                content,
                reply_to,
                attachments,
            };
            let message = chat
                .post(connection, room_id, post, client_id.clone())
                .await?;
            state.metrics.messages_received.inc();
            acknowledge(connection, client_id, &message);
        }
        ClientFrame::Edit {
            room_id,
            seq,
            content,
            client_id,
        } => {
            let change = Change::Edit(protocol::clean_content(&content)?);
            change_message(state, connection, room_id, seq, change, client_id).await?;
        }
        ClientFrame::Delete {
            room_id,
            seq,
            client_id,
        } => change_message(state, connection, room_id, seq, Change::Delete, client_id).await?,
        ClientFrame::React {
            room_id,
            seq,
            emoji,
            client_id,
        } => {
            protocol::check_emoji(&emoji)?;
            let change = Change::React(emoji);
            change_message(state, connection, room_id, seq, change, client_id).await?;
        }
        ClientFrame::Unreact {
            room_id,
            seq,
            emoji,
            client_id,
        } => {
            protocol::check_emoji(&emoji)?;
            let change = Change::Unreact(emoji);
            change_message(state, connection, room_id, seq, change, client_id).await?;
        }
        ClientFrame::Join { room_id } => chat.join(connection, room_id).await?,
        ClientFrame::Leave { room_id } => chat.close(connection, room_id).await,
        ClientFrame::Resume { room_id, last_seq } => {
            chat.resume(connection, room_id, last_seq).await?;
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
            let claims = state.tokens.verify(&token).map_err(|_| {
                WireError::new(ErrorCode::InvalidToken, "the token is invalid or expired")
            })?;
            if claims.sub != connection.user {
                return Err(WireError::new(
                    ErrorCode::InvalidToken,
                    "the token belongs to another user",
                )
                .into());
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

/// An edit, deletion or reaction of the message at `seq`, acked once durable.
async fn change_message(
    state: &AppState,
    connection: &Arc<Connection>,
    room: Id,
    seq: u64,
    change: Change,
    client_id: Option<String>,
) -> Result<(), Refusal> {
    protocol::check_client_id(client_id.as_deref())?;
    let change = state
        .chat
        .change(connection, room, seq, change, client_id.clone())
        .await?;
    acknowledge(connection, client_id, &change);
    Ok(())
}

/// The `ack` of a message or change the bus has made durable.
fn acknowledge(
    connection: &Connection,
    client_id: Option<String>,
    message: &crate::model::Message,
) {
    connection.send(Outbound::direct(encode(&ServerFrame::Ack {
        client_id,
        room_id: message.room_id,
        id: message.id,
        seq: message.seq,
    })));
}

/// Answers a refused frame with an `error` frame, logging our side's part once.
fn send_error(connection: &Connection, error: &WireError) {
    error.log("websocket");
    connection.send(Outbound::direct(encode(&ServerFrame::from(error.clone()))));
}

/// When a token with this `exp` (seconds since the epoch) stops being valid.
fn deadline_of(exp: i64) -> Instant {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Instant::now() + Duration::from_secs(u64::try_from(exp - now).unwrap_or(0))
}

/// Writes what the socket could not take at once, pings, and on a kick
/// says goodbye: what was owed (unless the client is too slow for it), then
/// a close frame with the reason.
async fn flush(connection: Arc<Connection>) {
    let outbox = &connection.outbox;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let reason = loop {
        tokio::select! {
            biased;
            reason = connection.kicked() => break reason,
            () = outbox.woken() => {
                tokio::select! {
                    biased;
                    reason = connection.kicked() => break reason,
                    flushed = outbox.flush() => if flushed.is_err() {
                        connection.kick(Kick::Broken);
                    },
                }
            }
            _ = ping.tick() => {
                if outbox.frame(&mut outbox.lock(), Opcode::Ping, Bytes::new()) == Sent::Overflow {
                    connection.kick(Kick::SlowConsumer);
                }
            }
        }
    };
    if matches!(reason, Kick::Gone | Kick::Broken) || outbox.is_broken() {
        return;
    }
    if reason == Kick::SlowConsumer {
        outbox.discard_waiting();
    }
    let close = close_payload(reason.close_code(), reason.reason());
    let _ = outbox.frame(&mut outbox.lock(), Opcode::Close, close);
    // A client that does not read would hold this forever.
    let _ = tokio::time::timeout(CLOSE_DRAIN, outbox.flush()).await;
}
