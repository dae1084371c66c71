//! The packet queue: FIFO, many producers, many consumers.
//!
//! It holds packets only; who may take one is decided beforehand by a claim
//! on the state word, so a consumer that pops has already been counted and
//! the queue needs no notion of waiting.

#[cfg(not(loom))]
pub(crate) struct Queue<T>(crossbeam_queue::SegQueue<T>);

#[cfg(not(loom))]
impl<T> Queue<T> {
    pub(crate) fn new() -> Self {
        Queue(crossbeam_queue::SegQueue::new())
    }
    pub(crate) fn push(&self, value: T) {
        self.0.push(value)
    }
    pub(crate) fn pop(&self) -> Option<T> {
        self.0.pop()
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
