//! The transport a driver moves messages over. MQTT is one implementation
//! ([`crate::mqtt::MqttTransport`]); [`MemoryBroker`] is another, in
//! process, which tests use and which shows that the core needs nothing of
//! MQTT. [`SharedConnection`] lets several clients of one process use one
//! connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

mod shared;
pub use shared::{JOINED_QUEUE, Joined, Joiner, SharedConnection};

/// Delivery guarantee of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Fire and forget (MQTT QoS 0).
    AtMostOnce,
    /// Retried until acknowledged (MQTT QoS 1).
    AtLeastOnce,
}

/// Something that happened on the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A message on a subscribed topic.
    Message {
        /// Its topic.
        topic: String,
        /// Its bytes.
        payload: Vec<u8>,
    },
    /// The connection came back after a loss; subscriptions are restored.
    /// Messages sent meanwhile may be lost: resynchronise.
    Reconnected,
}

/// Transport failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The transport was shut down.
    Closed,
    /// The broker did not answer a connection in time.
    NoAnswer,
    /// Publishes were not all delivered in the time given.
    NotDelivered,
    /// The broker or the network refused the connection (a refused
    /// certificate, an unknown host, a closed port), as the MQTT client
    /// describes it.
    Refused(String),
    /// The MQTT client could not take the request (its connection task is
    /// gone), as it describes it.
    Client(String),
    /// The broker takes this client's subscriptions but delivers nothing on
    /// them (what a broker does when its ACL does not let the client's user
    /// name read them): the topics that stayed silent.
    NotDelivering(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Closed => f.write_str("transport closed"),
            TransportError::NoAnswer => f.write_str("no answer from the broker in time"),
            TransportError::NotDelivered => f.write_str("publishes not delivered in time"),
            TransportError::Refused(why) => write!(f, "connection refused: {why}"),
            TransportError::Client(why) => write!(f, "MQTT client failed: {why}"),
            TransportError::NotDelivering(topics) => write!(
                f,
                "the broker accepted the subscriptions but delivered nothing on {topics}: \
                 its ACL must let this client's user name read and write them \
                 (see `lanyard acl`: the user names given there as trusted)"
            ),
        }
    }
}

impl std::error::Error for TransportError {}

/// A publish/subscribe transport.
#[async_trait]
pub trait Transport: Send {
    /// Subscribes to a topic filter (`+` one level, `#` the rest); kept
    /// across reconnections.
    async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError>;
    /// Publishes `payload` on `topic`.
    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
    ) -> Result<(), TransportError>;
    /// The next event.
    async fn recv(&mut self) -> Result<TransportEvent, TransportError>;
    /// The next event if one is already waiting (to take a batch of them at
    /// once). The default has none.
    fn try_recv(&mut self) -> Option<TransportEvent> {
        None
    }
    /// From now on, messages are acknowledged to the peer only by
    /// [`Transport::ack_handled`] (not when `recv` is called again): for a
    /// consumer that handles a batch and makes it durable before
    /// acknowledging it. The default, for a transport without
    /// acknowledgements, does nothing.
    fn hold_acks(&mut self) {}
    /// Acknowledges every message received so far (with
    /// [`Transport::hold_acks`]).
    fn ack_handled(&mut self) {}
    /// Waits until everything published so far has left (QoS 0) or been
    /// acknowledged (QoS 1), for at most `within`: call it before dropping
    /// a transport whose last messages matter. The default has nothing to
    /// wait for (a transport that delivers within `publish`).
    async fn flush(&mut self, within: std::time::Duration) -> Result<(), TransportError> {
        let _ = within;
        Ok(())
    }
    /// Connections made again after a loss, for a transport that has
    /// connections; the default has none.
    fn reconnects(&self) -> u64 {
        0
    }
    /// Whether a connection has been made yet (a simulation starts its
    /// clock once every device can be heard); the default, for a
    /// transport with no connection to make, is yes.
    fn has_connected(&self) -> bool {
        true
    }
    /// How many of this transport's at-least-once publishes the peer has
    /// acknowledged, counted in publish order (MQTT acknowledges QoS 1 in
    /// order). The default, for a transport that delivers within
    /// `publish`, is "all of them".
    fn acknowledged(&self) -> u64 {
        u64::MAX
    }
}

/// Whether `topic` matches the MQTT filter `filter`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

type Subscribers = Vec<(String, usize)>;

#[derive(Default)]
struct BrokerState {
    subscriptions: Subscribers,
    clients: HashMap<usize, mpsc::UnboundedSender<TransportEvent>>,
    next_id: usize,
}

/// An in-process broker: every [`MemoryBroker::connect`] gives a transport
/// that sees the others' publishes on its subscriptions.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<BrokerState>>,
}

impl MemoryBroker {
    /// A new broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new client.
    pub fn connect(&self) -> MemoryTransport {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state.lock().expect("broker lock");
        let id = st.next_id;
        st.next_id += 1;
        st.clients.insert(id, tx);
        MemoryTransport {
            broker: self.clone(),
            id,
            rx,
        }
    }
}

/// A client of a [`MemoryBroker`].
pub struct MemoryTransport {
    broker: MemoryBroker,
    id: usize,
    rx: mpsc::UnboundedReceiver<TransportEvent>,
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError> {
        let mut st = self.broker.state.lock().expect("broker lock");
        st.subscriptions.push((filter.to_owned(), self.id));
        Ok(())
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        _qos: Qos,
    ) -> Result<(), TransportError> {
        let st = self.broker.state.lock().expect("broker lock");
        let mut sent = std::collections::HashSet::new();
        for (filter, id) in &st.subscriptions {
            if topic_matches(filter, topic) && sent.insert(*id) {
                if let Some(tx) = st.clients.get(id) {
                    let _ = tx.send(TransportEvent::Message {
                        topic: topic.to_owned(),
                        payload: payload.to_vec(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<TransportEvent, TransportError> {
        self.rx.recv().await.ok_or(TransportError::Closed)
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        if let Ok(mut st) = self.broker.state.lock() {
            st.clients.remove(&self.id);
            st.subscriptions.retain(|(_, id)| *id != self.id);
        }
    }
}

/// A boxed transport is one: a driver can be given either kind (Lanyard's
/// topics, or AWS IoT's shadow through [`crate::aws_device`]) behind one
/// type.
#[async_trait]
impl<T: Transport + ?Sized> Transport for Box<T> {
    async fn subscribe(&mut self, filter: &str) -> Result<(), TransportError> {
        (**self).subscribe(filter).await
    }
    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
    ) -> Result<(), TransportError> {
        (**self).publish(topic, payload, qos).await
    }
    async fn recv(&mut self) -> Result<TransportEvent, TransportError> {
        (**self).recv().await
    }
    fn try_recv(&mut self) -> Option<TransportEvent> {
        (**self).try_recv()
    }
    fn hold_acks(&mut self) {
        (**self).hold_acks()
    }
    fn ack_handled(&mut self) {
        (**self).ack_handled()
    }
    async fn flush(&mut self, within: std::time::Duration) -> Result<(), TransportError> {
        (**self).flush(within).await
    }
    fn acknowledged(&self) -> u64 {
        (**self).acknowledged()
    }
    fn reconnects(&self) -> u64 {
        (**self).reconnects()
    }
    fn has_connected(&self) -> bool {
        (**self).has_connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_mqtt() {
        assert!(topic_matches("lanyard/v1/+/ack", "lanyard/v1/ly-1/ack"));
        assert!(topic_matches("lanyard/#", "lanyard/v1/ly-1/shadow/update"));
        assert!(!topic_matches("lanyard/v1/+/ack", "lanyard/v1/ly-1/cmd"));
        assert!(!topic_matches("lanyard/v1/+", "lanyard/v1/a/b"));
    }

    #[tokio::test]
    async fn the_memory_broker_routes_by_subscription() {
        let broker = MemoryBroker::new();
        let mut a = broker.connect();
        let mut b = broker.connect();
        b.subscribe("x/+").await.unwrap();
        a.publish("x/1", b"hi", Qos::AtLeastOnce).await.unwrap();
        a.publish("y/1", b"no", Qos::AtLeastOnce).await.unwrap();
        assert_eq!(
            b.recv().await.unwrap(),
            TransportEvent::Message {
                topic: "x/1".into(),
                payload: b"hi".to_vec()
            }
        );
    }
}
