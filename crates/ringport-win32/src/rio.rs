//! Registered I/O as Windows hands it out: buffers and request queues, and
//! the `RIO_EXTENSION_FUNCTION_TABLE` ([`function_table`]). Completion
//! queues, notification and dequeue are in [`crate::rio_cq`].
//!
//! Windows registers the caller's memory; ringport registers memory it
//! allocates itself (so that it can never be freed under the kernel). Each
//! `RIORegisterBuffer` therefore registers a ringport buffer of the same
//! length, its *mirror*, and a `RIO_BUFFERID` names the pair. A send copies
//! the caller's bytes into the mirror when it is made; a receive lands in the
//! mirror and is copied into the caller's memory by `RIODequeueCompletion`,
//! before it returns the result (addresses of `RIOReceiveEx` too). The
//! slices are checked against the caller's registration first: a `RIO_BUF`
//! outside its buffer fails with `WSAEINVAL`, as on Windows.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use ringport::rio::{self, BufferId, RequestQueue, RioBuf, RioFlags};

use crate::error::{self, code};
use crate::ffi;
use crate::rio_cq::{self, Cq};

/// `RIO_BUF`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RioBufC {
    pub buffer_id: usize,
    pub offset: u32,
    pub length: u32,
}

/// `RIO_INVALID_BUFFERID`.
pub const RIO_INVALID_BUFFERID: usize = 0xFFFF_FFFF;
/// `RIO_MSG_DONT_NOTIFY`.
pub const RIO_MSG_DONT_NOTIFY: u32 = 1;
/// `RIO_MSG_DEFER`.
pub const RIO_MSG_DEFER: u32 = 2;
/// `RIO_MSG_WAITALL`.
pub const RIO_MSG_WAITALL: u32 = 4;
/// `RIO_MSG_COMMIT_ONLY`.
pub const RIO_MSG_COMMIT_ONLY: u32 = 8;

/// A registration: the caller's memory and its mirror.
#[derive(Clone, Copy)]
struct Registered {
    ptr: usize,
    len: u32,
}

type Buffers = RwLock<HashMap<u64, Registered>>;

fn buffers() -> &'static Buffers {
    static B: OnceLock<Buffers> = OnceLock::new();
    B.get_or_init(Default::default)
}

/// A checked slice: the mirror's slice and the caller's memory it stands for.
#[derive(Clone, Copy)]
pub(crate) struct Slice {
    pub(crate) mirror: RioBuf,
    pub(crate) user: usize,
}

/// Resolves a caller's `RIO_BUF` against its registration.
fn resolve(b: &RioBufC) -> Result<Slice, u32> {
    let reg = buffers()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&(b.buffer_id as u64))
        .copied()
        .ok_or(code::WSAEINVAL)?;
    if u64::from(b.offset) + u64::from(b.length) > u64::from(reg.len) {
        return Err(code::WSAEINVAL);
    }
    Ok(Slice {
        mirror: RioBuf::new(BufferId::from_u64(b.buffer_id as u64), b.offset, b.length),
        user: reg.ptr + b.offset as usize,
    })
}

/// Copies the caller's bytes of `s` into its mirror, for a send. A send of
/// the same bytes may still be in flight (the mirror is then shared for
/// reading): that is fine as long as the bytes did not change.
fn stage(s: &Slice) -> Result<(), u32> {
    let len = s.mirror.len as usize;
    // SAFETY: the slice was checked against the caller's registration, whose
    // memory Windows requires to stay valid while it is registered.
    let src = unsafe { std::slice::from_raw_parts(s.user as *const u8, len) };
    match rio::borrow_mut(&s.mirror) {
        Ok(mut m) => {
            m.copy_from_slice(src);
            Ok(())
        }
        Err(_) => match rio::borrow(&s.mirror) {
            Ok(m) if *m == *src => Ok(()),
            _ => Err(code::WSAEINVAL),
        },
    }
}

/// Copies `n` bytes of a finished receive from the mirror to the caller.
pub(crate) fn unstage(s: &Slice, n: usize) {
    let n = n.min(s.mirror.len as usize);
    if n == 0 {
        return;
    }
    if let Ok(m) = rio::borrow(&RioBuf::new(s.mirror.id, s.mirror.offset, n as u32)) {
        // SAFETY: the caller's registered memory, checked at the request.
        unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), s.user as *mut u8, n) };
    }
}

/// `RIORegisterBuffer`.
extern "C" fn rio_register_buffer(data: *mut u8, len: u32) -> usize {
    ffi::guard(RIO_INVALID_BUFFERID, || {
        if data.is_null() || len == 0 {
            error::set(code::WSAEINVAL);
            return RIO_INVALID_BUFFERID;
        }
        match rio::register_buffer(len as usize) {
            Ok(id) => {
                buffers()
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        id.as_u64(),
                        Registered {
                            ptr: data as usize,
                            len,
                        },
                    );
                id.as_u64() as usize
            }
            Err(e) => {
                error::set(error::from_ringport(&e));
                RIO_INVALID_BUFFERID
            }
        }
    })
}

/// `RIODeregisterBuffer`.
extern "C" fn rio_deregister_buffer(id: usize) {
    ffi::guard((), || {
        match rio::deregister_buffer(BufferId::from_u64(id as u64)) {
            Ok(()) => {
                buffers()
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&(id as u64));
            }
            Err(e) => error::set(error::from_ringport(&e)),
        };
    })
}

/// What a request must do when its result is dequeued.
pub(crate) struct Record {
    pub(crate) context: u64,
    /// A receive's data, remote and local address slices.
    pub(crate) copies: [Option<Slice>; 3],
}

/// A request queue (`RIO_RQ` points to it). It is never freed: results may
/// name it after its socket is closed, and it is small.
pub struct Rq {
    pub(crate) rq: RwLock<Option<RequestQueue>>,
    pub(crate) context: u64,
    records: Mutex<(Vec<Option<Record>>, Vec<u32>)>,
}

impl Rq {
    fn add(&self, r: Record) -> u64 {
        let mut g = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let (slots, free) = &mut *g;
        match free.pop() {
            Some(i) => {
                slots[i as usize] = Some(r);
                u64::from(i)
            }
            None => {
                slots.push(Some(r));
                (slots.len() - 1) as u64
            }
        }
    }

    /// Takes the record of request `i`.
    pub(crate) fn take(&self, i: u64) -> Option<Record> {
        let mut g = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let (slots, free) = &mut *g;
        let r = slots.get_mut(i as usize)?.take();
        if r.is_some() {
            free.push(i as u32);
        }
        r
    }
}

type Queues = Mutex<HashMap<i32, &'static Rq>>;

fn queues() -> &'static Queues {
    static Q: OnceLock<Queues> = OnceLock::new();
    Q.get_or_init(Default::default)
}

/// Closes the request queue of socket `fd` (closesocket): its requests are
/// cancelled and complete with `WSA_OPERATION_ABORTED`.
pub fn close_socket(fd: i32) {
    let rq = queues()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&fd);
    if let Some(rq) = rq {
        let q = rq.rq.write().unwrap_or_else(PoisonError::into_inner).take();
        drop(q);
    }
}

/// `RIOCreateRequestQueue`.
#[allow(clippy::too_many_arguments)]
extern "C" fn rio_create_request_queue(
    socket: usize,
    max_receives: u32,
    _max_receive_buffers: u32,
    max_sends: u32,
    _max_send_buffers: u32,
    receive_cq: *const Cq,
    send_cq: *const Cq,
    context: *mut libc::c_void,
) -> usize {
    ffi::guard(0, || {
        let (Some(rcq), Some(scq)) = (rio_cq::cq(receive_cq), rio_cq::cq(send_cq)) else {
            return error::fail(code::WSAEINVAL) as usize;
        };
        if max_receives == 0 && max_sends == 0 {
            return error::fail(code::WSAEINVAL) as usize;
        }
        let fd = match crate::winsock::dup(socket as i32) {
            Ok(fd) => fd,
            Err(e) => return error::fail(e) as usize,
        };
        let rq: &'static Rq = Box::leak(Box::new(Rq {
            rq: RwLock::new(None),
            context: context as u64,
            records: Mutex::new((Vec::new(), Vec::new())),
        }));
        let ctx = rq as *const Rq as u64;
        match RequestQueue::new(fd, max_receives, max_sends, &rcq.cq, &scq.cq, ctx) {
            Ok(q) => {
                *rq.rq.write().unwrap_or_else(PoisonError::into_inner) = Some(q);
                queues()
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(socket as i32, rq);
                rq as *const Rq as usize
            }
            Err(e) => {
                // SAFETY: made by Box::leak above and named by nothing else:
                // the queue was never made, so no result names it.
                drop(unsafe { Box::from_raw(rq as *const Rq as *mut Rq) });
                error::fail(error::from_ringport(&e)) as usize
            }
        }
    })
}

/// `RIOResizeRequestQueue`.
extern "C" fn rio_resize_request_queue(rq: *const Rq, receives: u32, sends: u32) -> i32 {
    ffi::guard(0, || {
        with_rq(rq, |q| {
            q.resize(receives, sends)
                .map_err(|e| error::from_ringport(&e))
        })
        .map_or_else(error::fail, |()| 1)
    })
}

fn with_rq<R>(rq: *const Rq, f: impl FnOnce(&RequestQueue) -> Result<R, u32>) -> Result<R, u32> {
    if rq.is_null() {
        return Err(code::WSAEINVAL);
    }
    // SAFETY: a RIO_RQ is a leaked Rq, never freed.
    let rq = unsafe { &*rq };
    let g = rq.rq.read().unwrap_or_else(PoisonError::into_inner);
    f(g.as_ref().ok_or(code::WSAEINVAL)?)
}

fn flags(f: u32) -> RioFlags {
    let mut out = RioFlags::NONE;
    if f & RIO_MSG_DEFER != 0 {
        out |= RioFlags::DEFER;
    }
    if f & RIO_MSG_DONT_NOTIFY != 0 {
        out |= RioFlags::DONT_NOTIFY;
    }
    if f & RIO_MSG_WAITALL != 0 {
        out |= RioFlags::WAITALL;
    }
    out
}

/// Reads an optional `RIO_BUF*`.
fn opt(b: *const RioBufC) -> Result<Option<Slice>, u32> {
    if b.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's RIO_BUF, valid for the call.
    resolve(unsafe { &*b }).map(Some)
}

/// The common path of the four request functions.
#[allow(clippy::too_many_arguments)]
fn request(
    rq: *const Rq,
    data: *const RioBufC,
    count: u32,
    local: *const RioBufC,
    remote: *const RioBufC,
    f: u32,
    context: *mut libc::c_void,
    send: bool,
    ex: bool,
) -> i32 {
    let r = with_rq(rq, |q| {
        if f & RIO_MSG_COMMIT_ONLY != 0 {
            return q.commit().map_err(|e| error::from_ringport(&e));
        }
        if data.is_null() || count != 1 {
            return Err(code::WSAEINVAL);
        }
        // SAFETY: the caller's RIO_BUF, valid for the call.
        let d = resolve(unsafe { &*data })?;
        let (l, r) = (opt(local)?, opt(remote)?);
        // SAFETY: a RIO_RQ is a leaked Rq, never freed.
        let owner = unsafe { &*rq };
        if send {
            stage(&d)?;
            for a in [l, r].iter().flatten() {
                stage(a)?;
            }
        }
        let copies = if send { [None; 3] } else { [Some(d), r, l] };
        let ctx = owner.add(Record {
            context: context as u64,
            copies,
        });
        let fl = flags(f);
        let (lm, rm) = (l.map(|s| s.mirror), r.map(|s| s.mirror));
        let res = match (send, ex) {
            (false, false) => q.receive(d.mirror, fl, ctx),
            (false, true) => q.receive_ex(d.mirror, lm, rm, fl, ctx),
            (true, false) => q.send(d.mirror, fl, ctx),
            (true, true) => q.send_ex(d.mirror, lm, rm, fl, ctx),
        };
        res.map_err(|e| {
            owner.take(ctx);
            error::from_ringport(&e)
        })
    });
    r.map_or_else(error::fail, |()| 1)
}

/// `RIOReceive`.
extern "C" fn rio_receive(
    rq: *const Rq,
    data: *const RioBufC,
    count: u32,
    flags: u32,
    context: *mut libc::c_void,
) -> i32 {
    ffi::guard(0, || {
        request(
            rq,
            data,
            count,
            std::ptr::null(),
            std::ptr::null(),
            flags,
            context,
            false,
            false,
        )
    })
}

/// `RIOReceiveEx` (control context and flags buffers are ignored).
#[allow(clippy::too_many_arguments)]
extern "C" fn rio_receive_ex(
    rq: *const Rq,
    data: *const RioBufC,
    count: u32,
    local: *const RioBufC,
    remote: *const RioBufC,
    _control: *const RioBufC,
    _flags_buf: *const RioBufC,
    flags: u32,
    context: *mut libc::c_void,
) -> i32 {
    ffi::guard(0, || {
        request(rq, data, count, local, remote, flags, context, false, true)
    })
}

/// `RIOSend`.
extern "C" fn rio_send(
    rq: *const Rq,
    data: *const RioBufC,
    count: u32,
    flags: u32,
    context: *mut libc::c_void,
) -> i32 {
    ffi::guard(0, || {
        request(
            rq,
            data,
            count,
            std::ptr::null(),
            std::ptr::null(),
            flags,
            context,
            true,
            false,
        )
    })
}

/// `RIOSendEx` (control context and flags buffers are ignored).
#[allow(clippy::too_many_arguments)]
extern "C" fn rio_send_ex(
    rq: *const Rq,
    data: *const RioBufC,
    count: u32,
    local: *const RioBufC,
    remote: *const RioBufC,
    _control: *const RioBufC,
    _flags_buf: *const RioBufC,
    flags: u32,
    context: *mut libc::c_void,
) -> i32 {
    ffi::guard(0, || {
        request(rq, data, count, local, remote, flags, context, true, true)
    })
}

/// `RIO_EXTENSION_FUNCTION_TABLE`.
#[repr(C)]
pub struct RioTable {
    pub cb_size: u32,
    pub fns: [usize; 13],
}

/// The table `WSAIoctl(SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER,
/// WSAID_MULTIPLE_RIO)` copies out.
pub fn function_table() -> &'static RioTable {
    static T: OnceLock<RioTable> = OnceLock::new();
    T.get_or_init(|| RioTable {
        cb_size: std::mem::size_of::<RioTable>() as u32,
        fns: [
            rio_receive as *const () as usize,
            rio_receive_ex as *const () as usize,
            rio_send as *const () as usize,
            rio_send_ex as *const () as usize,
            rio_cq::rio_close_completion_queue as *const () as usize,
            rio_cq::rio_create_completion_queue as *const () as usize,
            rio_create_request_queue as *const () as usize,
            rio_cq::rio_dequeue_completion as *const () as usize,
            rio_deregister_buffer as *const () as usize,
            rio_cq::rio_notify as *const () as usize,
            rio_register_buffer as *const () as usize,
            rio_cq::rio_resize_completion_queue as *const () as usize,
            rio_resize_request_queue as *const () as usize,
        ],
    })
}
