//! Starting lanes' chains: each lane's requests go to the ring in posting
//! order, linked, one chain at a time (see [`lane`](super::lane)).

use std::sync::Arc;

use super::harvest::Harvest;
use super::lane::{Lane, LaneState};
use super::request_table::RequestTable;
use crate::sys::uring::ring::Ring;

/// Commits the deferred requests of every lane in `table.deferred` (the
/// caller holds the table locked): they may go in the next chain; lanes
/// that can start now go to `kick`.
pub(super) fn commit_lanes(table: &mut RequestTable, kick: &mut Vec<Arc<Lane>>) {
    for lane in table.deferred.drain(..) {
        let startable = {
            // SAFETY: the caller holds the table lock (`table`); no other
            // guard of a lane is held here.
            let mut state = unsafe { lane.lock() };
            state.deferred = 0;
            state.startable()
        };
        if startable {
            kick.push(lane);
        }
    }
}

/// Starts the next chain of every lane in `kick` on `ring`, each in posting
/// order, linked so that each request starts when the one before it is
/// over. With `harvest` (the caller holds the consumer lock), datagrams
/// already waiting go into a lane's datagram receives first (see
/// [`harvest`](super::harvest)) and only the rest start. Returns whether any
/// entry was queued; the caller submits. The caller holds the submission
/// lock (it owns `ring`'s SQ).
pub(super) fn start_lanes(
    table: &mut RequestTable,
    ring: &Ring,
    chain: &mut Vec<u64>,
    kick: &mut Vec<Arc<Lane>>,
    mut harvest: Option<&mut Harvest<'_>>,
) -> std::io::Result<bool> {
    let mut queued = false;
    let mut result = Ok(());
    for lane in kick.drain(..) {
        if result.is_ok() {
            // SAFETY: the caller holds the table lock (`table`), and this
            // is the only guard of the lane (start_lane takes none).
            let mut state = unsafe { lane.lock() };
            match start_lane(table, ring, chain, &mut state, harvest.as_deref_mut()) {
                Ok(q) => queued |= q,
                // The lane stays idle with its requests waiting; its next
                // request or commit starts it.
                Err(e) => result = Err(e),
            }
        }
    }
    result.map(|()| queued)
}

pub(super) fn start_lane(
    table: &mut RequestTable,
    ring: &Ring,
    chain: &mut Vec<u64>,
    lane: &mut LaneState,
    harvest: Option<&mut Harvest<'_>>,
) -> std::io::Result<bool> {
    if lane.in_kernel > 0 {
        return Ok(false);
    }
    lane.requeue_again();
    // Datagram receives go to the lane's buffer ring where they can.
    if let Some(queued) = table.start_shot(ring, lane)? {
        return Ok(queued);
    }
    let drained = match (harvest, lane.waiting.front()) {
        (Some(h), Some(&ud)) if lane.ready() > 0 => match table.socket(ud) {
            Some(fd) => h.take(table, lane, fd),
            None => false,
        },
        _ => false,
    };
    // A link does not span two submissions: a chain fits in the SQ.
    let n = lane.ready().min(ring.sq_entries());
    if n == 0 {
        return Ok(false);
    }
    // SAFETY: the caller holds the submission lock.
    if ring.sq_entries() - unsafe { ring.queued() } < n {
        ring.submit()?;
    }
    chain.clear();
    chain.extend(lane.waiting.drain(..n));
    // Lanes hold only requests waiting here; should one not be, a link must
    // still not dangle from the chain's last entry into another lane's.
    chain.retain(|&ud| table.is_waiting(ud));
    let mut queued = 0;
    while queued < chain.len() {
        let ud = chain[queued];
        let poll_first = drained && queued == 0;
        let Some(entry) = table.entry(ud, queued + 1 < chain.len(), false, poll_first) else {
            break;
        };
        // SAFETY: the submission lock is held. The entry points at
        // registered memory the request has claimed (released only once its
        // completion is reaped) and at its slot's boxed scratch memory (kept
        // as long as the table, which outlives every reaped completion).
        if let Err(e) = unsafe { ring.push(&entry) } {
            // Only when the SQ was full, which the room made above rules out.
            table.not_queued(ud);
            for &ud in chain[queued..].iter().rev() {
                lane.waiting.push_front(ud);
            }
            lane.in_kernel = queued as u32;
            return Err(e);
        }
        queued += 1;
    }
    lane.in_kernel = queued as u32;
    Ok(queued > 0)
}
