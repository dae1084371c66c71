//! [`RequestQueue`]: a socket's receives and sends, each charged to a
//! completion queue.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use super::addr::{self, ADDRESS_LEN};
use super::buffer::{self, Claim};
use super::cq::CompletionQueue;
use super::engine::{Attachment, CqShared};
use super::error::RioError;
use super::flags::{RequestKind, RioFlags};
use super::request::{Op, Request};
use super::rq_shared::{RqRef, RqShared};
use super::slice::{RioBuf, SliceUse};
use crate::sync::lock;
use crate::Error;

/// A socket's request queue (`RIO_RQ`): receives and sends on registered
/// buffers, at most `max_receives` and `max_sends` outstanding, completing
/// to a receive and a send [`CompletionQueue`] (which may be the same).
///
/// Every outstanding request is charged to its completion queue from
/// creation: [`new`](Self::new) fails if the queues lack room for
/// `max_receives` and `max_sends` more, so a completion queue can never
/// overflow. A request beyond the queue's maximum fails at once with
/// [`RioError::TooManyRequests`]; a request counts as outstanding from the
/// call that makes it until its result is dequeued.
///
/// Pending requests of one kind complete in the order they were posted, as
/// on Windows, on both backends: the receive posted first takes a stream's
/// first bytes (or a socket's first datagram), and sends put their bytes on
/// the wire in posting order, whichever threads post them. A request
/// belongs to the queue, not to the thread that posted it: that thread may
/// exit, and the request still completes with its real result.
///
/// Dropping the queue cancels its requests in flight: they complete with
/// status `ECANCELED`, and the socket is closed once the last of them has
/// been dequeued (or its completion queue closed).
///
/// ```
/// use ringport::rio::{self, CompletionQueue, Notify, RequestQueue, RioBuf, RioFlags, RioResult};
/// use std::net::UdpSocket;
///
/// let socket = UdpSocket::bind("127.0.0.1:0")?;
/// let addr = socket.local_addr()?;
/// let cq = CompletionQueue::new(64, Notify::Polled)?;
/// let rq = RequestQueue::new(socket, 32, 32, &cq, &cq, 7)?;
/// let buffer = rio::register_buffer(32 * 2048)?;
/// for i in 0..32 {
///     rq.receive(RioBuf::new(buffer, i * 2048, 2048), RioFlags::NONE, i as u64)?;
/// }
/// UdpSocket::bind("127.0.0.1:0")?.send_to(b"hello", addr)?;
///
/// let mut results = [RioResult::default(); 16];
/// let n = loop {
///     match cq.dequeue(&mut results)? {
///         0 => std::thread::yield_now(),
///         n => break n,
///     }
/// };
/// assert_eq!((n, results[0].socket_context, results[0].bytes), (1, 7, 5));
/// let slice = RioBuf::new(buffer, results[0].request_context as u32 * 2048, 5);
/// assert_eq!(&*rio::borrow(&slice)?, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RequestQueue {
    shared: Arc<RqShared>,
    /// The receive and the send completion queue (maybe the same).
    cqs: [Arc<CqShared>; 2],
    /// The socket as each of them knows it, for receives and for sends.
    attached: [Attachment; 2],
    resizing: Mutex<()>,
}

/// Slices a request uses, claimed together (all or none).
struct Claims {
    claims: [Option<Claim>; 3],
    n: usize,
}

impl Claims {
    fn new() -> Self {
        Claims {
            claims: [None; 3],
            n: 0,
        }
    }

    fn add(&mut self, buf: &RioBuf, kind: SliceUse) -> Result<*mut u8, Error> {
        match buffer::claim(buf, kind) {
            Ok((claim, ptr)) => {
                self.claims[self.n] = Some(claim);
                self.n += 1;
                Ok(ptr)
            }
            Err(e) => {
                let taken: Vec<Claim> = self.claims.iter().flatten().copied().collect();
                buffer::release(&taken);
                self.claims = [None; 3];
                Err(e)
            }
        }
    }

    fn release(self) {
        let taken: Vec<Claim> = self.claims.iter().flatten().copied().collect();
        buffer::release(&taken);
    }
}

/// The `MSG_` flags a request's `WAITALL` asks for.
fn waitall(flags: RioFlags) -> libc::c_int {
    if flags.contains(RioFlags::WAITALL) {
        libc::MSG_WAITALL
    } else {
        0
    }
}

fn address_slice(buf: &RioBuf) -> Result<(), Error> {
    if buf.len < ADDRESS_LEN {
        return Err(RioError::AddressBufferTooSmall {
            buf: *buf,
            need: ADDRESS_LEN,
        }
        .into());
    }
    Ok(())
}

impl RequestQueue {
    /// Creates the request queue of `socket` (`RIOCreateRequestQueue`),
    /// which it owns from now on.
    ///
    /// Charges `max_receives` to `receive_cq` and `max_sends` to `send_cq`,
    /// failing with [`RioError::QueueTooSmall`] if either lacks room.
    /// `socket_context` comes back in every result. Fails with
    /// [`Error::Io`] if `socket` is not a socket.
    pub fn new(
        socket: impl Into<OwnedFd>,
        max_receives: u32,
        max_sends: u32,
        receive_cq: &CompletionQueue,
        send_cq: &CompletionQueue,
        socket_context: u64,
    ) -> Result<RequestQueue, Error> {
        let fd: OwnedFd = socket.into();
        let (rcq, scq) = (receive_cq.shared().clone(), send_cq.shared().clone());
        let capacities = [&rcq, &scq].map(|cq| cq.common.capacity.clone());
        let shared = RqShared::new(fd, socket_context, capacities)?;
        let same = Arc::ptr_eq(&rcq, &scq);
        if same {
            rcq.charge(
                max_receives
                    .checked_add(max_sends)
                    .ok_or(Error::InvalidArgument("too many outstanding requests"))?,
            )?;
        } else {
            rcq.charge(max_receives)?;
            if let Err(e) = scq.charge(max_sends) {
                rcq.uncharge(max_receives);
                return Err(e);
            }
        }
        // Charged: dropping `shared` gives the charges back from now on.
        shared.set_limits([max_receives, max_sends]);
        // Epoll-backed queues watch the socket from now on.
        let fd = shared.raw_fd();
        let attached = if same {
            rcq.attach(fd, [true, true])?
        } else {
            let [r, _] = rcq.attach(fd, [true, false])?;
            match scq.attach(fd, [false, true]) {
                Ok([_, s]) => [r, s],
                Err(e) => {
                    rcq.detach(&[r, None]);
                    return Err(e);
                }
            }
        };
        let [Some(r), Some(s)] = attached else {
            return Err(RioError::QueueClosed.into());
        };
        Ok(RequestQueue {
            shared: Arc::new(shared),
            cqs: [rcq, scq],
            attached: [r, s],
            resizing: Mutex::new(()),
        })
    }

    /// The context given at creation, carried by every result.
    pub fn socket_context(&self) -> u64 {
        self.shared.socket_context
    }

    /// Receives and sends outstanding now.
    pub fn outstanding(&self) -> (u32, u32) {
        let o = &self.shared.outstanding;
        (o[0].load(SeqCst), o[1].load(SeqCst))
    }

    /// The most receives and sends that may be outstanding.
    pub fn limits(&self) -> (u32, u32) {
        let m = &self.shared.max;
        (m[0].load(SeqCst), m[1].load(SeqCst))
    }

    fn check(&self, flags: RioFlags) -> Result<(), Error> {
        if flags.contains(RioFlags::COMMIT_ONLY) {
            return Err(Error::InvalidArgument(
                "COMMIT_ONLY takes no buffer: call commit()",
            ));
        }
        if flags.contains(RioFlags::WAITALL) && self.shared.datagram {
            return Err(RioError::WaitAllOnDatagram.into());
        }
        Ok(())
    }

    #[inline(always)]
    fn start(
        &self,
        kind: RequestKind,
        flags: RioFlags,
        context: u64,
        claims: [Option<Claim>; 3],
        op: Op,
        rq: RqRef,
    ) -> Result<(), Error> {
        let request = Request {
            rq,
            kind,
            context,
            quiet: flags.contains(RioFlags::DONT_NOTIFY),
            op,
            claims,
        };
        self.cqs[kind.index()].submit(
            request,
            &self.attached[kind.index()],
            flags.contains(RioFlags::DEFER),
        )
    }

    /// Takes a place for a request of `kind` in the queue and in its
    /// completion queue, then claims the request's slices with `claim`; if
    /// that fails, the claims made so far and the place are given back.
    fn claim<R>(
        &self,
        kind: RequestKind,
        claim: impl FnOnce(&mut Claims) -> Result<R, Error>,
    ) -> Result<(R, Claims, RqRef), Error> {
        let rq = self.shared.reserve(kind)?;
        let mut claims = Claims::new();
        match claim(&mut claims) {
            Ok(r) => Ok((r, claims, rq)),
            Err(e) => {
                claims.release();
                rq.end(kind);
                Err(e)
            }
        }
    }

    /// Starts a receive into `buf` (`RIOReceive`); its result goes to the
    /// receive completion queue with `request_context`.
    ///
    /// Fails at once, starting nothing, if the queue has its maximum of
    /// receives outstanding, if `buf` is out of bounds, not registered, or
    /// overlaps bytes in use (a borrow, another receive, a send), for
    /// `WAITALL` on a datagram socket, and once the completion queue closed.
    /// A datagram longer than `buf` completes with status `EMSGSIZE` and
    /// `buf.len` bytes.
    pub fn receive(&self, buf: RioBuf, flags: RioFlags, request_context: u64) -> Result<(), Error> {
        self.check(flags)?;
        let (claim, ptr, rq) = self.claim_one(RequestKind::Receive, &buf, SliceUse::Receive)?;
        let mut msg_flags = waitall(flags);
        if self.shared.datagram {
            // The kernel then reports a datagram's full length: truncation shows.
            msg_flags |= libc::MSG_TRUNC;
        }
        let op = Op::Recv {
            ptr,
            len: buf.len,
            flags: msg_flags,
        };
        self.start_one(RequestKind::Receive, flags, request_context, claim, op, rq)
    }

    /// [`claim`](Self::claim) for a request of one slice, the path of every
    /// `receive` and `send`: the claim comes back as it is, not through a
    /// closure's result and a [`Claims`] (each a copy, and in a receive loop
    /// those copies, of oddly aligned enum payloads, stalled on
    /// store-to-load forwarding).
    #[inline(always)]
    fn claim_one(
        &self,
        kind: RequestKind,
        buf: &RioBuf,
        slice_use: SliceUse,
    ) -> Result<(Claim, *mut u8, RqRef), Error> {
        let rq = self.shared.reserve(kind)?;
        match buffer::claim(buf, slice_use) {
            Ok((claim, ptr)) => Ok((claim, ptr, rq)),
            Err(e) => {
                rq.end(kind);
                Err(e)
            }
        }
    }

    /// [`start`](Self::start) for a request of one slice.
    #[inline(always)]
    fn start_one(
        &self,
        kind: RequestKind,
        flags: RioFlags,
        context: u64,
        claim: Claim,
        op: Op,
        rq: RqRef,
    ) -> Result<(), Error> {
        self.start(kind, flags, context, [Some(claim), None, None], op, rq)
    }

    /// Starts a send of `buf` (`RIOSend`) on a connected socket; its result
    /// goes to the send completion queue with `request_context`.
    ///
    /// Fails at once as [`receive`](Self::receive) does; a send may share
    /// bytes with other sends and shared borrows, not with a receive or a
    /// mutable borrow.
    pub fn send(&self, buf: RioBuf, flags: RioFlags, request_context: u64) -> Result<(), Error> {
        self.check(flags)?;
        let (claim, ptr, rq) = self.claim_one(RequestKind::Send, &buf, SliceUse::Send)?;
        let op = Op::Send {
            ptr,
            len: buf.len,
            flags: waitall(flags),
        };
        self.start_one(RequestKind::Send, flags, request_context, claim, op, rq)
    }

    /// Starts a receive that also reports addresses (`RIOReceiveEx`): the
    /// sender's into `remote`, and the local address the datagram was sent
    /// to into `local` (this turns on `IP_PKTINFO` for the socket). Address
    /// slices hold at least [`ADDRESS_LEN`] bytes; read them with
    /// [`read_addr`](super::read_addr) once the result is dequeued.
    pub fn receive_ex(
        &self,
        buf: RioBuf,
        local: Option<RioBuf>,
        remote: Option<RioBuf>,
        flags: RioFlags,
        request_context: u64,
    ) -> Result<(), Error> {
        self.check(flags)?;
        for a in local.iter().chain(remote.iter()) {
            address_slice(a)?;
        }
        let port = match local {
            Some(_) => Some(self.shared.local_port()?),
            None => None,
        };
        let ((ptr, remote, local), claims, rq) = self.claim(RequestKind::Receive, |c| {
            let ptr = c.add(&buf, SliceUse::Receive)?;
            let remote = match remote {
                Some(r) => Some((c.add(&r, SliceUse::Receive)?, r.len)),
                None => None,
            };
            let local = match (local, port) {
                (Some(l), Some(port)) => Some((c.add(&l, SliceUse::Receive)?, port)),
                _ => None,
            };
            Ok((ptr, remote, local))
        })?;
        let op = Op::RecvMsg {
            ptr,
            len: buf.len,
            remote,
            local,
            flags: waitall(flags) as u32,
        };
        self.start(
            RequestKind::Receive,
            flags,
            request_context,
            claims.claims,
            op,
            rq,
        )
    }

    /// Starts a send to the address in `remote` (`RIOSendEx`), from the
    /// local address in `local` if given (through `IP_PKTINFO`). Address
    /// slices hold a `sockaddr_in`/`sockaddr_in6` (see
    /// [`write_addr`](super::write_addr)) in at least [`ADDRESS_LEN`] bytes.
    pub fn send_ex(
        &self,
        buf: RioBuf,
        local: Option<RioBuf>,
        remote: Option<RioBuf>,
        flags: RioFlags,
        request_context: u64,
    ) -> Result<(), Error> {
        self.check(flags)?;
        for a in local.iter().chain(remote.iter()) {
            address_slice(a)?;
        }
        // The local address is copied into the request now.
        let local = match local {
            Some(l) => Some(addr::read_addr(&buffer::borrow(&l)?).ok_or(
                Error::InvalidArgument("local address slice holds no IP address"),
            )?),
            None => None,
        };
        let ((ptr, remote), claims, rq) = self.claim(RequestKind::Send, |c| {
            let ptr = c.add(&buf, SliceUse::Send)?;
            let remote = match remote {
                Some(r) => {
                    let p = c.add(&r, SliceUse::Send)?;
                    // SAFETY: the slice is at least ADDRESS_LEN bytes and
                    // claimed for reading: no writer can touch it.
                    let len = unsafe { addr::len_at(p) };
                    if len == 0 {
                        return Err(Error::InvalidArgument(
                            "remote address slice holds no IP address",
                        ));
                    }
                    Some((p.cast_const(), len))
                }
                None => None,
            };
            Ok((ptr.cast_const(), remote))
        })?;
        let op = Op::SendMsg {
            ptr,
            len: buf.len,
            remote,
            local,
            flags: waitall(flags) as u32,
        };
        self.start(
            RequestKind::Send,
            flags,
            request_context,
            claims.claims,
            op,
            rq,
        )
    }

    /// Hands every request queued with [`RioFlags::DEFER`] to the kernel
    /// (`RIO_MSG_COMMIT_ONLY`): on io_uring, one `io_uring_enter` per
    /// completion queue that has any; on epoll, each is attempted at once
    /// (or left waiting for readiness) in order. Deferred requests of other
    /// request queues on the same completion queues go too.
    pub fn commit(&self) -> Result<(), Error> {
        let [rcq, scq] = &self.cqs;
        rcq.commit()?;
        if !Arc::ptr_eq(rcq, scq) {
            scq.commit()?;
        }
        Ok(())
    }

    /// Changes the most receives and sends outstanding
    /// (`RIOResizeRequestQueue`). Growing charges the completion queues and
    /// fails with [`RioError::QueueTooSmall`] if they lack room; shrinking
    /// below what is outstanding now fails with
    /// [`RioError::BelowOutstanding`]. On failure nothing changes.
    pub fn resize(&self, max_receives: u32, max_sends: u32) -> Result<(), Error> {
        let _one_at_a_time = lock(&self.resizing);
        let (old_r, _) = self.limits();
        self.set_max(RequestKind::Receive, max_receives)?;
        if let Err(e) = self.set_max(RequestKind::Send, max_sends) {
            let _ = self.set_max(RequestKind::Receive, old_r);
            return Err(e);
        }
        Ok(())
    }

    /// Changes one limit, charging or uncharging its completion queue.
    fn set_max(&self, kind: RequestKind, new: u32) -> Result<(), Error> {
        let (k, cq) = (kind.index(), &self.cqs[kind.index()]);
        let (max, outstanding) = (&self.shared.max[k], &self.shared.outstanding[k]);
        let old = max.load(SeqCst);
        if new > old {
            cq.charge(new - old)?;
            max.store(new, SeqCst);
        } else if new < old {
            // Lower the limit first, then look: a request counted before
            // this store is seen below; one after it sees the new limit.
            max.store(new, SeqCst);
            let in_use = outstanding.load(SeqCst);
            if in_use > new {
                max.store(old, SeqCst);
                return Err(RioError::BelowOutstanding { in_use, asked: new }.into());
            }
            cq.uncharge(old - new);
        }
        Ok(())
    }
}

impl AsFd for RequestQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.fd.as_fd()
    }
}

impl AsRawFd for RequestQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.raw_fd()
    }
}

impl Drop for RequestQueue {
    fn drop(&mut self) {
        self.shared.set_closing();
        let [rcq, scq] = &self.cqs;
        let [r, s] = self.attached.clone().map(Some);
        if Arc::ptr_eq(rcq, scq) {
            rcq.cancel(&self.shared, &[r, s]);
        } else {
            rcq.cancel(&self.shared, &[r, None]);
            scq.cancel(&self.shared, &[None, s]);
        }
    }
}

impl std::fmt::Debug for RequestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestQueue")
            .field("fd", &self.shared.raw_fd())
            .field("socket_context", &self.shared.socket_context)
            .field("limits", &self.limits())
            .field("outstanding", &self.outstanding())
            .finish()
    }
}
