//! Completion-port conformance: the behaviours Wine's conformance tests
//! check of Windows completion ports (`dlls/ntdll/tests/file.c`,
//! `dlls/ntdll/tests/pipe.c`, `dlls/kernel32/tests/pipe.c`,
//! `dlls/ws2_32/tests/sock.c`), written from the contract in DESIGN.md
//! ("Completion port semantics", item 8) for ringport's API.
//!
//! Every test uses real sockets or pipes on 127.0.0.1 (port 0), real threads
//! and bounded waits, and runs on whichever backend `RINGPORT_BACKEND`
//! selects (CI runs the suite once per backend).

mod common;
#[path = "conformance/support.rs"]
mod support;

#[path = "conformance/outcomes.rs"]
mod outcomes;

#[path = "conformance/streams.rs"]
mod streams;

#[path = "conformance/order.rs"]
mod order;

#[path = "conformance/threads.rs"]
mod threads;

#[path = "conformance/pipes.rs"]
mod pipes;

#[path = "conformance/datagrams.rs"]
mod datagrams;
