//! One broker connection shared by several clients of one process.
//!
//! A broker that takes each client's id from its certificate (the TLS
//! configuration `lanyard broker-config` writes) lets one identity hold one
//! connection: a second one under the same certificate takes the first
//! one's session, and the two knock each other off in turn. A twin host
//! that also runs the fleet's rollouts is one identity with several
//! clients (the host, the rollout service, one firmware server per
//! rollout), so they share the host's connection: the host owns it
//! ([`SharedConnection`], itself a [`Transport`]), the others join it
//! ([`Joiner::join`]) and get a [`Transport`] of their own.
//!
//! A message goes to every client whose subscriptions match its topic
//! (the owner also gets those nobody subscribed to, as it would alone).
//! What the joined clients send is sent by the owner's [`Transport::recv`],
//! so the owner must keep receiving, as a twin host's loop does; its
//! `recv` stays cancel-safe (a send interrupted by a cancelled `recv` is
//! made by the next one). An owner that holds its acknowledgements until
//! it has handled its messages ([`Transport::hold_acks`], as a twin host
//! does) still has the joined clients' messages acknowledged as they are
//! queued, so that the broker does not stop sending for want of them.
//! Each joined client has a queue of
//! [`JOINED_QUEUE`] events: a client that does not read loses what does
//! not fit (counted by [`Joiner::dropped`]) rather than holding up the
//! owner.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use lanyard_std::transport::{MemoryBroker, Qos, SharedConnection, Transport, TransportEvent};
//! let broker = MemoryBroker::new();
//! let mut owner = SharedConnection::new(broker.connect());
//! let mut joined = owner.joiner().join();
//! let mut other = broker.connect();
//! other.subscribe("to/joined").await.unwrap();
//! // The owner's loop carries the joined client's subscription and send.
//! let pump = async {
//!     loop {
//!         let _ = owner.recv().await;
//!     }
//! };
//! tokio::pin!(pump);
//! let work = async {
//!     joined.subscribe("from/other").await.unwrap();
//!     joined.publish("to/joined", b"hi", Qos::AtLeastOnce).await.unwrap();
//!     let got = other.recv().await.unwrap();
//!     other.publish("from/other", b"back", Qos::AtLeastOnce).await.unwrap();
//!     (got, joined.recv().await.unwrap())
//! };
//! let (sent, back) = tokio::select! { r = work => r, _ = &mut pump => unreachable!() };
//! assert_eq!(sent, TransportEvent::Message { topic: "to/joined".into(), payload: b"hi".to_vec() });
//! assert_eq!(back, TransportEvent::Message { topic: "from/other".into(), payload: b"back".to_vec() });
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{Qos, Transport, TransportError, TransportEvent, topic_matches};

/// Events one joined client may have waiting; past it, new ones are
/// dropped and counted.
pub const JOINED_QUEUE: usize = 4096;

/// What a joined client asks the owner to do on the connection.
enum Ask {
    Subscribe(String),
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: Qos,
    },
    Flush(std::time::Duration),
}

/// An ask and where its outcome goes.
struct Asked {
    ask: Ask,
    done: oneshot::Sender<Result<(), TransportError>>,
}

/// A joined client as the owner routes to it.
struct Member {
    id: u64,
    filters: Vec<String>,
    events: mpsc::Sender<TransportEvent>,
}

/// What the owner and its joiners share.
#[derive(Default)]
struct Members {
    list: Mutex<Vec<Member>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection its owner uses as its own transport while others of the
/// same process join it. See the [module](self).
pub struct SharedConnection<T> {
    inner: T,
    /// The owner's own subscriptions.
    own: Vec<String>,
    members: Arc<Members>,
    asks: mpsc::Receiver<Asked>,
    /// Kept so that the channel never closes while the owner lives.
    ask_tx: mpsc::Sender<Asked>,
    /// An ask taken but not yet carried out (its `recv` was cancelled
    /// while it was): carried out first by the next `recv`.
    in_flight: Option<Asked>,
    /// The owner acknowledges what it handled itself
    /// ([`Transport::hold_acks`]).
    holding: bool,
    /// The owner was given messages it has not acknowledged yet.
    owner_unacked: bool,
}

/// Makes new clients of a [`SharedConnection`]; cheap to clone, and
/// usable from any task.
#[derive(Clone)]
pub struct Joiner {
    members: Arc<Members>,
    asks: mpsc::Sender<Asked>,
}

/// A client that joined a [`SharedConnection`]: a [`Transport`] whose
/// subscriptions and sends go through the owner's connection.
pub struct Joined {
    id: u64,
    members: Arc<Members>,
    asks: mpsc::Sender<Asked>,
    events: mpsc::Receiver<TransportEvent>,
}

impl<T: Transport> SharedConnection<T> {
    /// Takes ownership of `inner`, to share it.
    pub fn new(inner: T) -> Self {
        let (ask_tx, asks) = mpsc::channel(256);
        SharedConnection {
            inner,
            own: Vec::new(),
            members: Arc::default(),
            asks,
            ask_tx,
            in_flight: None,
            holding: false,
            owner_unacked: false,
        }
    }

    /// What makes new clients of this connection.
    pub fn joiner(&self) -> Joiner {
        Joiner {
            members: self.members.clone(),
            asks: self.ask_tx.clone(),
        }
    }

    /// The connection itself.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Hands `ev` to the joined clients that subscribed to it; returns it
    /// when it is also (or only) the owner's.
    fn route(&mut self, ev: TransportEvent) -> Option<TransportEvent> {
        let mut members = self.members.lock();
        // Alone on it (a twin host without rollouts): nothing to match.
        if members.is_empty() {
            return Some(ev);
        }
        let topic = match &ev {
            TransportEvent::Message { topic, .. } => Some(topic.as_str()),
            TransportEvent::Reconnected => None,
        };
        let mut joined_took = false;
        members.retain(|m| {
            let wants = topic.is_none_or(|t| m.filters.iter().any(|f| topic_matches(f, t)));
            if !wants {
                return true;
            }
            joined_took = true;
            match m.events.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.members.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        topic = topic.unwrap_or("(reconnected)"),
                        "a client sharing the connection is behind: event dropped"
                    );
                    true
                }
                // Its client is gone.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        drop(members);
        let owners = topic.is_none_or(|t| self.own.iter().any(|f| topic_matches(f, t)));
        let owners = owners || !joined_took;
        if owners && topic.is_some() {
            self.owner_unacked = true;
        } else if !owners && self.holding && !self.owner_unacked {
            // Only the joined clients' (queued, as durable as they ever
            // are): acknowledged now, as the owner, holding its own until
            // handled, would not get to them. Were the owner holding
            // some, acknowledging would take those too: its own
            // acknowledgement does, soon.
            self.inner.ack_handled();
        }
        owners.then_some(ev)
    }

    /// Carries out the ask in flight, if there is one.
    async fn carry_out(&mut self) {
        let Some(asked) = &self.in_flight else {
            return;
        };
        let result = match &asked.ask {
            Ask::Subscribe(filter) => self.inner.subscribe(filter).await,
            Ask::Publish {
                topic,
                payload,
                qos,
            } => self.inner.publish(topic, payload, *qos).await,
            Ask::Flush(within) => self.inner.flush(*within).await,
        };
        if let Some(asked) = self.in_flight.take() {
            // A client that stopped waiting has nothing to be told.
            let _ = asked.done.send(result);
        }
    }
}

#[async_trait]
impl<T: Transport> Transport for SharedConnection<T> {
    async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError> {
        self.own.push(filter.to_owned());
        self.inner.subscribe(filter).await
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
    ) -> Result<(), TransportError> {
        self.inner.publish(topic, payload, qos).await
    }

    async fn recv(&mut self) -> Result<TransportEvent, TransportError> {
        loop {
            self.carry_out().await;
            tokio::select! {
                biased;
                Some(asked) = self.asks.recv() => self.in_flight = Some(asked),
                ev = self.inner.recv() => {
                    if let Some(ev) = self.route(ev?) {
                        return Ok(ev);
                    }
                }
            }
        }
    }

    fn try_recv(&mut self) -> Option<TransportEvent> {
        loop {
            let ev = self.inner.try_recv()?;
            if let Some(ev) = self.route(ev) {
                return Some(ev);
            }
        }
    }

    fn hold_acks(&mut self) {
        self.holding = true;
        self.inner.hold_acks()
    }

    fn ack_handled(&mut self) {
        self.owner_unacked = false;
        self.inner.ack_handled()
    }

    async fn flush(&mut self, within: std::time::Duration) -> Result<(), TransportError> {
        self.inner.flush(within).await
    }

    fn reconnects(&self) -> u64 {
        self.inner.reconnects()
    }

    fn has_connected(&self) -> bool {
        self.inner.has_connected()
    }

    /// Counts every at-least-once publish on the connection, the joined
    /// clients' included.
    fn acknowledged(&self) -> u64 {
        self.inner.acknowledged()
    }
}

impl Joiner {
    /// A new client of the connection, with no subscription yet.
    pub fn join(&self) -> Joined {
        let (tx, events) = mpsc::channel(JOINED_QUEUE);
        let id = self.members.next_id.fetch_add(1, Ordering::Relaxed);
        self.members.lock().push(Member {
            id,
            filters: Vec::new(),
            events: tx,
        });
        Joined {
            id,
            members: self.members.clone(),
            asks: self.asks.clone(),
            events,
        }
    }

    /// Events dropped so far because a joined client's queue was full.
    pub fn dropped(&self) -> u64 {
        self.members.dropped.load(Ordering::Relaxed)
    }
}

impl Joined {
    async fn ask(&self, ask: Ask) -> Result<(), TransportError> {
        let (done, outcome) = oneshot::channel();
        self.asks
            .send(Asked { ask, done })
            .await
            .map_err(|_| TransportError::Closed)?;
        outcome.await.map_err(|_| TransportError::Closed)?
    }
}

#[async_trait]
impl Transport for Joined {
    async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError> {
        // Routed before the broker is asked, so nothing it sends is missed.
        if let Some(m) = self.members.lock().iter_mut().find(|m| m.id == self.id) {
            m.filters.push(filter.to_owned());
        }
        self.ask(Ask::Subscribe(filter.to_owned())).await
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
    ) -> Result<(), TransportError> {
        self.ask(Ask::Publish {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos,
        })
        .await
    }

    async fn recv(&mut self) -> Result<TransportEvent, TransportError> {
        self.events.recv().await.ok_or(TransportError::Closed)
    }

    fn try_recv(&mut self) -> Option<TransportEvent> {
        self.events.try_recv().ok()
    }

    async fn flush(&mut self, within: std::time::Duration) -> Result<(), TransportError> {
        self.ask(Ask::Flush(within)).await
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.members.lock().retain(|m| m.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::MemoryBroker;
    use std::time::Duration;

    async fn send(t: &mut crate::transport::MemoryTransport, topic: &str, payload: &[u8]) {
        t.publish(topic, payload, Qos::AtLeastOnce).await.unwrap();
    }

    async fn next(r: &mut Joined) -> TransportEvent {
        tokio::time::timeout(Duration::from_secs(5), r.recv())
            .await
            .unwrap()
            .unwrap()
    }

    fn message(topic: &str, payload: &[u8]) -> TransportEvent {
        TransportEvent::Message {
            topic: topic.into(),
            payload: payload.to_vec(),
        }
    }

    #[tokio::test]
    async fn each_client_gets_what_it_subscribed_to_and_its_sends_go_out() {
        let broker = MemoryBroker::new();
        let mut owner = SharedConnection::new(broker.connect());
        owner.subscribe("host/#").await.unwrap();
        let joiner = owner.joiner();
        let (mut a, mut b) = (joiner.join(), joiner.join());
        let mut outside = broker.connect();
        outside.subscribe("out/#").await.unwrap();
        // The owner's loop, whose `recv` is cancelled over and over by a
        // short timer, as a twin host's loop cancels it; what it gets is
        // kept.
        let (got_tx, mut owner_got) = mpsc::unbounded_channel();
        let pump = tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = owner.recv() => { let _ = got_tx.send(ev.unwrap()); }
                    _ = tokio::time::sleep(Duration::from_micros(50)) => {}
                }
            }
        });
        a.subscribe("job/a/#").await.unwrap();
        b.subscribe("job/+/req").await.unwrap();
        for i in 0..200u32 {
            a.publish("out/a", &i.to_be_bytes(), Qos::AtLeastOnce)
                .await
                .unwrap();
        }
        for i in 0..200u32 {
            let ev = tokio::time::timeout(Duration::from_secs(5), outside.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                ev,
                message("out/a", &i.to_be_bytes()),
                "sent once, in order"
            );
        }
        send(&mut outside, "job/a/req", b"1").await;
        send(&mut outside, "job/a/x", b"2").await;
        send(&mut outside, "host/x", b"3").await;

        assert_eq!(next(&mut a).await, message("job/a/req", b"1"));
        assert_eq!(next(&mut a).await, message("job/a/x", b"2"));
        assert_eq!(next(&mut b).await, message("job/a/req", b"1"));
        let owners = tokio::time::timeout(Duration::from_secs(5), owner_got.recv());
        assert_eq!(owners.await.unwrap().unwrap(), message("host/x", b"3"));
        assert!(a.try_recv().is_none() && b.try_recv().is_none());
        // A client that leaves is routed nothing more; the others go on,
        // and what only it had subscribed to goes to the owner.
        drop(b);
        send(&mut outside, "job/a/req", b"5").await;
        send(&mut outside, "job/b/req", b"6").await;
        assert_eq!(next(&mut a).await, message("job/a/req", b"5"));
        let owners = tokio::time::timeout(Duration::from_secs(5), owner_got.recv());
        assert_eq!(owners.await.unwrap().unwrap(), message("job/b/req", b"6"));
        assert_eq!(joiner.dropped(), 0);
        pump.abort();
    }

    /// A memory transport that counts the acknowledgements asked of it.
    struct Counting(crate::transport::MemoryTransport, Arc<AtomicU64>);

    #[async_trait]
    impl Transport for Counting {
        async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError> {
            self.0.subscribe(filter).await
        }
        async fn publish(&mut self, t: &str, p: &[u8], q: Qos) -> Result<(), TransportError> {
            self.0.publish(t, p, q).await
        }
        async fn recv(&mut self) -> Result<TransportEvent, TransportError> {
            self.0.recv().await
        }
        fn ack_handled(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn joined_messages_are_acknowledged_but_never_the_owners_before_it_handled_them() {
        let broker = MemoryBroker::new();
        let acks = Arc::new(AtomicU64::new(0));
        let mut owner = SharedConnection::new(Counting(broker.connect(), acks.clone()));
        owner.hold_acks();
        owner.subscribe("host").await.unwrap();
        let mut joined = owner.joiner().join();
        let mut outside = broker.connect();
        {
            let subscribed = joined.subscribe("job");
            tokio::pin!(subscribed);
            tokio::select! {
                r = &mut subscribed => r.unwrap(),
                _ = owner.recv() => unreachable!(),
            }
        }
        // Only the joined client's: acknowledged as it is queued.
        send(&mut outside, "job", b"1").await;
        send(&mut outside, "host", b"2").await;
        assert_eq!(owner.recv().await.unwrap(), message("host", b"2"));
        assert_eq!(acks.load(Ordering::SeqCst), 1);
        // The owner holds one it has not handled: the joined client's
        // wait for the owner's acknowledgement, which takes them all.
        send(&mut outside, "job", b"3").await;
        send(&mut outside, "host", b"4").await;
        assert_eq!(owner.recv().await.unwrap(), message("host", b"4"));
        assert_eq!(acks.load(Ordering::SeqCst), 1);
        owner.ack_handled();
        assert_eq!(acks.load(Ordering::SeqCst), 2);
        assert_eq!(next(&mut joined).await, message("job", b"1"));
        assert_eq!(next(&mut joined).await, message("job", b"3"));
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_loses_what_does_not_fit_not_the_others() {
        let broker = MemoryBroker::new();
        let mut owner = SharedConnection::new(broker.connect());
        owner.subscribe("host").await.unwrap();
        let joiner = owner.joiner();
        let mut idle = joiner.join();
        let pump = async {
            loop {
                let _ = owner.recv().await;
            }
        };
        let work = async {
            idle.subscribe("flood").await.unwrap();
            let mut outside = broker.connect();
            for _ in 0..JOINED_QUEUE + 10 {
                outside
                    .publish("flood", b"x", Qos::AtMostOnce)
                    .await
                    .unwrap();
            }
            // The owner goes on: the flood is behind it once this comes.
            outside
                .publish("host", b"h", Qos::AtMostOnce)
                .await
                .unwrap();
            while joiner.dropped() < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = tokio::time::timeout(Duration::from_secs(5), work) => {}
            _ = pump => unreachable!(),
        }
        assert_eq!(joiner.dropped(), 10);
        let mut queued = 0;
        while idle.try_recv().is_some() {
            queued += 1;
        }
        assert_eq!(queued, JOINED_QUEUE);
    }
}
