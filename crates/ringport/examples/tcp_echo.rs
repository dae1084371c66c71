//! A TCP echo server on a completion port: worker threads take completion
//! packets (accepts, receives, sends) from one port, as on Windows. A client
//! in the same process then checks that every byte comes back.
//!
//! `cargo run -p ringport --example tcp_echo`
//! (`RINGPORT_BACKEND=epoll` runs it on the epoll backend.)

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use ringport::{CompletionPort, Handle, Packet, WorkerPool};

/// What a packet is for: the token of every operation.
#[derive(Debug, Default)]
enum Op {
    Accept,
    Recv,
    Send,
    #[default]
    Stop,
}

/// The listener's key; connections get keys from 1 up.
const LISTENER: u64 = 0;

struct Server {
    port: CompletionPort<Op>,
    listener: Handle<Op>,
    /// Open connections by key: a handle must outlive its operations'
    /// packets (dropping it cancels them).
    conns: Mutex<HashMap<u64, Arc<Handle<Op>>>>,
    next_key: AtomicU64,
}

impl Server {
    fn conn(&self, key: u64) -> Option<Arc<Handle<Op>>> {
        self.conns.lock().unwrap().get(&key).cloned()
    }

    fn handle(&self, mut p: Packet<Op>) -> Result<(), ringport::Error> {
        match p.token {
            Op::Accept => {
                if let Some(stream) = p.take_stream() {
                    let key = self.next_key.fetch_add(1, Ordering::Relaxed);
                    let conn = Arc::new(self.port.associate(stream, key)?);
                    // In the map before its first receive starts: another
                    // worker may take that receive's packet at once.
                    self.conns.lock().unwrap().insert(key, conn.clone());
                    conn.recv(Vec::with_capacity(4096), Op::Recv)?;
                }
                // Keep one accept pending.
                self.listener.accept(Op::Accept)?;
            }
            Op::Recv => {
                let Some(conn) = self.conn(p.key) else {
                    return Ok(());
                };
                let received = *p.result.as_ref().unwrap_or(&0);
                match p.take_buf() {
                    // Echo what came in; its buffer goes out with the send.
                    Some(buf) if received > 0 => {
                        conn.send(buf, Op::Send)?;
                    }
                    // 0 bytes (the peer closed) or an error: drop the handle.
                    _ => {
                        self.conns.lock().unwrap().remove(&p.key);
                    }
                }
            }
            Op::Send => {
                let Some(conn) = self.conn(p.key) else {
                    return Ok(());
                };
                let sent = *p.result.as_ref().unwrap_or(&0);
                let mut buf = p.take_buf().map(|b| b.into_vec()).unwrap_or_default();
                if sent > 0 && sent < buf.len() {
                    // A partial send: the rest goes next, before any receive.
                    buf.drain(..sent);
                    conn.send(buf, Op::Send)?;
                } else {
                    buf.clear();
                    conn.recv(buf, Op::Recv)?;
                }
            }
            Op::Stop => {}
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = CompletionPort::<Op>::new(0)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = Arc::new(Server {
        listener: port.associate(listener, LISTENER)?,
        port: port.clone(),
        conns: Mutex::new(HashMap::new()),
        next_key: AtomicU64::new(LISTENER + 1),
    });
    server.listener.accept(Op::Accept)?;
    let s = server.clone();
    let pool = WorkerPool::start(&port, 4, move |p| {
        if let Err(e) = s.handle(p) {
            eprintln!("echo: {e}");
        }
    })?;
    println!("echo server on {addr} ({} backend)", port.backend());

    // Four clients, each sending 100 messages and reading each one back.
    let clients: Vec<_> = (0..4u8)
        .map(|c| {
            thread::spawn(move || -> std::io::Result<()> {
                let mut s = TcpStream::connect(addr)?;
                let mut back = vec![0u8; 1000];
                for i in 0..100usize {
                    let msg = vec![c.wrapping_mul(31).wrapping_add(i as u8); 1 + i * 7 % 1000];
                    s.write_all(&msg)?;
                    s.read_exact(&mut back[..msg.len()])?;
                    assert_eq!(&back[..msg.len()], &msg[..]);
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client panicked")?;
    }
    println!("4 clients × 100 messages echoed intact");

    // Closing the port cancels the pending accept and receives, and wakes
    // the workers.
    server.conns.lock().unwrap().clear();
    let report = pool.close();
    println!("packets handled per worker: {:?}", report.per_worker);
    Ok(())
}
