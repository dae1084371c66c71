//! The packet queue: FIFO, many producers, many consumers.
//!
//! It holds packets only; who may take one is decided beforehand by a claim
//! on the state word, so a consumer that pops has already been counted and
//! the queue needs no notion of waiting.
//!
//! The storage is crossbeam-channel's unbounded (list) channel, used only
//! as a queue (`send`, `try_recv`; it never blocks here and never
//! disconnects, since the queue owns both ends). crossbeam-queue's
//! `SegQueue` has the same design on paper, but measured in the flood
//! benchmark (one producer, 1–4 consumers, `ringport bench port`) the port
//! on the channel ran 0.80–1.07× crossbeam-channel itself with one
//! consumer, against 0.29–0.58× on `SegQueue` (BENCHMARKS.md, Port).

#[cfg(not(loom))]
pub(crate) struct Queue<T> {
    tx: crossbeam_channel::Sender<T>,
    rx: crossbeam_channel::Receiver<T>,
}

#[cfg(not(loom))]
impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Queue { tx, rx }
    }
    pub(crate) fn push(&self, value: T) {
        // An unbounded channel whose receiver we hold cannot refuse.
        let _ = self.tx.send(value);
    }
    pub(crate) fn pop(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

#[cfg(loom)]
pub(crate) struct Queue<T>(crate::sync::Mutex<std::collections::VecDeque<T>>);

#[cfg(loom)]
impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        Queue(crate::sync::Mutex::new(std::collections::VecDeque::new()))
    }
    pub(crate) fn push(&self, value: T) {
        crate::sync::lock(&self.0).push_back(value)
    }
    pub(crate) fn pop(&self) -> Option<T> {
        crate::sync::lock(&self.0).pop_front()
    }
}
