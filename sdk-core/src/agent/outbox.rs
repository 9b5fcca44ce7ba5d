//! The bounded outbound queue. It holds encoded messages while the device is
//! offline; when full, periodic messages make room, oldest telemetry first.
//! Acknowledgements, lifecycle events, registrations and configuration acks
//! are never dropped.

use super::messages::{Encodable, MessageKind};
use crate::error::Error;

/// One queued message.
#[derive(Clone)]
pub(crate) struct Queued<const M: usize> {
    pub kind: MessageKind,
    pub len: usize,
    pub bytes: [u8; M],
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued.
    Queued,
    /// Queued after dropping an older message of this kind.
    QueuedDropping(MessageKind),
    /// Not queued: full of messages that may not be dropped (counted as
    /// undeliverable), or the message is larger than a slot.
    Refused,
    /// Not queued: full, and this message is the least important.
    DroppedNew,
}

/// Drop order when full: lower first; `None` never.
fn drop_rank(kind: MessageKind) -> Option<u8> {
    match kind {
        MessageKind::Telemetry => Some(0),
        MessageKind::Heartbeat => Some(1),
        MessageKind::Health => Some(2),
        MessageKind::ShadowUpdate => Some(3),
        _ => None,
    }
}

pub(crate) struct Outbox<const Q: usize, const M: usize> {
    // A ring: sending the oldest message moves nothing, where a Vec would
    // shift every queued message (up to Q x M bytes) down by one.
    items: heapless::Deque<Queued<M>, Q>,
}

impl<const Q: usize, const M: usize> Outbox<Q, M> {
    pub const fn new() -> Self {
        Outbox {
            items: heapless::Deque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Encodes `msg` into a slot, making room by the drop order.
    pub fn push<T: Encodable>(&mut self, msg: &T) -> Pushed {
        self.push_encoded(T::KIND, &|out| msg.encode(out))
    }

    /// The body of `push`, not generic: one copy in the firmware instead of
    /// one per message type (about 200 bytes of flash each).
    fn push_encoded(
        &mut self,
        kind: MessageKind,
        encode: &dyn Fn(&mut [u8]) -> Result<usize, Error>,
    ) -> Pushed {
        let mut q = Queued {
            kind,
            len: 0,
            bytes: [0; M],
        };
        match encode(&mut q.bytes) {
            Ok(n) => q.len = n,
            Err(Error::Encode(_)) | Err(_) => return Pushed::Refused,
        }
        if !self.items.is_full() {
            let _ = self.items.push_back(q);
            return Pushed::Queued;
        }
        // The oldest message of the lowest rank, if it ranks below the new.
        let victim = self
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, m)| drop_rank(m.kind).map(|r| (r, i)))
            .min();
        let new_rank = drop_rank(kind);
        match victim {
            Some((rank, i)) if new_rank.is_none_or(|n| rank <= n) => {
                let dropped = self.remove(i);
                let _ = self.items.push_back(q);
                Pushed::QueuedDropping(dropped)
            }
            _ if new_rank.is_some() => Pushed::DroppedNew,
            _ => Pushed::Refused,
        }
    }

    /// Takes the message at `i` out, keeping the others in order; returns
    /// its kind. Only when the queue is full and something must give.
    fn remove(&mut self, i: usize) -> MessageKind {
        let mut kind = MessageKind::Telemetry;
        for k in 0..self.items.len() {
            if let Some(m) = self.items.pop_front() {
                if k == i {
                    kind = m.kind;
                } else {
                    let _ = self.items.push_back(m);
                }
            }
        }
        kind
    }

    pub fn front(&self) -> Option<&Queued<M>> {
        self.items.front()
    }

    /// Drops the oldest message (after the caller has copied it out).
    pub fn drop_front(&mut self) {
        self.items.pop_front();
    }

    pub fn free_pct(&self) -> u8 {
        if Q == 0 {
            return 0;
        }
        (((Q - self.items.len()) * 100) / Q) as u8
    }
}
