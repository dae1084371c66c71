//! The `port` sink: the traditional IOCP server, `--pending` `recv_from`s
//! pending on a completion port, `--threads` workers taking up to `--batch`
//! packets per `get` (`GetQueuedCompletionStatusEx`), each re-issuing the
//! receive it got.

use std::net::UdpSocket;
use std::sync::Arc;

use ringport::{CompletionPort, Error, Handle};

use super::{spawn, Sink, SinkOptions};

pub(super) fn start(sink: &mut Sink, sock: UdpSocket, opts: &SinkOptions) -> Result<(), String> {
    let threads = opts.thread_count();
    let port: CompletionPort<u32> = sink.port(opts)?;
    let h: Arc<Handle<u32>> = Arc::new(
        port.associate(sock, 0)
            .map_err(|e| format!("associating the socket: {e}"))?,
    );
    let slot = opts.slot();
    for _ in 0..opts.pending {
        h.recv_from(Vec::with_capacity(slot), 0)
            .map_err(|e| format!("starting a receive: {e}"))?;
    }
    for i in 0..threads {
        let (port, h, batch) = (port.clone(), h.clone(), opts.batch);
        spawn(sink, i, opts, move |m| {
            let mut packets = Vec::with_capacity(batch);
            loop {
                if m.should_stop() {
                    return Ok(());
                }
                match port.get_into(&mut packets, batch, None) {
                    Ok(n) => m.dequeued(n),
                    Err(Error::Closed) => return Ok(()),
                    Err(e) => return Err(format!("get: {e}")),
                }
                for mut p in packets.drain(..) {
                    if p.is_cancelled() {
                        continue;
                    }
                    let Some(buf) = p.take_buf() else { continue };
                    let mut buf = buf.into_vec();
                    match p.result {
                        Ok(n) => m.datagram(n, || buf.get(..n)),
                        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => m.truncated(),
                        Err(_) => m.error(),
                    }
                    buf.clear();
                    match h.recv_from(buf, 0) {
                        Ok(_) | Err(Error::Closed) => {}
                        Err(e) => return Err(format!("starting a receive: {e}")),
                    }
                }
                m.publish();
            }
        })?;
    }
    Ok(())
}
