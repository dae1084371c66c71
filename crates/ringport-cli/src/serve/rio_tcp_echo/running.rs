//! The server as something to start and stop: `serve` runs it from the
//! command line, `bench tcp` as one of its peers.

use super::*;

impl Stats {
    /// The counts in the words of the other servers (`refused` goes with
    /// the errors).
    pub fn summary(&self) -> crate::serve::Summary {
        crate::serve::Summary {
            connections: self.connections,
            messages: self.messages,
            bytes: self.bytes,
            errors: self.errors + self.refused,
            ..Default::default()
        }
    }
}

/// The server, running: its worker and accept thread.
pub struct RioTcpEcho {
    local: SocketAddr,
    port: CompletionPort<u64>,
    halt: Arc<AtomicBool>,
    worker: JoinHandle<(Stats, Result<(), String>)>,
    acceptor: JoinHandle<()>,
    cq_backend: Backend,
}

impl RioTcpEcho {
    /// Listens on `addr` and starts serving.
    pub fn start(addr: SocketAddr, opts: &EchoOptions) -> Result<RioTcpEcho, String> {
        opts.validate()?;
        let listener = TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
        RioTcpEcho::start_on(listener, opts)
    }

    /// Serves on a listening socket (a shard of a reuseport group).
    pub fn start_on(listener: TcpListener, opts: &EchoOptions) -> Result<RioTcpEcho, String> {
        opts.validate()?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("listener: {e}"))?;
        let port: CompletionPort<u64> = CompletionPort::builder()
            .concurrency(1)
            .backend(opts.backend)
            .build()
            .map_err(|e| format!("creating the completion port: {e}"))?;
        let cq = CompletionQueue::with_backend(
            opts.cq_size() as u32,
            Notify::port(&port, CQ_KEY, 0),
            opts.backend,
        )
        .map_err(|e| format!("creating the completion queue: {e}"))?;
        let cq_backend = cq.backend();

        let (tx, rx) = mpsc::channel();
        let halt = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            cq,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            open: 0,
            pending: opts.pending as u32,
            slot: opts.buf_size as u32,
            max: opts.connections(),
            protocol: opts.protocol,
            stats: Stats::default(),
            touched: Vec::new(),
            deferred: false,
        };
        let wport = port.clone();
        let batch = opts.batch;
        let worker: JoinHandle<(Stats, Result<(), String>)> = thread::Builder::new()
            .name("tcp-echo-rio".into())
            .spawn(move || {
                let r = worker.run(&wport, &rx, batch);
                worker.shutdown();
                (worker.stats, r)
            })
            .map_err(|e| format!("starting the worker: {e}"))?;
        let (aport, ahalt) = (port.clone(), halt.clone());
        let acceptor = thread::Builder::new()
            .name("tcp-echo-accept".into())
            .spawn(move || accept_loop(listener, aport, tx, ahalt));
        let acceptor = match acceptor {
            Ok(h) => h,
            Err(e) => {
                port.close();
                let _ = worker.join();
                return Err(format!("starting the accept thread: {e}"));
            }
        };
        Ok(RioTcpEcho {
            local,
            port,
            halt,
            worker,
            acceptor,
            cq_backend,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// True once the worker has ended (on an error).
    pub fn is_finished(&self) -> bool {
        self.worker.is_finished()
    }

    /// Stops it: what it did, and its error if it failed.
    pub fn stop(self) -> (Stats, Result<(), String>) {
        self.halt.store(true, Ordering::Relaxed);
        let _ = self.acceptor.join();
        self.port.close();
        self.worker
            .join()
            .unwrap_or_else(|_| (Stats::default(), Err("the worker panicked".into())))
    }
}

/// `ringport serve tcp-echo --mode rio-port`: serves until `duration` or
/// `stop()`.
pub fn serve(
    addr: SocketAddr,
    opts: &EchoOptions,
    duration: Option<Duration>,
    stop: &dyn Fn() -> bool,
) -> Result<(), String> {
    let server = RioTcpEcho::start(addr, opts)?;
    println!("listening on {} (tcp-echo, mode rio-port)", server.local);
    println!(
        "backend {}, completion queue backend {}, protocol {:?}, 1 thread, {} receives of {} bytes pending per connection, at most {} connections, batch {}",
        server.port.backend(),
        server.cq_backend,
        opts.protocol,
        opts.pending,
        opts.buf_size,
        opts.connections(),
        opts.batch
    );
    match duration {
        Some(d) => println!("stopping after {d:?} or on Ctrl-C"),
        None => println!("stopping on Ctrl-C"),
    }
    let deadline = duration.map(|d| Instant::now() + d);
    while deadline.is_none_or(|d| Instant::now() < d) && !stop() && !server.is_finished() {
        thread::sleep(Duration::from_millis(20));
    }
    let (s, result) = server.stop();
    println!(
        "tcp-echo stopped: {} connections, {} messages, {} bytes echoed, {} errors, {} refused",
        s.connections, s.messages, s.bytes, s.errors, s.refused
    );
    result
}
