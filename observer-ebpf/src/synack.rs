//! tcp:tcp_retransmit_synack: the server resends its SYN-ACK because the
//! client's final ACK has not arrived (return path, client firewall, or a
//! spoofed SYN). The listener is the socket; the tuple is the request's.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use observer_common::{record::flags, Action};

use crate::{
    emit,
    kread::{self, Res},
    maps::config,
};

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    if try_tcp_retransmit_synack(&ctx).is_err() {
        emit::read_failed();
    }
    0
}

fn try_tcp_retransmit_synack(ctx: &TracePointContext) -> Res<()> {
    let l = config!(retransmit_synack);
    let t = kread::tuple(ctx, &l)?;
    // sport/saddr are the listener's side; the client initiated.
    let mut rec = t.peer_initiated(Action::SynackRetransmit)?;
    if let Ok((len, max)) = kread::listener_queue(t.skaddr) {
        rec.queue_len = kread::listener_syn_queue(t.skaddr).unwrap_or(len);
        rec.backlog = max;
        rec.flags |= flags::HAS_LISTENER;
    }
    let key = emit::key_of(&rec, t.sport, t.saddr);
    emit::record(&key, rec);
    Ok(())
}
