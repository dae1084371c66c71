//! `tcp-echo --mode rio-port --protocol sockperf`: sockperf's messages on
//! a RIO connection, framed in the registered slices themselves.
//!
//! A connection keeps **one** receive pending, so that its bytes land in
//! one slice after another in stream order and a message a read cut off can
//! be continued in place: when a receive completes, the slice holds the
//! start of a message carried over (at its front) and the bytes just read.
//! Its whole messages are framed there ([`compact`]): the replies move to
//! the slice's front and queue to be sent from it; the unfinished message
//! that follows is copied to the front of a free slice, and the next
//! receive goes in after it. A slice that holds no reply is itself the
//! free slice. When every other slice still waits for its replies to go
//! out (a client that does not read), the connection stops receiving until
//! one is sent: backpressure, never an unbounded queue.

use ringport::rio::{self, RioBuf};

use super::super::sockperf::{compact, pending_length, BadLength};
use super::{Worker, CONN_FAILED};

/// Where a connection's stream of messages stands.
pub(super) struct Framing {
    /// Slices neither receiving nor holding replies.
    free: Vec<u32>,
    /// Bytes carried over at the front of the slice receiving now.
    carried: u32,
    /// The next receive waits for a free slice; meanwhile the unfinished
    /// message is (slice, offset, bytes) where it was read.
    stalled: Option<(u32, u32, u32)>,
}

impl Framing {
    /// Slice 0 receives first; the rest are free.
    pub(super) fn new(slices: u32) -> Framing {
        Framing {
            free: (1..slices).rev().collect(),
            carried: 0,
            stalled: None,
        }
    }
}

/// Why a connection's stream cannot be framed.
enum Broken {
    Bad(BadLength),
    TooLong(usize),
    Rio(ringport::Error),
}

impl Worker {
    /// A receive into `slot` brought `bytes`: frames what the slice holds.
    pub(super) fn framed_received(&mut self, index: usize, slot: u32, bytes: u32) {
        let Some(c) = self.conns[index].as_ref() else {
            return;
        };
        let Some(f) = c.framing.as_ref() else { return };
        let held = f.carried + bytes;
        let framed = self.frame(self.slice(c, slot, 0, held));
        let (replies, whole) = match framed {
            Ok(r) => r,
            Err(why) => return self.broken(index, why),
        };
        let rest = held - whole;
        // Where the unfinished message goes on: this slice when it holds no
        // reply, else a free one (none: stall until a send frees one).
        let target = {
            let Some(c) = self.conns[index].as_mut() else {
                return;
            };
            let Some(f) = c.framing.as_mut() else { return };
            f.carried = 0;
            if replies == 0 {
                Some(slot)
            } else {
                c.ready.push_back((slot, replies));
                let next = f.free.pop();
                if next.is_none() {
                    f.stalled = Some((slot, whole, rest));
                }
                next
            }
        };
        if let Some(to) = target {
            if let Err(e) = self.copy(index, (slot, whole), (to, 0), rest) {
                return self.broken(index, Broken::Rio(e));
            }
            self.receive_after(index, to, rest);
        }
        if replies > 0 {
            self.send_next(index);
        }
    }

    /// Every reply in `slot` is sent: it receives again if the connection
    /// was waiting for a slice, or waits among the free ones.
    pub(super) fn framed_sent(&mut self, index: usize, slot: u32) {
        let Some(f) = self.conns[index].as_mut().and_then(|c| c.framing.as_mut()) else {
            return;
        };
        let Some((from, at, rest)) = f.stalled.take() else {
            return f.free.push(slot);
        };
        if let Err(e) = self.copy(index, (from, at), (slot, 0), rest) {
            return self.broken(index, Broken::Rio(e));
        }
        self.receive_after(index, slot, rest);
    }

    /// The next receive, into `slot` after the `carried` bytes at its front.
    fn receive_after(&mut self, index: usize, slot: u32, carried: u32) {
        if let Some(f) = self.conns[index].as_mut().and_then(|c| c.framing.as_mut()) {
            f.carried = carried;
        }
        self.receive_at(index, slot, carried);
    }

    /// Frames the messages in `buf` in place: (bytes of replies at its
    /// front, bytes of whole messages).
    fn frame(&self, buf: RioBuf) -> Result<(u32, u32), Broken> {
        let mut b = rio::borrow_mut(&buf).map_err(Broken::Rio)?;
        let (replies, whole) = compact(&mut b).map_err(Broken::Bad)?;
        // The unfinished message must fit in a slice to be continued there.
        if let Some(len) = pending_length(&b[whole..]).map_err(Broken::Bad)? {
            if len > self.slot as usize {
                return Err(Broken::TooLong(len));
            }
        }
        Ok((replies as u32, whole as u32))
    }

    /// Copies `len` bytes of the connection's buffer from (slice, offset)
    /// to (slice, offset); the two never overlap but in one slice.
    fn copy(
        &self,
        index: usize,
        from: (u32, u32),
        to: (u32, u32),
        len: u32,
    ) -> Result<(), ringport::Error> {
        let Some(c) = self.conns[index].as_ref() else {
            return Ok(());
        };
        if len == 0 || from == to {
            return Ok(());
        }
        if from.0 == to.0 {
            let mut b = rio::borrow_mut(&self.slice(c, from.0, 0, self.slot))?;
            let at = from.1 as usize;
            b.copy_within(at..at + len as usize, to.1 as usize);
            return Ok(());
        }
        let src = rio::borrow(&self.slice(c, from.0, from.1, len))?;
        let mut dst = rio::borrow_mut(&self.slice(c, to.0, to.1, len))?;
        dst.copy_from_slice(&src);
        Ok(())
    }

    /// Fails the connection: it closes once the batch is committed.
    fn broken(&mut self, index: usize, why: Broken) {
        let Some(c) = self.conns[index].as_mut() else {
            return;
        };
        let why = match why {
            Broken::Bad(e) => e.to_string(),
            Broken::TooLong(n) => format!(
                "a sockperf message of {n} bytes is longer than a slice (--buf-size {})",
                self.slot
            ),
            Broken::Rio(e) => e.to_string(),
        };
        CONN_FAILED.line(format_args!("connection from {}: {why}", c.peer));
        if !c.failed {
            c.failed = true;
            self.stats.errors += 1;
        }
        self.touched.push(index);
    }
}
