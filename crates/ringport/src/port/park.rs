//! Waiting on a port: parking on the LIFO waiter stack, and the kernel
//! sleeper's role (one waiting thread sleeps in the kernel source, so that
//! completions wake a thread directly; see [`Kernel`]).
//!
//! The protocol's state and invariant are described in `core.rs`; this file
//! holds the transitions that only a waiting thread makes, all of them under
//! the stack's mutex.

use std::time::Instant;

use super::core::{handshake, Core, Kernel, NoPacket, Parked, Stack};
use super::state::{MAX_WAITERS, ONE_ACTIVE, ONE_WAITER};
use super::waiter::{Waiter, CLOSED, GRANTED, LEAD, WAITING};
use crate::sync::{fence, lock, Arc, Ordering};

/// What [`Core::announce`] did with the caller.
enum Parking<T> {
    /// It sleeps in the kernel source, at the bottom of the stack.
    InKernel,
    /// It is parked in user space, on top of the stack.
    InUserSpace,
    /// It took a packet instead of parking.
    Took(T),
}

impl<T> Core<T> {
    /// Parks the (inactive) caller until it is granted a packet, the port
    /// closes, or the deadline passes. On `Ok` the caller is active. If the
    /// port has a kernel source and nobody sleeps on it, the caller sleeps
    /// there instead of in user space, harvesting what wakes it.
    pub fn park(&self, me: &Arc<Waiter>, deadline: Option<Instant>) -> Result<T, NoPacket> {
        // Where a grant puts our packet (see `Parked::slot`).
        let mut slot: Option<T> = None;
        loop {
            match self.claim() {
                Err(NoPacket::Empty) => {}
                other => return other,
            }
            let in_kernel = match self.announce(me, std::ptr::addr_of_mut!(slot))? {
                Parking::Took(p) => return Ok(p),
                Parking::InKernel => true,
                Parking::InUserSpace => false,
            };
            if let (true, Some(kernel)) = (in_kernel, &self.kernel) {
                kernel.sleep(deadline);
                let expired = deadline.is_some_and(|d| Instant::now() >= d);
                if me.verdict() != WAITING || expired {
                    match self.leave_kernel(me) {
                        GRANTED => return Self::granted(&mut slot),
                        CLOSED => return Err(NoPacket::Closed),
                        // Not granted and not past the deadline: wait again.
                        _ if !expired => continue,
                        _ => return Err(NoPacket::Empty),
                    }
                }
                // Completions woke us (or nothing did). Step off the stack and
                // reap, keeping the first completion: the thread that is awake
                // runs it, with no hop to another thread. The rest go to the
                // most recent waiters.
                match self.step_out(me) {
                    WAITING => {}
                    GRANTED => return Self::granted(&mut slot),
                    CLOSED => return Err(NoPacket::Closed),
                    _ => return Err(NoPacket::Empty),
                }
                if let Some(p) = self.harvest_kept(kernel.as_ref()) {
                    return Ok(p);
                }
                continue; // nothing for us: wait again
            }
            // Parking in user space: no enter of ours will submit what this
            // thread held back.
            if let Some(k) = &self.kernel {
                k.submit_held();
            }
            let verdict = match me.wait(deadline) {
                WAITING => self.unpark_timed_out(me),
                v => v,
            };
            match verdict {
                GRANTED => return Self::granted(&mut slot),
                CLOSED => return Err(NoPacket::Closed),
                // Promoted: take the kernel sleeper's place (even past our
                // deadline, for one pass, so that leaving promotes the next
                // waiter and the role is never dropped while threads wait).
                LEAD => continue,
                _ => return Err(NoPacket::Empty),
            }
        }
    }

    /// The packet a grant left in our slot. A `GRANTED` verdict is written
    /// after the slot, so it is there; `Empty` would only hide a broken
    /// protocol, and nothing is lost by it.
    fn granted(slot: &mut Option<T>) -> Result<T, NoPacket> {
        debug_assert!(slot.is_some(), "granted without a packet");
        slot.take().ok_or(NoPacket::Empty)
    }

    /// Puts the caller on the waiter stack, or in the kernel sleeper's place
    /// at its bottom. If, once counted as a waiter, it sees a packet it
    /// could take, it takes it: it is the most recent waiter, so a grant
    /// would have gone to it (withdrawing instead would let a post that
    /// waits for the mutex grant that packet to an older waiter).
    fn announce(&self, me: &Arc<Waiter>, slot: *mut Option<T>) -> Result<Parking<T>, NoPacket> {
        let mut stack = lock(&self.stack);
        let mut s = self.state();
        loop {
            if s.closed() {
                return Err(NoPacket::Closed);
            }
            if s.waiters() >= MAX_WAITERS {
                return Err(NoPacket::TooManyWaiters);
            }
            match self.cas(s, s.0 + ONE_WAITER) {
                Ok(()) => break,
                Err(now) => s = now,
            }
        }
        // Our waiter count is published (the CAS above). The fence pairs
        // with a poster's (push, fence, read the word) and a releaser's: we
        // see the packet or the free slot, or they see us and grant (after
        // we let the mutex go). It pairs with kernel_work_started's too:
        // either we see its operation in flight and sleep in the kernel, or
        // it sees us waiting and sends us there.
        fence(Ordering::SeqCst);
        let mut s = self.state_sc();
        while s.active() < self.limit && !self.queue.is_empty() {
            // Grant ourselves, as `grant_runnable` would (nobody else can
            // while we hold the mutex).
            if let Err(now) = self.cas(s, s.0 - ONE_WAITER + ONE_ACTIVE) {
                s = now;
                continue;
            }
            if let Some(p) = self.queue.pop() {
                self.note_active(s.active() + 1);
                return Ok(Parking::Took(p));
            }
            // Taken meanwhile by a thread calling `get`: a waiter again.
            self.state
                .fetch_add(ONE_WAITER - ONE_ACTIVE, Ordering::SeqCst);
            handshake();
            s = self.state_sc();
        }
        let in_kernel = !stack.sleeper && self.kernel.as_ref().is_some_and(|k| k.busy());
        me.reset(in_kernel);
        let entry = Parked {
            waiter: me.clone(),
            slot,
        };
        if in_kernel {
            stack.sleeper = true;
            self.has_sleeper.store(true, Ordering::SeqCst);
            stack.waiters.insert(0, entry);
            Ok(Parking::InKernel)
        } else {
            stack.waiters.push(entry);
            Ok(Parking::InUserSpace)
        }
    }

    /// The former kernel sleeper, off the stack, reaps what woke it and
    /// keeps the first packet. Whoever waits behind it then watches the
    /// kernel, unless a thread took the role while it harvested (it left
    /// the role in `step_out`): promoting then would clear *its* claim and
    /// could hand it a LEAD verdict while it sleeps there, which once sent
    /// a `get(None)` home empty.
    fn harvest_kept(&self, kernel: &dyn Kernel<T>) -> Option<T> {
        let p = kernel.harvest(self, true)?;
        let mut stack = lock(&self.stack);
        if !stack.sleeper {
            self.promote(&mut stack);
        }
        Some(p)
    }

    /// Called when the kernel sleeper has left the kernel (under the stack
    /// mutex): if threads are parked in user space, the most recent takes
    /// its place, so kernel completions always have a thread watching.
    fn promote(&self, stack: &mut Stack<T>) {
        stack.sleeper = false;
        self.has_sleeper.store(false, Ordering::SeqCst);
        // Pairs with the fence in kernel_work_started: either we see its
        // operation in flight, or it sees that nobody sleeps in the kernel.
        fence(Ordering::SeqCst);
        if self.kernel.as_ref().is_some_and(|k| k.busy()) {
            self.lead_top(stack);
        }
    }

    /// Sends the most recent user-space waiter, if any, to sleep in the
    /// kernel (under the stack mutex, with no sleeper there).
    fn lead_top(&self, stack: &mut Stack<T>) {
        if let Some(top) = stack.waiters.pop() {
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
            top.waiter.release(LEAD);
        }
    }

    /// Called by a kernel source after it started an operation: if threads
    /// wait in user space and none sleeps in the kernel (there was nothing
    /// to wait for there), the most recent is sent to sleep in the kernel.
    pub(crate) fn kernel_work_started(&self) {
        // Pairs with the fences in announce and promote (a Dekker handshake
        // on the in-flight count and the sleeper flag).
        fence(Ordering::SeqCst);
        if self.has_sleeper.load(Ordering::SeqCst) || self.state().waiters() == 0 {
            return;
        }
        let mut stack = lock(&self.stack);
        if !stack.sleeper {
            self.lead_top(&mut stack);
        }
    }

    /// The kernel sleeper is back, granted, closed, or past its deadline;
    /// it gives up the role. Returns its verdict, `WAITING` meaning it left
    /// the stack without one.
    fn leave_kernel(&self, me: &Arc<Waiter>) -> u8 {
        let mut stack = lock(&self.stack);
        let verdict = me.verdict();
        match verdict {
            CLOSED => return CLOSED,
            GRANTED => {}
            _ => self.remove(&mut stack, me),
        }
        self.promote(&mut stack);
        verdict
    }

    /// The kernel sleeper leaves the stack and the role without a verdict
    /// (`WAITING`), unless a verdict came meanwhile (then that is the
    /// result, and leaving the role is `leave_kernel`'s).
    fn step_out(&self, me: &Arc<Waiter>) -> u8 {
        let mut stack = lock(&self.stack);
        match me.verdict() {
            WAITING => {
                self.remove(&mut stack, me);
                stack.sleeper = false;
                self.has_sleeper.store(false, Ordering::SeqCst);
                WAITING
            }
            _ => {
                drop(stack);
                self.leave_kernel(me)
            }
        }
    }

    fn remove(&self, stack: &mut Stack<T>, me: &Arc<Waiter>) {
        if let Some(i) = stack
            .waiters
            .iter()
            .rposition(|w| Arc::ptr_eq(&w.waiter, me))
        {
            stack.waiters.remove(i);
            self.state.fetch_sub(ONE_WAITER, Ordering::AcqRel);
        }
    }

    /// The deadline passed. Under the mutex the verdict is final: either a
    /// releaser got to us first (and we take what it gave), or we are still on
    /// the stack and leave it (verdict `WAITING`).
    fn unpark_timed_out(&self, me: &Arc<Waiter>) -> u8 {
        let mut stack = lock(&self.stack);
        let verdict = me.verdict();
        if verdict == WAITING {
            self.remove(&mut stack, me);
        }
        verdict
    }
}
