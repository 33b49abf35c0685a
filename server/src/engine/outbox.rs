//! The sending side of one WebSocket: whoever has a frame for the connection
//! writes it to the socket directly, and only what the socket cannot take
//! right now waits for the connection's flusher task.
//!
//! Why not a queue drained by a writer task per connection: at chat rates a
//! connection receives a frame every few tens of milliseconds, so each frame
//! found its writer asleep and cost a cross-thread wake-up, a task switch and
//! a copy into the WebSocket library's buffer before its `send`. Written from
//! the task that fans the message out, a delivery is one non-blocking
//! `writev` of a header built on the stack and the frame every recipient
//! shares. Order holds because every write happens under the outbox's lock
//! and nothing is written directly while older bytes wait.
//!
//! Server frames are never masked (RFC 6455 §5.1), so encoding one is a
//! header of two to ten bytes in front of the payload.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::cursor::Cursors;
use crate::sync::lock;

/// Frame opcodes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
}

/// The header of a final, unmasked frame of `len` payload bytes: the bytes
/// and how many of them are used.
pub(crate) fn header(opcode: Opcode, len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | opcode as u8;
    let used = if len < 126 {
        header[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (header, used)
}

/// The payload of a close frame: the code, then the reason (at most 123
/// bytes, so the frame stays a control frame).
pub(crate) fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    Bytes::from(payload)
}

/// What happened to bytes handed to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// In the socket, or waiting for the flusher within the budget.
    Accepted,
    /// Over the budget: the client does not read fast enough.
    Overflow,
    /// A close frame went out before: nothing may follow it.
    Closed,
}

/// A frame, or what of it the socket has not taken: header, then payload.
type Waiting = [Bytes; 2];

fn waiting_len(frame: &Waiting) -> usize {
    frame[0].len() + frame[1].len()
}

/// What the outbox holds under its lock.
#[derive(Debug)]
pub struct Outgoing {
    /// Which room messages this connection has been sent (see `cursor`).
    pub cursors: Cursors<Utf8Bytes>,
    /// Frames the socket did not take yet, oldest first.
    waiting: VecDeque<Waiting>,
    waiting_bytes: usize,
    /// Part of the oldest waiting frame went out: it must be finished, even
    /// when the rest is dropped, or the stream stops being WebSocket.
    begun: bool,
    closed: bool,
}

/// One connection's socket, as everything that sends to it sees it.
#[derive(Debug)]
pub struct Outbox {
    stream: Arc<TcpStream>,
    outgoing: Mutex<Outgoing>,
    /// Wakes the flusher: frames are waiting, or the socket failed.
    wake: Notify,
    broken: AtomicBool,
    /// Waiting bytes allowed before the client counts as slow.
    max_waiting_bytes: usize,
    /// Waiting frames allowed before the client counts as slow.
    max_waiting_frames: usize,
}

impl Outbox {
    pub fn new(
        stream: Arc<TcpStream>,
        max_waiting_bytes: usize,
        max_waiting_frames: usize,
    ) -> Self {
        Self {
            stream,
            outgoing: Mutex::new(Outgoing {
                cursors: Cursors::default(),
                waiting: VecDeque::new(),
                waiting_bytes: 0,
                begun: false,
                closed: false,
            }),
            wake: Notify::new(),
            broken: AtomicBool::new(false),
            max_waiting_bytes,
            max_waiting_frames,
        }
    }

    /// The outbox's state, locked: frames decided and written under one lock
    /// keep their order.
    pub fn lock(&self) -> MutexGuard<'_, Outgoing> {
        lock(&self.outgoing)
    }

    /// Writes one frame (or leaves it for the flusher), under `outgoing`.
    pub fn frame(&self, outgoing: &mut Outgoing, opcode: Opcode, payload: Bytes) -> Sent {
        if outgoing.closed {
            return Sent::Closed;
        }
        if opcode == Opcode::Close {
            outgoing.closed = true;
        }
        let (header, used) = header(opcode, payload.len());
        self.write(outgoing, [Bytes::copy_from_slice(&header[..used]), payload])
    }

    /// Bytes that already are whole frames (the WebSocket library's control
    /// replies: pongs, the answer to a client's close).
    pub fn raw(&self, bytes: &[u8]) -> Sent {
        let mut outgoing = self.lock();
        if outgoing.closed {
            return Sent::Closed;
        }
        self.write(&mut outgoing, [Bytes::copy_from_slice(bytes), Bytes::new()])
    }

    fn write(&self, outgoing: &mut Outgoing, mut frame: Waiting) -> Sent {
        if self.broken.load(Ordering::Relaxed) {
            // The reader or the flusher ends the connection.
            return Sent::Accepted;
        }
        if outgoing.waiting.is_empty() {
            let total = waiting_len(&frame);
            let slices = [IoSlice::new(&frame[0]), IoSlice::new(&frame[1])];
            match self.stream.try_write_vectored(&slices) {
                Ok(n) if n == total => return Sent::Accepted,
                Ok(n) => {
                    consume(&mut frame, n);
                    outgoing.begun = n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.broken.store(true, Ordering::Relaxed);
                    self.wake.notify_one();
                    return Sent::Accepted;
                }
            }
        }
        let len = waiting_len(&frame);
        let overflow = outgoing.waiting_bytes + len > self.max_waiting_bytes
            || outgoing.waiting.len() >= self.max_waiting_frames;
        // A frame begun just now is kept whatever the budget: see `begun`.
        if overflow && !(outgoing.begun && outgoing.waiting.is_empty()) {
            return Sent::Overflow;
        }
        outgoing.waiting.push_back(frame);
        outgoing.waiting_bytes += len;
        if outgoing.waiting.len() == 1 {
            self.wake.notify_one();
        }
        if overflow {
            Sent::Overflow
        } else {
            Sent::Accepted
        }
    }

    /// Drops the waiting frames not begun, so a close frame can follow a
    /// backlog the client will never read.
    pub fn discard_waiting(&self) {
        let mut outgoing = self.lock();
        let keep = usize::from(outgoing.begun);
        outgoing.waiting.truncate(keep);
        outgoing.waiting_bytes = outgoing.waiting.iter().map(waiting_len).sum();
    }

    /// Writes what waits until nothing does (the flusher's one job); Err
    /// once the socket failed.
    pub async fn flush(&self) -> io::Result<()> {
        loop {
            {
                let mut outgoing = self.lock();
                if self.broken.load(Ordering::Relaxed) {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                while !outgoing.waiting.is_empty() {
                    let written = {
                        let slices: Vec<IoSlice<'_>> = outgoing
                            .waiting
                            .iter()
                            .take(MAX_SLICES / 2)
                            .flatten()
                            .map(|chunk| IoSlice::new(chunk))
                            .collect();
                        self.stream.try_write_vectored(&slices)
                    };
                    match written {
                        Ok(mut n) => {
                            outgoing.waiting_bytes -= n;
                            while n > 0 {
                                let Some(front) = outgoing.waiting.front_mut() else {
                                    break;
                                };
                                let len = waiting_len(front);
                                if n >= len {
                                    n -= len;
                                    outgoing.waiting.pop_front();
                                    outgoing.begun = false;
                                } else {
                                    consume(front, n);
                                    n = 0;
                                    outgoing.begun = true;
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            self.broken.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
                if outgoing.waiting.is_empty() {
                    return Ok(());
                }
            }
            self.stream.writable().await?;
        }
    }

    /// Resolves when frames are waiting for [`Outbox::flush`], or the socket
    /// failed.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Waiting bytes allowed before the client counts as slow.
    pub fn max_waiting_bytes(&self) -> usize {
        self.max_waiting_bytes
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

/// The most slices one `writev` takes (Linux's IOV_MAX is 1024).
const MAX_SLICES: usize = 128;

/// Drops the first `n` bytes of a waiting frame.
fn consume(frame: &mut Waiting, n: usize) {
    let from_header = n.min(frame[0].len());
    frame[0] = frame[0].slice(from_header..);
    frame[1] = frame[1].slice(n - from_header..);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(
            header(Opcode::Text, 5),
            ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2)
        );
        assert_eq!(header(Opcode::Text, 125).1, 2);
        let (bytes, used) = header(Opcode::Text, 126);
        assert_eq!((&bytes[..used], used), (&[0x81, 126, 0, 126][..], 4));
        let (bytes, used) = header(Opcode::Text, 65_535);
        assert_eq!(&bytes[..used], &[0x81, 126, 0xff, 0xff]);
        let (bytes, used) = header(Opcode::Text, 65_536);
        assert_eq!(&bytes[..used], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(header(Opcode::Ping, 0).0[..2], [0x89, 0]);
        assert_eq!(header(Opcode::Close, 2).0[..2], [0x88, 2]);
    }

    #[test]
    fn close_reasons_are_cut_to_a_control_frame_on_a_char_boundary() {
        assert_eq!(&close_payload(4008, "slow")[..], b"\x0f\xa8slow");
        let long = "é".repeat(100);
        let payload = close_payload(1000, &long);
        assert!(payload.len() <= 125);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
