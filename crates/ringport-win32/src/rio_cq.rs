//! RIO completion queues: creation with polled, event or port
//! notification, `RIONotify`, `RIODequeueCompletion` (no system call: a read
//! of the queue plus the copies into the caller's registered memory),
//! resizing and closing.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use ringport::rio::{CompletionQueue, Notify, RioError, RioResult};

use crate::error::{self, code};
use crate::port::Token;
use crate::rio::{unstage, Rq};
use crate::{ffi, handles};

/// `RIO_CORRUPT_CQ`.
pub const RIO_CORRUPT_CQ: u32 = 0xFFFF_FFFF;
/// `RIO_EVENT_COMPLETION`.
pub const RIO_EVENT_COMPLETION: i32 = 1;
/// `RIO_IOCP_COMPLETION`.
pub const RIO_IOCP_COMPLETION: i32 = 2;

/// `RIO_NOTIFICATION_COMPLETION` (the x64 layout: the union's three words
/// after the type).
#[repr(C)]
pub struct Notification {
    pub kind: i32,
    pub a: usize,
    pub b: usize,
    pub c: usize,
}

/// `RIORESULT`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RioResultC {
    pub status: i32,
    pub bytes: u32,
    pub socket_context: u64,
    pub request_context: u64,
}

/// Event notification: ringport signals its own eventfd; a thread per queue
/// turns each notification into `SetEvent` on the caller's event.
struct Bridge {
    event: usize,
    reset: bool,
    /// Armed by RIONotify, cleared by the bridge thread; `None`: closing.
    armed: Mutex<Option<bool>>,
    cv: Condvar,
}

/// A completion queue (`RIO_CQ` points to it, an `Arc` given to C).
pub struct Cq {
    pub(crate) cq: CompletionQueue,
    bridge: Option<Arc<Bridge>>,
}

/// The queue a `RIO_CQ` names, for as long as the caller holds it.
pub(crate) fn cq<'a>(p: *const Cq) -> Option<&'a Cq> {
    // SAFETY: a RIO_CQ is an Arc<Cq> given out by RIOCreateCompletionQueue
    // and alive until RIOCloseCompletionQueue; using it afterwards is the
    // caller's error on Windows too.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// `RIOCreateCompletionQueue`.
pub(crate) extern "C" fn rio_create_completion_queue(
    size: u32,
    notification: *const Notification,
) -> usize {
    ffi::guard(0, || {
        // SAFETY: the caller's structure, valid for the call when not null.
        let n = (!notification.is_null()).then(|| unsafe { &*notification });
        let (notify, bridge) = match n {
            None => (Notify::Polled, None),
            Some(n) if n.kind == RIO_IOCP_COMPLETION => {
                let Some(port) = handles::port(n.a) else {
                    return error::fail(code::WSAEINVAL) as usize;
                };
                if n.c == 0 {
                    return error::fail(code::WSAEINVAL) as usize;
                }
                let token = Token { ov: n.c, op: None };
                (Notify::port(&port.cp, n.b as u64, token), None)
            }
            Some(n) if n.kind == RIO_EVENT_COMPLETION => {
                if handles::waitable(n.a).is_none() {
                    return error::fail(code::WSAEINVAL) as usize;
                }
                let bridge = Arc::new(Bridge {
                    event: n.a,
                    reset: n.b as u32 != 0,
                    armed: Mutex::new(Some(false)),
                    cv: Condvar::new(),
                });
                (Notify::Event, Some(bridge))
            }
            Some(_) => return error::fail(code::WSAEINVAL) as usize,
        };
        let q = match CompletionQueue::new(size, notify) {
            Ok(q) => q,
            Err(e) => return error::fail(error::from_ringport(&e)) as usize,
        };
        let cq = Arc::new(Cq { cq: q, bridge });
        if let Some(b) = &cq.bridge {
            let (b, q) = (b.clone(), cq.clone());
            let spawned = std::thread::Builder::new()
                .name("rio-event".into())
                .spawn(move || bridge_thread(&b, &q));
            if spawned.is_err() {
                return error::fail(code::WSAENOBUFS) as usize;
            }
        }
        Arc::into_raw(cq) as usize
    })
}

fn bridge_thread(b: &Bridge, q: &Cq) {
    loop {
        {
            let mut armed = b.armed.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                match *armed {
                    None => return,
                    Some(true) => break,
                    Some(false) => armed = b.cv.wait(armed).unwrap_or_else(PoisonError::into_inner),
                }
            }
        }
        let r = q.cq.wait(None);
        if let Some(a) = b
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            *a = false;
        }
        match r {
            Ok(()) => {
                crate::sync::SetEvent(b.event);
            }
            Err(_) => return,
        }
    }
}

/// `RIONotify`: 0, `WSAEALREADY` while a notification is armed, or
/// `WSAEINVAL`.
pub(crate) extern "C" fn rio_notify(cq_ptr: *const Cq) -> i32 {
    ffi::guard(code::WSAEINVAL as i32, || {
        let Some(q) = cq(cq_ptr) else {
            return code::WSAEINVAL as i32;
        };
        if let Some(b) = &q.bridge {
            let mut armed = b.armed.lock().unwrap_or_else(PoisonError::into_inner);
            if *armed == Some(true) {
                return code::WSAEALREADY as i32;
            }
            if b.reset {
                crate::sync::ResetEvent(b.event);
            }
            if let Err(e) = q.cq.notify() {
                return error::from_ringport(&e) as i32;
            }
            *armed = Some(true);
            b.cv.notify_all();
            return 0;
        }
        match q.cq.notify() {
            Ok(()) => 0,
            Err(e) if e.rio() == Some(&RioError::WrongNotification) => code::WSAEINVAL as i32,
            Err(e) => error::from_ringport(&e) as i32,
        }
    })
}

thread_local! {
    static RESULTS: RefCell<Vec<RioResult>> = const { RefCell::new(Vec::new()) };
}

/// `RIODequeueCompletion`: up to `size` results, each request's bytes
/// already copied into the caller's registered memory. `RIO_CORRUPT_CQ`
/// for an invalid queue, or one whose notification is armed and has not
/// fired (only the thread that took the notification may dequeue).
pub(crate) extern "C" fn rio_dequeue_completion(
    cq_ptr: *const Cq,
    out: *mut RioResultC,
    size: u32,
) -> u32 {
    ffi::guard(RIO_CORRUPT_CQ, || {
        let Some(q) = cq(cq_ptr) else {
            return RIO_CORRUPT_CQ;
        };
        if out.is_null() || size == 0 {
            return RIO_CORRUPT_CQ;
        }
        if q.cq.is_armed() {
            error::set(code::WSAEINVAL);
            return RIO_CORRUPT_CQ;
        }
        RESULTS.with(|r| {
            let mut r = r.borrow_mut();
            r.resize(size as usize, RioResult::default());
            let n = match q.cq.dequeue(&mut r[..size as usize]) {
                Ok(n) => n,
                Err(_) => return RIO_CORRUPT_CQ,
            };
            for (i, res) in r[..n].iter().enumerate() {
                // SAFETY: i < n <= size entries at `out`, writable.
                unsafe { out.add(i).write(finish(res)) };
            }
            n as u32
        })
    })
}

/// A result as the caller sees it: its contexts, a Windows status, and the
/// receive's bytes (and addresses) copied out of the mirror.
fn finish(r: &RioResult) -> RioResultC {
    // SAFETY: the socket context of every request is its leaked Rq.
    let rq = unsafe { &*(r.socket_context as *const Rq) };
    let mut context = r.request_context;
    if let Some(rec) = rq.take(r.request_context) {
        context = rec.context;
        let ok = r.status == 0 || r.status == libc::EMSGSIZE;
        if ok {
            let [data, remote, local] = rec.copies;
            if let Some(d) = data {
                unstage(&d, r.bytes as usize);
            }
            for a in [remote, local].iter().flatten() {
                unstage(a, a.mirror.len as usize);
            }
        }
    }
    RioResultC {
        status: error::from_errno(r.status) as i32,
        bytes: r.bytes,
        socket_context: rq.context,
        request_context: context,
    }
}

/// `RIOResizeCompletionQueue`.
pub(crate) extern "C" fn rio_resize_completion_queue(cq_ptr: *const Cq, size: u32) -> i32 {
    ffi::guard(0, || match cq(cq_ptr) {
        Some(q) => match q.cq.resize(size) {
            Ok(()) => 1,
            Err(e) => error::fail(error::from_ringport(&e)),
        },
        None => error::fail(code::WSAEINVAL),
    })
}

/// `RIOCloseCompletionQueue`.
pub(crate) extern "C" fn rio_close_completion_queue(cq_ptr: *const Cq) {
    ffi::guard((), || {
        if cq_ptr.is_null() {
            return;
        }
        // SAFETY: the Arc given out by RIOCreateCompletionQueue; the caller
        // gives it back here, once.
        let q = unsafe { Arc::from_raw(cq_ptr) };
        if let Err(e) = q.cq.close() {
            error::set(error::from_ringport(&e));
        }
        if let Some(b) = &q.bridge {
            *b.armed.lock().unwrap_or_else(PoisonError::into_inner) = None;
            b.cv.notify_all();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rio::{function_table, RioBufC};
    use std::net::UdpSocket;
    use std::os::fd::IntoRawFd;

    type Register = extern "C" fn(*mut u8, u32) -> usize;
    type CreateRq = extern "C" fn(usize, u32, u32, u32, u32, *const Cq, *const Cq, usize) -> usize;
    type Receive = extern "C" fn(usize, *const RioBufC, u32, u32, usize) -> i32;

    #[test]
    fn polled_receive_lands_in_callers_memory() {
        let t = function_table();
        // SAFETY: the table's entries are these functions, in Windows' order.
        let (register, create_rq, receive): (Register, CreateRq, Receive) = unsafe {
            (
                std::mem::transmute::<usize, Register>(t.fns[10]),
                std::mem::transmute::<usize, CreateRq>(t.fns[6]),
                std::mem::transmute::<usize, Receive>(t.fns[0]),
            )
        };
        let mut memory = vec![0u8; 4096];
        let id = register(memory.as_mut_ptr(), 4096);
        assert_ne!(id, crate::rio::RIO_INVALID_BUFFERID);
        let cq = rio_create_completion_queue(8, std::ptr::null()) as *const Cq;
        assert!(!cq.is_null());
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let fd = server.into_raw_fd();
        let rq = create_rq(fd as usize, 4, 1, 0, 1, cq, cq, 42);
        assert_ne!(rq, 0);
        let slice = RioBufC {
            buffer_id: id,
            offset: 100,
            length: 64,
        };
        assert_eq!(receive(rq, &slice, 1, 0, 7), 1);
        let outside = RioBufC {
            buffer_id: id,
            offset: 4090,
            length: 64,
        };
        assert_eq!(receive(rq, &outside, 1, 0, 8), 0);
        assert_eq!(error::get(), code::WSAEINVAL);
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"mirror", addr)
            .unwrap();
        let mut out = [RioResultC {
            status: -1,
            bytes: 0,
            socket_context: 0,
            request_context: 0,
        }; 4];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut n = 0;
        while n == 0 && std::time::Instant::now() < deadline {
            n = rio_dequeue_completion(cq, out.as_mut_ptr(), 4);
        }
        assert_eq!(n, 1);
        let r = out[0];
        assert_eq!(
            (r.status, r.bytes, r.socket_context, r.request_context),
            (0, 6, 42, 7)
        );
        assert_eq!(&memory[100..106], b"mirror");
        assert_eq!(crate::winsock::closesocket(fd as usize), 0);
        rio_close_completion_queue(cq);
    }
}
