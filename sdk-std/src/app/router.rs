//! The task that owns an app's transport. It publishes what the client's
//! calls send and hands each message it receives to the calls waiting for
//! its topic (answers, acknowledgements) or, when no call waits for it, as
//! an event to each subscription watching its device. No call holds the
//! transport while it waits, so calls from several tasks (or Python
//! threads, or Kotlin coroutines) proceed at once, and a call given up
//! half-way (a cancelled task) leaves nothing behind: its registration
//! goes with it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{AppError, AppEvent};
use crate::transport::{Qos, Transport, TransportError, TransportEvent};

/// How many messages a waiting call may have queued and not read yet: far
/// more than the answers it waits for. Beyond it (a device flooding its
/// acknowledgement topic), further messages for that call are dropped.
const WAITER_QUEUE: usize = 1024;

/// How many sends may queue for the transport before a call waits.
const ORDER_QUEUE: usize = 256;

/// A subscription of no capacity was asked for: it could hold no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroCapacity;

impl std::fmt::Display for ZeroCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("capacity: at least one event")
    }
}

impl std::error::Error for ZeroCapacity {}

/// What a subscription watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Every device's events.
    Fleet,
    /// These devices' (names as the client uses them: `{tenant}/{id}` on
    /// a host that serves tenants).
    Devices(BTreeSet<String>),
}

impl Watch {
    /// One device's events.
    pub fn device(name: &str) -> Watch {
        Watch::Devices(BTreeSet::from([name.to_owned()]))
    }

    /// These devices' events, or every device's when `None`: what the
    /// bindings take from an optional list.
    pub fn of<I: IntoIterator<Item = String>>(devices: Option<I>) -> Watch {
        match devices {
            None => Watch::Fleet,
            Some(names) => Watch::Devices(names.into_iter().collect()),
        }
    }

    /// Whether a message about `device` (`None`: about no device) is one
    /// it watches.
    fn wants(&self, device: Option<&str>) -> bool {
        match self {
            Watch::Fleet => true,
            Watch::Devices(names) => device.is_some_and(|d| names.contains(d)),
        }
    }
}

/// The device a topic is about: its first level after the prefix, or its
/// first two (`{tenant}/{id}`) on a host that serves tenants.
fn device_of(topic: &str, tenants: bool) -> Option<&str> {
    let rest = topic.strip_prefix(lanyard_core::agent::messages::TOPIC_PREFIX)?;
    let mut ends = rest.match_indices('/').map(|(i, _)| i);
    let end = if tenants { ends.nth(1) } else { ends.next() }?;
    Some(&rest[..end])
}

/// A stream of the events one subscription watches
/// ([`AppClient::events`](super::AppClient::events)), kept in a bounded
/// queue of messages as they came (decoded when read, so a full queue
/// costs what the messages weigh): when its reader falls behind by more
/// than the queue holds, newer messages are dropped, and counted, so that
/// an app that stops reading does not grow without bound.
pub struct Events {
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
    ended: Arc<Mutex<Option<TransportError>>>,
    undecodable: Arc<AtomicU64>,
    tenants: bool,
    event_of: EventOf,
}

impl Events {
    /// The next event; once the client is closed or its connection failed
    /// for good, [`AppError::Transport`] with why. A message that is no
    /// event is skipped (and counted when it does not decode).
    /// Cancel-safe: an event is never lost to a wait given up.
    pub async fn next(&mut self) -> Result<AppEvent, AppError> {
        loop {
            let Some((topic, payload)) = self.rx.recv().await else {
                return Err(AppError::Transport(ended_why(&self.ended)));
            };
            if let Some(ev) = (self.event_of)(&topic, &payload, self.tenants, &self.undecodable) {
                return Ok(ev);
            }
        }
    }

    /// The next event if one is queued now.
    pub fn try_next(&mut self) -> Option<AppEvent> {
        while let Ok((topic, payload)) = self.rx.try_recv() {
            if let Some(ev) = (self.event_of)(&topic, &payload, self.tenants, &self.undecodable) {
                return Some(ev);
            }
        }
        None
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A handle on [`dropped`](Self::dropped)'s count that can be read
    /// while the queue itself is being waited on elsewhere.
    pub fn drop_counter(&self) -> DropCounter {
        DropCounter(self.dropped.clone())
    }
}

/// How many events a subscription dropped ([`Events::drop_counter`]).
#[derive(Debug, Clone)]
pub struct DropCounter(Arc<AtomicU64>);

impl DropCounter {
    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the client's calls ask of the task.
enum Order {
    Publish {
        topic: String,
        payload: Vec<u8>,
        done: oneshot::Sender<Result<(), TransportError>>,
    },
    Subscribe {
        filter: String,
        done: oneshot::Sender<Result<(), TransportError>>,
    },
    /// Acknowledge what was read, wait for what was sent, then end.
    Close {
        within: Duration,
        done: oneshot::Sender<Result<(), TransportError>>,
    },
}

/// A subscription as the task sees it.
struct Subscriber {
    watch: Watch,
    tx: mpsc::Sender<(String, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
}

/// Who gets what the task receives.
#[derive(Default)]
struct Routes {
    next_waiter: u64,
    /// Waiting call -> where its messages go.
    waiters: HashMap<u64, mpsc::Sender<(String, Vec<u8>)>>,
    /// Topic -> the calls waiting for it.
    by_topic: HashMap<String, Vec<u64>>,
    subscribers: Vec<Subscriber>,
}

/// Turns a message no call waited for into an event, or `None` (not one an
/// app watches); counts and logs what does not decode.
pub(super) type EventOf = fn(&str, &[u8], bool, &AtomicU64) -> Option<AppEvent>;

/// The client's side of the task.
pub(super) struct Router {
    orders: mpsc::Sender<Order>,
    routes: Arc<Mutex<Routes>>,
    /// Why the task ended, once it has.
    ended: Arc<Mutex<Option<TransportError>>>,
    pub(super) undecodable: Arc<AtomicU64>,
    tenants: bool,
    event_of: EventOf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds
    // consistent routes.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ended_why(ended: &Mutex<Option<TransportError>>) -> TransportError {
    lock(ended).clone().unwrap_or(TransportError::Closed)
}

impl Router {
    /// Starts the task on the current tokio runtime; it ends when the
    /// client is dropped or closed, or the transport fails.
    pub(super) fn start<T: Transport + 'static>(
        transport: T,
        tenants: bool,
        event_of: EventOf,
    ) -> Router {
        let (orders, rx) = mpsc::channel(ORDER_QUEUE);
        let router = Router {
            orders,
            routes: Arc::default(),
            ended: Arc::default(),
            undecodable: Arc::default(),
            tenants,
            event_of,
        };
        let task = Task {
            transport,
            routes: router.routes.clone(),
            ended: router.ended.clone(),
            tenants,
        };
        tokio::spawn(task.run(rx));
        router
    }

    async fn order(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), TransportError>>) -> Order,
    ) -> Result<(), AppError> {
        let (done, answer) = oneshot::channel();
        let gone = || AppError::Transport(ended_why(&self.ended));
        self.orders.send(make(done)).await.map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(AppError::Transport)
    }

    /// Publishes at QoS 1 (queued with the transport: sent, not yet
    /// acknowledged by the broker).
    pub(super) async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), AppError> {
        self.order(|done| Order::Publish {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            done,
        })
        .await
    }

    pub(super) async fn subscribe(&self, filter: &str) -> Result<(), AppError> {
        self.order(|done| Order::Subscribe {
            filter: filter.to_owned(),
            done,
        })
        .await
    }

    pub(super) async fn close(&self, within: Duration) -> Result<(), AppError> {
        self.order(|done| Order::Close { within, done }).await
    }

    /// Registers a call waiting for messages on `topics`: from now until
    /// the [`Waiting`] is dropped, they go to it rather than to the
    /// subscriptions. Register before sending what they answer.
    pub(super) fn wait_on(&self, topics: impl IntoIterator<Item = String>) -> Waiting {
        let (tx, rx) = mpsc::channel(WAITER_QUEUE);
        let mut routes = lock(&self.routes);
        routes.next_waiter += 1;
        let id = routes.next_waiter;
        routes.waiters.insert(id, tx);
        let topics: Vec<String> = topics.into_iter().collect();
        for t in &topics {
            routes.by_topic.entry(t.clone()).or_default().push(id);
        }
        Waiting {
            id,
            topics,
            rx,
            routes: self.routes.clone(),
            ended: self.ended.clone(),
        }
    }

    /// A new subscription to `watch`'s events, holding at most `capacity`
    /// unread.
    pub(super) fn events(&self, watch: Watch, capacity: usize) -> Result<Events, ZeroCapacity> {
        if capacity == 0 {
            return Err(ZeroCapacity);
        }
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        lock(&self.routes).subscribers.push(Subscriber {
            watch,
            tx,
            dropped: dropped.clone(),
        });
        Ok(Events {
            rx,
            dropped,
            ended: self.ended.clone(),
            undecodable: self.undecodable.clone(),
            tenants: self.tenants,
            event_of: self.event_of,
        })
    }
}

/// A call's registration for the messages it waits for.
pub(super) struct Waiting {
    id: u64,
    topics: Vec<String>,
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    routes: Arc<Mutex<Routes>>,
    ended: Arc<Mutex<Option<TransportError>>>,
}

impl Waiting {
    /// The next message on one of its topics, or [`AppError::Timeout`]
    /// at `deadline`.
    pub(super) async fn next(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<(String, Vec<u8>), AppError> {
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Err(_) => Err(AppError::Timeout),
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(AppError::Transport(ended_why(&self.ended))),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut routes = lock(&self.routes);
        routes.waiters.remove(&self.id);
        for t in &self.topics {
            if let Some(ids) = routes.by_topic.get_mut(t) {
                ids.retain(|i| *i != self.id);
                if ids.is_empty() {
                    routes.by_topic.remove(t);
                }
            }
        }
    }
}

struct Task<T> {
    transport: T,
    routes: Arc<Mutex<Routes>>,
    ended: Arc<Mutex<Option<TransportError>>>,
    tenants: bool,
}

impl<T: Transport> Task<T> {
    async fn run(mut self, mut orders: mpsc::Receiver<Order>) {
        let why = loop {
            tokio::select! {
                order = orders.recv() => match order {
                    // Every handle is gone.
                    None => break TransportError::Closed,
                    Some(Order::Publish { topic, payload, done }) => {
                        let r = self.transport.publish(&topic, &payload, Qos::AtLeastOnce).await;
                        let _ = done.send(r);
                    }
                    Some(Order::Subscribe { filter, done }) => {
                        let _ = done.send(self.transport.subscribe(&filter).await);
                    }
                    Some(Order::Close { within, done }) => {
                        // What was read is done with: not handed again to
                        // the next client with this id.
                        self.transport.ack_handled();
                        let _ = done.send(self.transport.flush(within).await);
                        break TransportError::Closed;
                    }
                },
                // `recv` is cancel-safe: a message is never lost to an
                // order that came first.
                ev = self.transport.recv() => match ev {
                    Ok(TransportEvent::Message { topic, payload }) => self.deliver(topic, payload),
                    Ok(TransportEvent::Reconnected) => {}
                    Err(e) => break e,
                },
            }
        };
        *lock(&self.ended) = Some(why);
        // Waiting calls and readers see the end through their closed
        // queues.
        let mut routes = lock(&self.routes);
        routes.waiters.clear();
        routes.subscribers.clear();
    }

    fn deliver(&mut self, topic: String, payload: Vec<u8>) {
        let mut routes = lock(&self.routes);
        if let Some(ids) = routes.by_topic.get(&topic) {
            for id in ids {
                if let Some(tx) = routes.waiters.get(id) {
                    let _ = tx.try_send((topic.clone(), payload.clone()));
                }
            }
            return;
        }
        routes.subscribers.retain(|s| !s.tx.is_closed());
        // One topic, one device: found once for every subscription.
        let device = device_of(&topic, self.tenants);
        for s in routes.subscribers.iter() {
            if s.watch.wants(device)
                && let Err(mpsc::error::TrySendError::Full(_)) =
                    s.tx.try_send((topic.clone(), payload.clone()))
            {
                s.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
