//! The helper pool for regular files, which epoll cannot watch: a few
//! threads doing `pread`/`pwrite`, reporting back through the port's waker.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::Waker;
use crate::port::Buf;
use crate::sync::lock;
use crate::sys::inflight::OpId;
use crate::sys::op::Op;

/// At most this many helper threads per port.
const MAX_THREADS: usize = 4;

struct Job {
    id: OpId,
    file: Arc<OwnedFd>,
    write: bool,
    offset: u64,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: `ptr` points into the heap buffer of an operation that the port's
// in-flight table owns until this job's result has been collected, which
// happens only after the job has finished with it; nothing else touches the
// buffer meanwhile.
unsafe impl Send for Job {}

struct FilePoolState {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    finished: Mutex<Vec<(OpId, i32)>>,
    /// Jobs submitted and not yet finished with their buffers.
    busy: AtomicUsize,
    threads: AtomicUsize,
    shut_down: AtomicBool,
    waker: Arc<Waker>,
}

pub(crate) struct FilePool {
    inner: Arc<FilePoolState>,
}

impl FilePool {
    pub(crate) fn new(waker: Arc<Waker>) -> Self {
        FilePool {
            inner: Arc::new(FilePoolState {
                jobs: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
                finished: Mutex::new(Vec::new()),
                busy: AtomicUsize::new(0),
                threads: AtomicUsize::new(0),
                shut_down: AtomicBool::new(false),
                waker,
            }),
        }
    }

    /// Hands a read or write of a regular file to a helper thread.
    pub(crate) fn submit(&self, id: OpId, file: Arc<OwnedFd>, op: Op, buf: &mut Option<Buf>) {
        let (write, offset) = match op {
            Op::WriteAt(o) => (true, o),
            Op::ReadAt(o) => (false, o),
            _ => unreachable!("only file reads and writes go to the pool"),
        };
        let (ptr, len) = match (write, buf.as_mut()) {
            (false, Some(b)) => b.write_ptr(),
            (true, Some(b)) => (b.read_ptr() as *mut u8, b.len()),
            (_, None) => (std::ptr::null_mut(), 0),
        };
        let busy = self.inner.busy.fetch_add(1, Ordering::AcqRel) + 1;
        lock(&self.inner.jobs).push_back(Job {
            id,
            file,
            write,
            offset,
            ptr,
            len,
        });
        self.inner.ready.notify_one();
        let threads = self.inner.threads.load(Ordering::Acquire);
        if threads < MAX_THREADS.min(busy) {
            self.inner.threads.fetch_add(1, Ordering::AcqRel);
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("ringport-files".into())
                .spawn(move || work(&inner));
            if spawned.is_err() {
                self.inner.threads.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Results of finished jobs: (operation, result or negated errno).
    pub(crate) fn finished(&self) -> Vec<(OpId, i32)> {
        std::mem::take(&mut *lock(&self.inner.finished))
    }

    /// Whether a job may still be using its buffer.
    pub(crate) fn busy(&self) -> bool {
        self.inner.busy.load(Ordering::Acquire) > 0
    }

    /// Lets the helper threads exit once the queue is empty.
    pub(crate) fn shut_down(&self) {
        self.inner.shut_down.store(true, Ordering::Release);
        let _guard = lock(&self.inner.jobs);
        self.inner.ready.notify_all();
    }
}

fn work(inner: &FilePoolState) {
    loop {
        let job = {
            let mut jobs = lock(&inner.jobs);
            loop {
                if let Some(j) = jobs.pop_front() {
                    break j;
                }
                if inner.shut_down.load(Ordering::Acquire) {
                    inner.threads.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                jobs = inner.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
            }
        };
        let fd = job.file.as_raw_fd();
        // SAFETY: ptr/len name the operation's own buffer (see `Job`), the
        // descriptor is our duplicate, alive while `job.file` is.
        let r = unsafe {
            if job.write {
                libc::pwrite(fd, job.ptr.cast(), job.len, job.offset as libc::off_t)
            } else {
                libc::pread(fd, job.ptr.cast(), job.len, job.offset as libc::off_t)
            }
        };
        let res = if r < 0 {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            r.min(i32::MAX as isize) as i32
        };
        lock(&inner.finished).push((job.id, res));
        inner.busy.fetch_sub(1, Ordering::AcqRel);
        inner.waker.wake();
    }
}
