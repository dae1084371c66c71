//! `--protocol sockperf`: answer sockperf's messages as `sockperf server` does.
//!
//! Every sockperf message starts with a 14-byte header (sockperf's
//! `src/message.h`, `MsgHeader`, packed, network byte order):
//!
//! | bytes  | field                                                   |
//! |--------|---------------------------------------------------------|
//! | 0..8   | sequence number (u64)                                   |
//! | 8..10  | flags (u16): 1 client, 2 pong request, 4 warm-up        |
//! | 10..14 | length of the whole message, header included (u32)      |
//!
//! The server answers a message from a client that asks for a reply (pong
//! request) and is not a warm-up, with the same bytes, the client flag
//! cleared; it drops every other message (`sockperf under-load` asks for a
//! reply to one message in `--reply-every`). A length below the header's or
//! above sockperf's largest message (65,507 bytes) is a protocol error:
//! sockperf server ignores the rest of that read, here the datagram is
//! dropped and the connection closed. On TCP the length frames the
//! messages: one read may end inside a message or hold several.

/// Bytes of the header.
pub const HEADER: usize = 14;
/// sockperf's largest message (`MAX_PAYLOAD_SIZE`), header included.
pub const MAX_MESSAGE: usize = 65_507;

/// The flags' low byte (the u16 is big-endian, and every flag is in it).
const FLAGS: usize = 9;
const CLIENT: u8 = 1;
const PONG: u8 = 2;
const WARMUP: u8 = 4;

/// What a server speaks on its sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Send every byte back.
    #[default]
    Echo,
    /// sockperf's messages: answer those that ask for a reply.
    Sockperf,
}

/// A message's header did not make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLength(pub u32);

impl std::fmt::Display for BadLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a sockperf message of {} bytes (not {HEADER} to {MAX_MESSAGE})",
            self.0
        )
    }
}

/// The length a header gives, checked.
fn length(header: &[u8]) -> Result<usize, BadLength> {
    let n = u32::from_be_bytes([header[10], header[11], header[12], header[13]]);
    match n as usize {
        len @ HEADER..=MAX_MESSAGE => Ok(len),
        _ => Err(BadLength(n)),
    }
}

/// Whether a whole message asks for a reply; if so, turns it into the
/// reply (the client flag cleared).
fn answer_in_place(msg: &mut [u8]) -> bool {
    let flags = msg[FLAGS];
    if flags & CLIENT == 0 || flags & PONG == 0 || flags & WARMUP != 0 {
        return false;
    }
    msg[FLAGS] = flags & !CLIENT;
    true
}

/// A datagram of sockperf's: the bytes of the reply (its first `n`, now
/// with the client flag cleared), or None when it asks for none or is not
/// a sockperf message.
pub fn answer_datagram(datagram: &mut [u8]) -> Option<usize> {
    if datagram.len() < HEADER {
        return None;
    }
    let len = length(datagram).ok().filter(|&l| l <= datagram.len())?;
    answer_in_place(&mut datagram[..len]).then_some(len)
}

/// Frames the whole messages at the start of `buf` and moves the replies
/// they ask for to its front, in order. Returns (bytes of replies, bytes
/// of whole messages): what follows those is the start of a message still
/// arriving.
pub fn compact(buf: &mut [u8]) -> Result<(usize, usize), BadLength> {
    let (mut read, mut write) = (0, 0);
    while buf.len() - read >= HEADER {
        let len = length(&buf[read..])?;
        if buf.len() - read < len {
            break;
        }
        if answer_in_place(&mut buf[read..read + len]) {
            buf.copy_within(read..read + len, write);
            write += len;
        }
        read += len;
    }
    Ok((write, read))
}

/// The length of the message that starts `partial` (its first bytes), if
/// enough of it is there to say.
pub fn pending_length(partial: &[u8]) -> Result<Option<usize>, BadLength> {
    if partial.len() < HEADER {
        return Ok(None);
    }
    length(partial).map(Some)
}

/// One TCP connection's stream of messages, for servers that receive into
/// a `Vec`: keeps the start of a message that a read cut off.
#[derive(Debug, Default)]
pub struct Stream {
    carry: Vec<u8>,
}

impl Stream {
    /// `buf` holds the bytes just received; on return it holds the replies
    /// they complete (perhaps none). The vectors swap rather than copy when
    /// bytes were carried, so once both have grown to a read's size plus a
    /// message, no call allocates.
    pub fn feed(&mut self, buf: &mut Vec<u8>) -> Result<(), BadLength> {
        if !self.carry.is_empty() {
            self.carry.extend_from_slice(buf);
            std::mem::swap(&mut self.carry, buf);
            self.carry.clear();
        }
        let (replies, whole) = compact(buf)?;
        self.carry.extend_from_slice(&buf[whole..]);
        buf.truncate(replies);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as sockperf's client sends it.
    pub fn message(seq: u64, flags: u16, len: usize) -> Vec<u8> {
        let mut m = vec![0xab; len];
        m[..8].copy_from_slice(&seq.to_be_bytes());
        m[8..10].copy_from_slice(&flags.to_be_bytes());
        m[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        m
    }

    fn reply_of(m: &[u8]) -> Vec<u8> {
        let mut r = m.to_vec();
        r[FLAGS] &= !CLIENT;
        r
    }

    #[test]
    fn a_datagram_that_asks_is_answered_with_the_client_flag_cleared() {
        let mut m = message(7, 3, 64);
        assert_eq!(answer_datagram(&mut m), Some(64));
        assert_eq!(m, reply_of(&message(7, 3, 64)));
        assert_eq!(&m[8..10], &[0, 2]);
    }

    #[test]
    fn datagrams_that_do_not_ask_get_nothing() {
        for flags in [1, 2, 0, 1 | 2 | 4] {
            assert_eq!(answer_datagram(&mut message(1, flags, 64)), None, "{flags}");
        }
        assert_eq!(answer_datagram(&mut [0u8; 13]), None);
        let mut short = message(1, 3, 64);
        short.truncate(40); // says 64 bytes, holds 40
        assert_eq!(answer_datagram(&mut short), None);
        let mut bad = message(1, 3, 64);
        bad[10..14].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(answer_datagram(&mut bad), None);
    }

    #[test]
    fn a_stream_is_framed_across_reads_of_any_size() {
        // Messages that ask and that don't, of several sizes, cut at every
        // possible read size; the replies must come out whole and in order.
        let msgs = [
            message(1, 3, 64),
            message(2, 1, 100), // no reply
            message(3, 3, 14),
            message(4, 3 | 4, 30), // warm-up: no reply
            message(5, 3, 1024),
        ];
        let stream: Vec<u8> = msgs.concat();
        let want: Vec<u8> = [&msgs[0], &msgs[2], &msgs[4]]
            .iter()
            .flat_map(|m| reply_of(m))
            .collect();
        for read in [1, 2, 13, 14, 15, 63, 64, 65, 500, stream.len()] {
            let mut s = Stream::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(read) {
                let mut buf = chunk.to_vec();
                s.feed(&mut buf).unwrap();
                got.extend_from_slice(&buf);
            }
            assert_eq!(got, want, "reads of {read}");
            assert!(s.carry.is_empty());
        }
    }

    #[test]
    fn a_bad_length_is_an_error() {
        let mut m = message(1, 3, 64);
        m[10..14].copy_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        assert_eq!(
            Stream::default().feed(&mut m),
            Err(BadLength(MAX_MESSAGE as u32 + 1))
        );
        assert_eq!(pending_length(&m[..10]), Ok(None));
        assert_eq!(pending_length(&message(1, 3, 64)), Ok(Some(64)));
    }
}
