//! The shadow document: desired and reported trees, versions, and the
//! conflict rules that keep cloud and device from fighting over a leaf.

use minicbor::decode::Decoder;
use minicbor::encode::{Encoder, Write};

use super::path::{Path, PathBuf};
use super::table::PathTable;
use super::tree::{DEFAULT_LEAVES, DEFAULT_POOL, Entry, FoundLeaves, StateTree, stored_len};
use super::value::{LeafMeta, Source, Value};
use crate::error::{CapacityError, DecodeError, Error};
use crate::wire::cbor;

/// What decides a leaf that both sides changed since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictPolicy {
    /// The desired value stands; the device must apply it. For configuration.
    CloudWins,
    /// The reported value stands and becomes the desired one. For sensor
    /// readings and other facts only the device knows.
    DeviceWins,
    /// The write with the newer timestamp wins; within the clock-skew
    /// tolerance the cloud wins. For user settings changed from both ends.
    LatestWins,
    /// Parked for an operator; the leaf keeps its reported value meanwhile.
    ManualResolve,
}

impl ConflictPolicy {
    /// Every policy, in counter order.
    pub const ALL: [ConflictPolicy; 4] = [
        ConflictPolicy::CloudWins,
        ConflictPolicy::DeviceWins,
        ConflictPolicy::LatestWins,
        ConflictPolicy::ManualResolve,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ConflictPolicy::CloudWins => "cloud_wins",
            ConflictPolicy::DeviceWins => "device_wins",
            ConflictPolicy::LatestWins => "latest_wins",
            ConflictPolicy::ManualResolve => "manual_resolve",
        }
    }

    /// The policy a [`ConflictPolicy::name`] names.
    ///
    /// ```
    /// use lanyard_core::shadow::ConflictPolicy;
    /// assert_eq!(ConflictPolicy::from_name("device_wins"), Some(ConflictPolicy::DeviceWins));
    /// assert_eq!(ConflictPolicy::from_name("DeviceWins"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Most per-path policies a document holds.
pub const MAX_POLICIES: usize = 16;
/// Most conflicts parked for manual resolution at once.
pub const MAX_PARKED: usize = 8;
const POLICY_POOL: usize = 512;
const PARKED_POOL: usize = 1024;
/// Most desired properties a device may refuse at once (see
/// [`Shadow::rejected`]).
pub const MAX_REJECTED: usize = 32;
const REJECTED_POOL: usize = 2048;

/// The desired properties a device refuses, with their reason codes.
pub(crate) type Rejections = PathTable<u32, MAX_REJECTED, REJECTED_POOL>;

/// Tunables of the conflict rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Timestamps closer than this are a tie under `LatestWins` (the cloud
    /// wins ties). The seed's guidance: NTP keeps devices within ±1 s.
    pub skew_tolerance_ms: u64,
    /// First backoff window after a conflict.
    pub backoff_base_ms: u64,
    /// Largest backoff window.
    pub backoff_cap_ms: u64,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            skew_tolerance_ms: 1_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 64_000,
        }
    }
}

/// One decided (or parked) conflict, handed to the caller of
/// [`Shadow::sync`] for logging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConflictRecord<'a> {
    /// The contested leaf.
    pub path: Path<'a>,
    /// The policy that applied.
    pub policy: ConflictPolicy,
    /// The side whose value stands; `None` when parked for an operator.
    pub winner: Option<Source>,
    /// The desired value.
    pub cloud: Value<'a>,
    /// The reported value.
    pub device: Value<'a>,
    /// When the cloud wrote its value (cloud clock, ms).
    pub cloud_ts_ms: u64,
    /// When the device wrote its value (device clock, ms).
    pub device_ts_ms: u64,
}

/// Conflict counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConflictStats {
    /// Conflicts seen, by policy (index: [`ConflictPolicy::ALL`] order).
    pub by_policy: [u64; 4],
    /// Conflicts the cloud won, including operator decisions.
    pub cloud_won: u64,
    /// Conflicts the device won, including operator decisions.
    pub device_won: u64,
    /// Conflicts that could not be parked because the queue was full; they
    /// stay undecided and are parked at a later sync.
    pub park_overflow: u64,
}

impl ConflictStats {
    /// Conflicts seen under `policy`.
    pub fn count(&self, policy: ConflictPolicy) -> u64 {
        self.by_policy[policy.index()]
    }
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct SyncReport {
    /// Conflicts found in this sync.
    pub conflicts: u32,
    /// Whether the document changed (its version went up).
    pub changed: bool,
    /// Earliest time of the next sync: later than now after a conflict.
    pub next_sync_not_before_ms: u64,
}

/// Where the last-synced fingerprint of a leaf comes from after a sync.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Base {
    /// Both sides agree on the (new) desired value.
    Agreed,
    /// The conflict was decided for the cloud; the device's current value is
    /// the base, so its pending delta is not a second conflict.
    Reported,
    /// Unchanged.
    Keep,
}

/// How one desired leaf comes out of a sync.
#[derive(Clone, Copy)]
struct Decision {
    take_reported: bool,
    base: Base,
    conflict: Option<(ConflictPolicy, Option<Source>)>,
    park: bool,
    /// Where the leaf's path sits in the reported tree (its twin link) and
    /// in the agreed fingerprints, found once per sync: every later step
    /// reads them instead of searching again.
    reported: Option<u32>,
    synced: Option<u32>,
}

/// A device shadow with fixed capacity: each tree holds `LEAVES` leaves in
/// `POOL` bytes. The defaults hold an 8 KB AWS IoT shadow document
/// (see [`DEFAULT_LEAVES`]); firmware picks smaller numbers.
///
/// Memory: four trees of `LEAVES * 48 + POOL` bytes each (desired, reported,
/// last-synced fingerprints, and a scratch tree that lets every operation
/// build its result aside and leave the document untouched on error).
///
/// ```
/// use lanyard_core::shadow::*;
/// let mut s: Shadow<16, 512> = Shadow::new(ConflictPolicy::LatestWins);
/// let mut up: StateTree<16, 512> = StateTree::new();
/// up.insert(&PathBuf::from_dotted("setpoint")?, Value::Int(72))?;
/// s.apply_desired(&up, Some(0), 10_000)?;           // the app, at t = 10 s
/// let mut dev: StateTree<16, 512> = StateTree::new();
/// dev.insert(&PathBuf::from_dotted("setpoint")?, Value::Int(68))?;
/// s.apply_reported(&dev, None, 15_000)?;            // the button, at t = 15 s
/// let mut seen = None;
/// let report = s.sync(15_000, u32::MAX / 2, |c| {
///     if let Value::Int(v) = c.device { seen = Some((c.winner, v)) }
/// })?;
/// assert_eq!(report.conflicts, 1);
/// assert_eq!(seen, Some((Some(Source::Device), 68)));
/// assert_eq!(s.desired().get_dotted("setpoint").unwrap().value, Value::Int(68));
/// # Ok::<(), lanyard_core::Error>(())
/// ```
pub struct Shadow<const LEAVES: usize = DEFAULT_LEAVES, const POOL: usize = DEFAULT_POOL> {
    /// Desired, reported, last-agreed fingerprints, scratch.
    trees: Trees<LEAVES, POOL>,
    version: u64,
    last_sync_version: u64,
    default_policy: ConflictPolicy,
    policies: PathTable<ConflictPolicy, MAX_POLICIES, POLICY_POOL>,
    /// Parked conflicts and when they were parked.
    parked: PathTable<u64, MAX_PARKED, PARKED_POOL>,
    /// Desired properties the device refuses, by reason code.
    rejected: Rejections,
    config: ShadowConfig,
    stats: ConflictStats,
    backoff_exp: u32,
    sync_not_before_ms: u64,
}

impl<const L: usize, const P: usize> Shadow<L, P> {
    /// An empty document at version 0 with one policy for every path.
    pub const fn new(default_policy: ConflictPolicy) -> Self {
        Shadow {
            trees: Trees::new(),
            version: 0,
            last_sync_version: 0,
            default_policy,
            policies: PathTable::new(),
            parked: PathTable::new(),
            rejected: PathTable::new(),
            config: ShadowConfig {
                skew_tolerance_ms: 1_000,
                backoff_base_ms: 1_000,
                backoff_cap_ms: 64_000,
            },
            stats: ConflictStats {
                by_policy: [0; 4],
                cloud_won: 0,
                device_won: 0,
                park_overflow: 0,
            },
            backoff_exp: 0,
            sync_not_before_ms: 0,
        }
    }

    /// Replaces the tunables.
    pub fn set_config(&mut self, config: ShadowConfig) {
        self.config = config;
    }

    /// The tunables.
    pub fn config(&self) -> ShadowConfig {
        self.config
    }

    /// Sets the policy for `path` and everything inside it; the longest
    /// matching path decides.
    pub fn set_policy(&mut self, path: &PathBuf, policy: ConflictPolicy) -> Result<(), Error> {
        if path.as_path().depth() == 0 {
            self.default_policy = policy;
            return Ok(());
        }
        Ok(self.policies.set(path.as_path().as_bytes(), policy)?)
    }

    /// The policy that applies to `path`.
    pub fn policy_for(&self, path: Path<'_>) -> ConflictPolicy {
        self.policies
            .longest_prefix(path.as_bytes())
            .unwrap_or(self.default_policy)
    }

    /// The document version: 0 when new, +1 per accepted change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The desired tree.
    pub fn desired(&self) -> &StateTree<L, P> {
        self.trees.get(DESIRED)
    }

    /// The reported tree.
    pub fn reported(&self) -> &StateTree<L, P> {
        self.trees.get(REPORTED)
    }

    /// Conflict counters.
    pub fn stats(&self) -> ConflictStats {
        self.stats
    }

    /// Earliest time at which [`Shadow::sync`] will run.
    pub fn sync_not_before_ms(&self) -> u64 {
        self.sync_not_before_ms
    }

    /// The desired properties the device refuses, each with its reason code
    /// ([`RejectReason::code`](crate::agent::platform::RejectReason::code)),
    /// as the device last reported them. A refusal stays until the device
    /// reports without it (it took the value, or a later one).
    pub fn rejected(&self) -> impl Iterator<Item = (Path<'_>, u32)> + '_ {
        self.rejected.iter()
    }

    /// The rejections of a device's update as a table, checked before
    /// anything is applied; `None` clears them.
    pub(crate) fn rejections_of<const UL: usize, const UP: usize>(
        tree: Option<&StateTree<UL, UP>>,
    ) -> Result<Rejections, Error> {
        let mut table = Rejections::new();
        for leaf in tree.into_iter().flat_map(|t| t.iter()) {
            let code = crate::wire::reason_code(leaf.value).ok_or(DecodeError::Malformed {
                what: "rejections whose leaves are reason codes",
                at: 0,
            })?;
            table.set(leaf.path.as_bytes(), code)?;
        }
        Ok(table)
    }

    /// Replaces the device's rejections (see [`Shadow::rejected`]).
    pub(crate) fn set_rejected(&mut self, table: Rejections) {
        self.rejected = table;
    }

    /// Conflicts waiting for an operator, with the time they were parked.
    pub fn parked(&self) -> impl Iterator<Item = (Path<'_>, u64)> + '_ {
        self.parked.iter()
    }

    fn check_version(&self, expected: Option<u64>) -> Result<(), Error> {
        match expected {
            Some(v) if v != self.version => Err(Error::VersionConflict {
                expected: v,
                current: self.version,
            }),
            _ => Ok(()),
        }
    }

    /// Applies a cloud-side update to `desired` (null deletes). With
    /// `expected_version`, the update is refused unless it is current.
    /// Returns the new version. On error nothing changes.
    pub fn apply_desired<const UL: usize, const UP: usize>(
        &mut self,
        update: &StateTree<UL, UP>,
        expected_version: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, Error> {
        self.apply(Some(update), None, expected_version, now_ms)
    }

    /// Applies a device-side update to `reported`. See [`Shadow::apply_desired`].
    pub fn apply_reported<const UL: usize, const UP: usize>(
        &mut self,
        update: &StateTree<UL, UP>,
        expected_version: Option<u64>,
        now_ms: u64,
    ) -> Result<u64, Error> {
        self.apply(None, Some(update), expected_version, now_ms)
    }

    /// Applies both parts of an update atomically: both or neither. The
    /// desired part is written as the cloud, the reported part as the device,
    /// both with `timestamp_ms`.
    pub fn apply<const UL: usize, const UP: usize>(
        &mut self,
        desired: Option<&StateTree<UL, UP>>,
        reported: Option<&StateTree<UL, UP>>,
        expected_version: Option<u64>,
        timestamp_ms: u64,
    ) -> Result<u64, Error> {
        self.check_version(expected_version)?;
        // Decide each part's path and check both fit before touching either,
        // so the update is atomic.
        let parts = [(DESIRED, desired), (REPORTED, reported)];
        let mut fast = [false; 2];
        let mut found = [FoundLeaves::new(), FoundLeaves::new()];
        for (n, (role, part)) in parts.into_iter().enumerate() {
            let Some(u) = part else { continue };
            fast[n] = self
                .trees
                .get(role)
                .can_overwrite_in_place(u, &mut found[n]);
            if !fast[n] {
                self.trees.get(role).merge_fits(u)?;
            }
        }
        let version = self.version + 1;
        let mut rebuilt = false;
        for (n, (role, part)) in parts.into_iter().enumerate() {
            let Some(update) = part else { continue };
            let source = if role == DESIRED {
                Source::Cloud
            } else {
                Source::Device
            };
            let meta = LeafMeta {
                timestamp_ms,
                source,
                version,
            };
            let [desired, reported, _, scratch] = self.trees.split();
            let (target, other) = if role == DESIRED {
                (desired, reported)
            } else {
                (reported, desired)
            };
            if fast[n] {
                // After a rebuilt desired tree the twin links are stale; the
                // full refresh below sets every flag instead.
                target.overwrite_in_place(other, update, &found[n], meta, role == DESIRED, rebuilt);
            } else {
                // Cannot fail: merge_fits checked the capacity.
                target.merge_into(update, meta, scratch)?;
                self.trees.commit(role);
                rebuilt = true;
            }
        }
        if rebuilt {
            self.refresh_differences();
        }
        self.version = version;
        Ok(version)
    }

    /// Writes the delta, AWS-style: the desired leaves whose reported value
    /// differs or is missing, leaving out conflicts parked for an operator.
    pub fn delta_into<const DL: usize, const DP: usize>(
        &self,
        out: &mut StateTree<DL, DP>,
    ) -> Result<(), Error> {
        let parked = &self.parked;
        self.trees
            .get(DESIRED)
            .flagged_into(|p| parked.get(p).is_some(), out)?;
        Ok(())
    }

    /// True when the delta is empty.
    pub fn in_sync(&self) -> bool {
        let desired = self.trees.get(DESIRED);
        (0..desired.len()).all(|i| {
            !desired.differs(i) || self.parked.get(desired.at(i).path.as_bytes()).is_some()
        })
    }

    /// Recomputes every desired leaf's "reported differs" flag, after an
    /// operation that rebuilt a tree.
    fn refresh_differences(&mut self) {
        let [desired, reported, _, _] = self.trees.split();
        desired.mark_differences(reported);
        desired.build_index();
        reported.build_index();
    }

    /// Looks at every desired leaf against its reported value and the value
    /// both sides last agreed on, and settles what changed since the last
    /// sync:
    ///
    /// - only the cloud changed it: nothing to decide, the delta carries it;
    /// - only the device changed it: under `CloudWins` the delta pushes the
    ///   desired value back; under every other policy the device's value
    ///   becomes the desired one;
    /// - both changed it to different values: a conflict, decided by the
    ///   path's policy and reported to `on_conflict`.
    ///
    /// After a sync that found conflicts, the next one waits an exponential,
    /// fully jittered backoff: `jitter` (any `u32`, uniformly random from the
    /// caller) picks the point in `[0, window]`. A sync before then returns
    /// [`Error::BackingOff`] and changes nothing.
    pub fn sync(
        &mut self,
        now_ms: u64,
        jitter: u32,
        mut on_conflict: impl FnMut(&ConflictRecord<'_>),
    ) -> Result<SyncReport, Error> {
        if now_ms < self.sync_not_before_ms {
            return Err(Error::BackingOff {
                until_ms: self.sync_not_before_ms,
            });
        }
        // Pass 1: decide every leaf and check the result fits.
        let mut decisions: heapless::Vec<Decision, L> = heapless::Vec::new();
        let (mut bytes, mut parks) = (0usize, 0usize);
        let (desired, reported, synced) = (
            self.trees.get(DESIRED),
            self.trees.get(REPORTED),
            self.trees.get(SYNCED),
        );
        // The fingerprints are sorted by path like desired: one cursor
        // finds each leaf's.
        let mut cursor = 0;
        for i in 0..desired.len() {
            let d = desired.at(i);
            let (at, found) = synced.seek(cursor, d.path.as_bytes());
            cursor = at;
            let dec = self.decide(i, &d, found.then_some(at), parks);
            parks += usize::from(dec.park);
            let chosen = match (dec.take_reported, dec.reported) {
                (true, Some(r)) => reported.at(r as usize),
                _ => d,
            };
            bytes += stored_len(&chosen);
            // One decision per desired leaf, and desired holds at most L.
            let _ = decisions.push(dec);
        }
        if bytes > P {
            return Err(CapacityError::Pool { capacity: P }.into());
        }

        let changed = decisions.iter().any(|d| d.take_reported);
        // The common sync finds no conflict and takes nothing from the
        // device: desired state stays as it is (and so do the delta flags
        // and indexes), and the agreed fingerprints are rewritten only if
        // one of them moved.
        if !changed && decisions.iter().all(|d| d.conflict.is_none()) && !tests::full_sync_only() {
            let fps = self.agreed_fingerprints(&decisions);
            if !self.fingerprints_current(&decisions, &fps) {
                self.write_fingerprints(&decisions, &fps)?;
            }
            self.end_sync(now_ms, jitter, self.version, 0);
            return Ok(SyncReport {
                conflicts: 0,
                changed: false,
                next_sync_not_before_ms: self.sync_not_before_ms,
            });
        }

        // Pass 2: write the new desired tree and report conflicts.
        let version = if changed {
            self.version + 1
        } else {
            self.version
        };
        let mut conflicts = 0u32;
        let [desired, reported, _, scratch] = self.trees.split();
        scratch.clear();
        for (i, dec) in decisions.iter().enumerate() {
            let d = desired.at(i);
            let r = dec.reported.map(|r| reported.at(r as usize));
            if let (Some((policy, winner)), Some(r)) = (dec.conflict, r) {
                conflicts += 1;
                self.stats.by_policy[policy.index()] += 1;
                match winner {
                    Some(Source::Cloud) => self.stats.cloud_won += 1,
                    Some(Source::Device) => self.stats.device_won += 1,
                    None if dec.park => {
                        // Room was checked in `decide`.
                        let _ = self.parked.set(d.path.as_bytes(), now_ms);
                    }
                    None => self.stats.park_overflow += 1,
                }
                on_conflict(&ConflictRecord {
                    path: d.path,
                    policy,
                    winner,
                    cloud: d.value,
                    device: r.value,
                    cloud_ts_ms: d.meta.timestamp_ms,
                    device_ts_ms: r.meta.timestamp_ms,
                });
            }
            match (dec.take_reported, r) {
                (true, Some(r)) => {
                    let meta = LeafMeta { version, ..r.meta };
                    scratch.push_sorted(d.path.as_bytes(), r.value, meta)?;
                }
                _ => scratch.push_sorted(d.path.as_bytes(), d.value, d.meta)?,
            }
        }
        self.trees.commit(DESIRED);

        // Taken from the new desired tree: a leaf that took the device's
        // value agrees on that one.
        let fps = self.agreed_fingerprints(&decisions);
        self.write_fingerprints(&decisions, &fps)?;
        self.refresh_differences();
        self.end_sync(now_ms, jitter, version, conflicts);
        Ok(SyncReport {
            conflicts,
            changed,
            next_sync_not_before_ms: self.sync_not_before_ms,
        })
    }

    /// The fingerprint each desired leaf's decision gives it (`None`: it
    /// has no agreed value).
    fn fingerprint_of(&self, i: usize, dec: &Decision) -> Option<i64> {
        match dec.base {
            Base::Agreed => Some(fingerprint(self.trees.get(DESIRED).at(i).value)),
            Base::Reported => dec
                .reported
                .map(|r| fingerprint(self.trees.get(REPORTED).at(r as usize).value)),
            Base::Keep => dec
                .synced
                .map(|b| int_of(self.trees.get(SYNCED).at(b as usize).value)),
        }
    }

    /// Whether the agreed fingerprints already are what `decisions` give
    /// (one per desired path that has one, and no others).
    fn fingerprints_current(&self, decisions: &[Decision], fps: &[Option<i64>]) -> bool {
        let synced = self.trees.get(SYNCED);
        let mut held = 0;
        for (dec, fp) in decisions.iter().zip(fps) {
            let Some(fp) = *fp else {
                continue;
            };
            held += 1;
            match dec.synced {
                Some(b) if int_of(synced.at(b as usize).value) == fp => {}
                _ => return false,
            }
        }
        held == synced.len()
    }

    /// The agreed fingerprint of each desired leaf after `decisions`.
    fn agreed_fingerprints(&self, decisions: &[Decision]) -> heapless::Vec<Option<i64>, L> {
        decisions
            .iter()
            .enumerate()
            .map(|(i, dec)| self.fingerprint_of(i, dec))
            .collect()
    }

    /// Rewrites the agreed fingerprints `fps`, one per desired path (paths
    /// only in the pool, so they always fit where desired fits).
    fn write_fingerprints(
        &mut self,
        decisions: &[Decision],
        fps: &[Option<i64>],
    ) -> Result<(), Error> {
        // The same paths as the fingerprints held (the common case: values
        // moved, no leaf came or went): overwritten in place.
        let held = fps.iter().filter(|fp| fp.is_some()).count();
        let same_paths = held == self.trees.get(SYNCED).len()
            && fps
                .iter()
                .zip(decisions)
                .all(|(fp, dec)| fp.is_none() || dec.synced.is_some());
        if same_paths {
            let [desired, _, synced, _] = self.trees.split();
            for (i, (fp, dec)) in fps.iter().zip(decisions).enumerate() {
                if let (Some(fp), Some(b)) = (fp, dec.synced) {
                    synced.set_int_at(b as usize, *fp, desired.at(i).meta);
                }
            }
            return Ok(());
        }
        let [desired, _, _, scratch] = self.trees.split();
        scratch.clear();
        for (i, fp) in fps.iter().enumerate() {
            if let Some(fp) = fp {
                let d = desired.at(i);
                scratch.push_sorted(d.path.as_bytes(), Value::Int(*fp), d.meta)?;
            }
        }
        self.trees.commit(SYNCED);
        // Lookups by path (an operator's resolve, persistence) use it.
        let [_, _, synced, _] = self.trees.split();
        synced.build_index();
        Ok(())
    }

    /// What every sync ends with: parked conflicts that ended dropped, the
    /// version, and the backoff before the next one.
    fn end_sync(&mut self, now_ms: u64, jitter: u32, version: u64, conflicts: u32) {
        // Parked conflicts end when their leaf is gone or agreed.
        let (desired, reported) = (self.trees.get(DESIRED), self.trees.get(REPORTED));
        self.parked.retain(|p| {
            let path = Path::from_encoded(p);
            match (desired.get(path), reported.get(path)) {
                (Some(d), Some(r)) => d.value != r.value,
                (Some(_), None) => true,
                _ => false,
            }
        });

        self.version = version;
        self.last_sync_version = version;
        if conflicts > 0 {
            self.backoff_exp = self.backoff_exp.saturating_add(1);
            let window = backoff_window(self.config, self.backoff_exp);
            let delay = (u128::from(window) * u128::from(jitter) / u128::from(u32::MAX)) as u64;
            self.sync_not_before_ms = now_ms.saturating_add(delay);
        } else {
            self.backoff_exp = 0;
            self.sync_not_before_ms = now_ms;
        }
    }

    /// Decides desired leaf `i` (`d`), whose agreed fingerprint is at
    /// `synced` in the fingerprints tree.
    fn decide(
        &self,
        i: usize,
        d: &Entry<'_>,
        synced: Option<usize>,
        parks_so_far: usize,
    ) -> Decision {
        let (desired, reported) = (self.trees.get(DESIRED), self.trees.get(REPORTED));
        // The twin links are current whenever the document is (every
        // change of either tree refreshes them).
        let twin = desired.twin(i);
        debug_assert_eq!(twin, reported.find(d.path.as_bytes()).ok());
        debug_assert_eq!(synced, self.trees.get(SYNCED).find(d.path.as_bytes()).ok());
        let keep = Decision {
            take_reported: false,
            base: Base::Keep,
            conflict: None,
            park: false,
            reported: twin.map(|r| r as u32),
            synced: synced.map(|b| b as u32),
        };
        let Some(r) = twin.map(|r| reported.at(r)) else {
            return keep;
        };
        if r.value == d.value {
            return Decision {
                base: Base::Agreed,
                ..keep
            };
        }
        if self.parked.get(d.path.as_bytes()).is_some() {
            return keep;
        }
        let base = synced.map(|b| int_of(self.trees.get(SYNCED).at(b).value));
        // A side changed the leaf if its value differs from the one both
        // last agreed on, however many syncs ago: a delta the device has not
        // applied yet does not make its own later change any less a change.
        // With no agreed value yet, a side changed it if it wrote it since
        // the last sync.
        let changed = |e: &Entry<'_>| match base {
            Some(b) => b != fingerprint(e.value),
            None => e.meta.version > self.last_sync_version,
        };
        let policy = self.policy_for(d.path);
        let device_wins = Decision {
            take_reported: true,
            base: Base::Agreed,
            ..keep
        };
        match (changed(d), changed(&r)) {
            // Cloud-only change, or nothing new: the delta carries it.
            (_, false) => keep,
            // Device-only change.
            (false, true) if policy == ConflictPolicy::CloudWins => keep,
            (false, true) => device_wins,
            // Both changed: a conflict.
            (true, true) => {
                let winner = match policy {
                    ConflictPolicy::CloudWins => Some(Source::Cloud),
                    ConflictPolicy::DeviceWins => Some(Source::Device),
                    ConflictPolicy::LatestWins => {
                        let skew = self.config.skew_tolerance_ms;
                        if r.meta.timestamp_ms > d.meta.timestamp_ms.saturating_add(skew) {
                            Some(Source::Device)
                        } else {
                            Some(Source::Cloud)
                        }
                    }
                    ConflictPolicy::ManualResolve => None,
                };
                match winner {
                    Some(Source::Device) => Decision {
                        conflict: Some((policy, winner)),
                        ..device_wins
                    },
                    Some(Source::Cloud) => Decision {
                        base: Base::Reported,
                        conflict: Some((policy, winner)),
                        ..keep
                    },
                    None => Decision {
                        conflict: Some((policy, None)),
                        park: self.parked.len() + parks_so_far < MAX_PARKED,
                        ..keep
                    },
                }
            }
        }
    }

    /// An operator's decision on a parked conflict. `Source::Cloud` keeps the
    /// desired value (the delta then asks the device to apply it);
    /// `Source::Device` makes the reported value the desired one. Returns the
    /// document version afterwards.
    pub fn resolve(&mut self, path: Path<'_>, winner: Source, now_ms: u64) -> Result<u64, Error> {
        if self.parked.get(path.as_bytes()).is_none() {
            return Err(Error::NotParked);
        }
        let policy = self.policy_for(path);
        let _ = policy;
        let [desired, reported, synced, _] = self.trees.split();
        let reported = reported.get(path).map(|r| (fingerprint(r.value), r));
        match (winner, reported) {
            (Source::Device, Some((fp, r))) => {
                let version = self.version + 1;
                let meta = LeafMeta {
                    timestamp_ms: now_ms,
                    source: Source::Device,
                    version,
                };
                desired.insert_with_meta(path, r.value, meta)?;
                synced.insert_with_meta(path, Value::Int(fp), meta)?;
                self.version = version;
                self.stats.device_won += 1;
            }
            (_, reported) => {
                if let Some((fp, r)) = reported {
                    synced.insert_with_meta(path, Value::Int(fp), r.meta)?;
                }
                self.stats.cloud_won += 1;
            }
        }
        self.parked.remove(path.as_bytes());
        self.refresh_differences();
        Ok(self.version)
    }

    // ---- persistence ----

    /// Encodes the whole document (trees, metadata, sync state, parked
    /// conflicts) as CBOR into `out`; see `docs/wire-format.md`. Policies and
    /// tunables are configuration and are not included.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        Ok(cbor::encode_into(out, |e| self.encode_cbor(e))?)
    }

    /// Writes the document with minicbor.
    pub fn encode_cbor<W: Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(8 + u64::from(self.rejected.len() > 0))?;
        e.u8(1)?.u64(self.version)?;
        e.u8(2)?;
        self.trees.get(DESIRED).encode_cbor(e)?;
        e.u8(3)?;
        self.trees.get(REPORTED).encode_cbor(e)?;
        e.u8(4)?;
        self.trees.get(DESIRED).encode_meta(e)?;
        e.u8(5)?;
        self.trees.get(REPORTED).encode_meta(e)?;
        e.u8(6)?.u64(self.last_sync_version)?;
        e.u8(7)?;
        self.trees.get(SYNCED).encode_cbor(e)?;
        e.u8(8)?.array(self.parked.len() as u64)?;
        for (p, at) in self.parked.iter() {
            e.array(2)?.array(p.depth() as u64)?;
            for k in p.keys() {
                e.str(k)?;
            }
            e.u64(at)?;
        }
        if self.rejected.len() > 0 {
            e.u8(9)?.array(self.rejected.len() as u64)?;
            for (p, code) in self.rejected.iter() {
                e.array(2)?.array(p.depth() as u64)?;
                for k in p.keys() {
                    e.str(k)?;
                }
                e.u32(code)?;
            }
        }
        Ok(())
    }

    /// Decodes a document written by [`Shadow::encode`] into a new shadow
    /// with `default_policy`. Fields it does not know are skipped.
    pub fn decode(bytes: &[u8], default_policy: ConflictPolicy) -> Result<Self, Error> {
        let mut s = Self::new(default_policy);
        let mut d = Decoder::new(bytes);
        s.decode_cbor(&mut d)?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes { at: d.position() }.into());
        }
        Ok(s)
    }

    fn decode_cbor(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        let at = d.position();
        let Some(n) = d.map()? else {
            return Err(DecodeError::Malformed {
                what: "a definite-length document map",
                at,
            });
        };
        let mut seen = 0u16;
        let meta = LeafMeta::new(Source::Cloud, 0);
        for _ in 0..n {
            let key = cbor::read_u64(d)?;
            if (1..=9).contains(&key) {
                if seen & (1 << key) != 0 {
                    return Err(DecodeError::DuplicateKey { at: d.position() });
                }
                seen |= 1 << key;
            }
            match key {
                1 => self.version = cbor::read_u64(d)?,
                2 => self.trees.get_mut(DESIRED).decode_cbor(d, meta, false)?,
                3 => self.trees.get_mut(REPORTED).decode_cbor(d, meta, false)?,
                4 if seen & (1 << 2) != 0 => self.trees.get_mut(DESIRED).decode_meta(d)?,
                5 if seen & (1 << 3) != 0 => self.trees.get_mut(REPORTED).decode_meta(d)?,
                6 => self.last_sync_version = cbor::read_u64(d)?,
                7 => self.trees.get_mut(SYNCED).decode_cbor(d, meta, false)?,
                8 => self.decode_parked(d)?,
                9 => self.decode_rejected(d)?,
                4 | 5 => {
                    return Err(DecodeError::Malformed {
                        what: "metadata after its tree",
                        at: d.position(),
                    });
                }
                _ => cbor::skip_item(d, 0)?,
            }
        }
        for k in [1u16, 2, 3, 4, 5] {
            if seen & (1 << k) == 0 {
                return Err(DecodeError::MissingField(
                    [
                        "",
                        "version",
                        "desired",
                        "reported",
                        "desired metadata",
                        "reported metadata",
                    ][k as usize],
                ));
            }
        }
        self.refresh_differences();
        if self.last_sync_version > self.version {
            return Err(DecodeError::Malformed {
                what: "last sync version not after the version",
                at,
            });
        }
        Ok(())
    }

    fn decode_rejected(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        let rejected = &mut self.rejected;
        cbor::each_tuple(
            d,
            2,
            "a definite array of rejections",
            "[path, reason code]",
            |d| {
                let path = cbor::read_path(d)?;
                let at = d.position();
                let code =
                    u32::try_from(cbor::read_u64(d)?).map_err(|_| DecodeError::Malformed {
                        what: "a reason code of 32 bits",
                        at,
                    })?;
                rejected
                    .set(path.as_path().as_bytes(), code)
                    .map_err(DecodeError::Capacity)
            },
        )
    }

    fn decode_parked(&mut self, d: &mut Decoder<'_>) -> Result<(), DecodeError> {
        let parked = &mut self.parked;
        cbor::each_tuple(
            d,
            2,
            "a definite array of parked conflicts",
            "[path, parked-at]",
            |d| {
                let path = cbor::read_path(d)?;
                let parked_at = cbor::read_u64(d)?;
                parked
                    .set(path.as_path().as_bytes(), parked_at)
                    .map_err(DecodeError::Capacity)
            },
        )
    }
}

impl<const L: usize, const P: usize> Clone for Shadow<L, P> {
    fn clone(&self) -> Self {
        Shadow {
            trees: self.trees.clone(),
            version: self.version,
            last_sync_version: self.last_sync_version,
            default_policy: self.default_policy,
            policies: self.policies.clone(),
            parked: self.parked.clone(),
            rejected: self.rejected.clone(),
            config: self.config,
            stats: self.stats,
            backoff_exp: self.backoff_exp,
            sync_not_before_ms: self.sync_not_before_ms,
        }
    }
}

impl<const L: usize, const P: usize> core::fmt::Debug for Shadow<L, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shadow")
            .field("version", &self.version)
            .field("desired", self.desired())
            .field("reported", self.reported())
            .finish_non_exhaustive()
    }
}

const DESIRED: usize = 0;
const REPORTED: usize = 1;
const SYNCED: usize = 2;
const SCRATCH: usize = 3;

/// The four trees of a shadow, addressed by role. An operation builds its
/// result in the scratch tree and then swaps roles: swapping two indices
/// instead of two trees of tens of KiB.
#[derive(Clone)]
struct Trees<const L: usize, const P: usize> {
    parts: [StateTree<L, P>; 4],
    /// `role[r]` is the index in `parts` of the tree playing role `r`.
    role: [usize; 4],
}

impl<const L: usize, const P: usize> Trees<L, P> {
    const fn new() -> Self {
        Trees {
            parts: [
                StateTree::new(),
                StateTree::new(),
                StateTree::new(),
                StateTree::new(),
            ],
            role: [DESIRED, REPORTED, SYNCED, SCRATCH],
        }
    }

    fn get(&self, role: usize) -> &StateTree<L, P> {
        &self.parts[self.role[role]]
    }

    fn get_mut(&mut self, role: usize) -> &mut StateTree<L, P> {
        &mut self.parts[self.role[role]]
    }

    /// All four, mutable, in role order.
    fn split(&mut self) -> [&mut StateTree<L, P>; 4] {
        let mut by_index = self.parts.each_mut().map(Some);
        // `role` is always a permutation of 0..4, so each take finds a tree.
        self.role
            .map(|i| by_index[i].take().expect("roles are a permutation"))
    }

    /// The scratch tree takes `role`; the old one becomes scratch.
    fn commit(&mut self, role: usize) {
        self.role.swap(role, SCRATCH);
    }
}

fn backoff_window(c: ShadowConfig, exp: u32) -> u64 {
    let shift = exp.saturating_sub(1).min(63);
    c.backoff_base_ms
        .checked_shl(shift)
        .filter(|w| *w >> shift == c.backoff_base_ms)
        .unwrap_or(u64::MAX)
        .min(c.backoff_cap_ms)
}

fn int_of(v: Value<'_>) -> i64 {
    match v {
        Value::Int(i) => i,
        _ => 0,
    }
}

/// FNV-1a over a value's type and bytes. The last-synced table keeps only
/// this, so it never needs more pool than `desired` does; a collision would
/// only make a changed value look unchanged for one sync.
fn fingerprint(v: Value<'_>) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match v {
        Value::Null => eat(&[0]),
        Value::Bool(b) => eat(&[1, u8::from(b)]),
        Value::Int(i) => {
            eat(&[2]);
            eat(&i.to_le_bytes())
        }
        Value::Float(x) => {
            eat(&[3]);
            eat(&x.to_bits().to_le_bytes())
        }
        Value::Text(s) => {
            eat(&[4]);
            eat(s.as_bytes())
        }
        Value::Bytes(b) => {
            eat(&[5]);
            eat(b)
        }
        Value::Array(a) => {
            eat(&[6]);
            eat(a.as_cbor())
        }
    }
    h as i64
}

#[cfg(not(test))]
mod tests {
    /// Outside tests the shortcut in `sync` is always taken when it can be.
    pub(super) fn full_sync_only() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicBool, Ordering};

    /// Set while a test runs the sync without its shortcut, to compare the
    /// two (other tests meanwhile take the full sync too, which is always
    /// right).
    static FULL_SYNC_ONLY: AtomicBool = AtomicBool::new(false);

    pub(super) fn full_sync_only() -> bool {
        FULL_SYNC_ONLY.load(Ordering::Relaxed)
    }

    /// The sync's shortcut (nothing taken from the device, no conflict)
    /// leaves every document exactly as the full sync does: random
    /// histories under every policy, compared after each step.
    #[test]
    fn the_sync_shortcut_changes_nothing_the_full_sync_would_not() {
        type D = Shadow<16, 512>;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let keys = ["a", "b", "c"];
        let encoded = |d: &D| {
            let mut buf = [0u8; 4096];
            let n = d.encode(&mut buf).unwrap();
            buf[..n].to_vec()
        };
        let mut shortcuts = 0;
        for history in 0..400 {
            let policy = ConflictPolicy::ALL[history % 4];
            let (mut fast, mut full) = (D::new(policy), D::new(policy));
            let mut now = 0u64;
            for _ in 0..30 {
                now += next(3_000);
                let mut tree: StateTree<16, 512> = StateTree::new();
                for _ in 0..1 + next(3) {
                    let k = PathBuf::from_keys(&[keys[next(3) as usize], keys[next(3) as usize]])
                        .unwrap();
                    let _ = tree.insert(&k, Value::Int(next(3) as i64));
                }
                match next(5) {
                    0 | 1 => {
                        let a = fast.apply_desired(&tree, None, now).map(|_| ());
                        let b = full.apply_desired(&tree, None, now).map(|_| ());
                        assert_eq!(a, b);
                    }
                    2 | 3 => {
                        let a = fast.apply_reported(&tree, None, now).map(|_| ());
                        let b = full.apply_reported(&tree, None, now).map(|_| ());
                        assert_eq!(a, b);
                    }
                    _ => {
                        let before = fast.version();
                        let mut seen_fast = 0;
                        let a = fast.sync(now, u32::MAX, |_| seen_fast += 1);
                        FULL_SYNC_ONLY.store(true, Ordering::Relaxed);
                        let mut seen_full = 0;
                        let b = full.sync(now, u32::MAX, |_| seen_full += 1);
                        FULL_SYNC_ONLY.store(false, Ordering::Relaxed);
                        assert_eq!(a, b);
                        assert_eq!(seen_fast, seen_full);
                        if matches!(a, Ok(r) if !r.changed && r.conflicts == 0)
                            && fast.version() == before
                        {
                            shortcuts += 1;
                        }
                    }
                }
                assert_eq!(encoded(&fast), encoded(&full), "history {history}");
                assert_eq!(fast.in_sync(), full.in_sync());
                let (mut da, mut db): (StateTree<16, 512>, StateTree<16, 512>) =
                    (StateTree::new(), StateTree::new());
                fast.delta_into(&mut da).unwrap();
                full.delta_into(&mut db).unwrap();
                assert_eq!(da, db);
            }
        }
        // The comparison covered the shortcut, not only the full path.
        assert!(shortcuts > 100, "{shortcuts} shortcuts");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = ShadowConfig::default();
        let w: [u64; 9] = core::array::from_fn(|i| backoff_window(c, i as u32 + 1));
        assert_eq!(
            w,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 64_000, 64_000
            ]
        );
        assert_eq!(backoff_window(c, u32::MAX), 64_000);
    }
}
