//! Loom model of the port's queue, waiter stack and concurrency limit (being written).
#![cfg(loom)]
