//! The io_uring engine of a completion queue.
//!
//! Each queue owns an io_uring ring. Request queues submit to it (under the
//! submission lock), the owner reads its CQ ring (under the consumer lock,
//! uncontended when one thread dequeues, so a dequeue is a few loads and
//! stores on shared memory), and a request table keeps each request and its
//! kernel-visible memory until its result is dequeued.
//!
//! Results the queue has taken out of the ring but not yet handed over (when
//! `wait` looks for a result that may notify, or a resize moves to a bigger
//! ring) wait in `carry`, which is always read before the ring. So do the
//! results of datagram receives carried out in user space: where a lane's
//! next chain would start, datagrams already waiting in the socket go into
//! its waiting receives with one `recvmmsg` (see [`harvest`]), and only the
//! rest go to the ring.
//!
//! Requests reach the ring through their request queue's [`Lane`] of their
//! kind (held by the request queue and, beside each request, by the table), one linked chain at a time, so that they complete in posting order
//! (see [`lane`]). Wherever a completion is taken out of the ring (dequeue,
//! a notification's check, wait, resize), the lane learns of it, and a chain
//! that has ended lets the next one go, in one `io_uring_enter` for all the
//! lanes that one look at the ring restarted; a dequeue that restarts
//! nothing makes no system call.
//!
//! A lane of datagram receives goes another way where the kernel allows:
//! its receives are published, in posting order, to a provided-buffer ring
//! that one multishot `RECV` consumes (see [`shot`]); the datagrams land in
//! the posted slices in that order, with no system call per receive.
//!
//! The files: [`queue`] (the queue, its submission and consumer sides,
//! taking requests in, handing results over, cancelling, closing),
//! [`notification`], [`resize`], [`chain`] (starting lanes' chains),
//! [`harvest`] (datagrams taken straight from the socket), [`shot`]
//! (multishot receives into buffer rings) and [`buf_ring`] (a buffer
//! group's memory), [`request_table`],
//! [`lane`].
//!
//! Lock order: consumer, then submission, then the request table, then a
//! lane, then capacity; the buffer registry's lock is taken last, alone or
//! under the request table.

mod buf_ring;
mod chain;
mod harvest;
mod lane;
mod notification;
mod queue;
mod request_table;
mod resize;
mod shot;
mod submit;

pub(super) use self::lane::Lane;
pub(super) use self::queue::{queue_ring, UringCq};
