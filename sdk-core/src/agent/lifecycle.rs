//! The device lifecycle. [`TRANSITIONS`] is the single source of truth:
//! [`next_state`] reads it, and `docs/lifecycle.md` is checked against it by
//! a test.

use core::fmt;

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LifecycleState {
    /// Fresh from the factory: no identity accepted by the cloud yet.
    Unprovisioned,
    /// A registration request is out; waiting for the cloud's answer.
    Provisioning,
    /// Registered and healthy: full service.
    Active,
    /// Registered but unhealthy (health Critical): reduced service.
    Degraded,
    /// Taken out of service by an operator; commands still work.
    Maintenance,
    /// Retired: credentials and state wiped; accepts nothing. Terminal.
    Decommissioned,
}

impl LifecycleState {
    /// Every state, in wire-code order.
    pub const ALL: [LifecycleState; 6] = [
        LifecycleState::Unprovisioned,
        LifecycleState::Provisioning,
        LifecycleState::Active,
        LifecycleState::Degraded,
        LifecycleState::Maintenance,
        LifecycleState::Decommissioned,
    ];

    /// Wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// From a wire code.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// Stable name, as in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            LifecycleState::Unprovisioned => "Unprovisioned",
            LifecycleState::Provisioning => "Provisioning",
            LifecycleState::Active => "Active",
            LifecycleState::Degraded => "Degraded",
            LifecycleState::Maintenance => "Maintenance",
            LifecycleState::Decommissioned => "Decommissioned",
        }
    }

    /// Whether the device is registered and in service in some form.
    pub fn is_registered(self) -> bool {
        matches!(
            self,
            LifecycleState::Active | LifecycleState::Degraded | LifecycleState::Maintenance
        )
    }
}

impl fmt::Display for LifecycleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What moves the device between states; also the `cause` of a lifecycle
/// event on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The device sends its registration request.
    Register,
    /// The cloud accepted the registration.
    RegistrationAccepted,
    /// The health check found the device Critical.
    HealthCritical,
    /// The health check found the device recovered (with hysteresis).
    HealthRecovered,
    /// An operator's command took the device into maintenance.
    EnterMaintenance,
    /// An operator's command brought it back.
    ExitMaintenance,
    /// An operator's command retired the device.
    Decommission,
}

impl Trigger {
    /// Every trigger, in wire-code order.
    pub const ALL: [Trigger; 7] = [
        Trigger::Register,
        Trigger::RegistrationAccepted,
        Trigger::HealthCritical,
        Trigger::HealthRecovered,
        Trigger::EnterMaintenance,
        Trigger::ExitMaintenance,
        Trigger::Decommission,
    ];

    /// Wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// From a wire code.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// Stable name, as in docs and logs.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Register => "register",
            Trigger::RegistrationAccepted => "registration_accepted",
            Trigger::HealthCritical => "health_critical",
            Trigger::HealthRecovered => "health_recovered",
            Trigger::EnterMaintenance => "enter_maintenance",
            Trigger::ExitMaintenance => "exit_maintenance",
            Trigger::Decommission => "decommission",
        }
    }
}

use LifecycleState::*;
use Trigger::*;

/// Every allowed transition: `(from, trigger, to)`. Anything not listed is
/// refused and changes nothing.
pub const TRANSITIONS: &[(LifecycleState, Trigger, LifecycleState)] = &[
    (Unprovisioned, Register, Provisioning),
    (Provisioning, RegistrationAccepted, Active),
    (Active, HealthCritical, Degraded),
    (Degraded, HealthRecovered, Active),
    (Active, EnterMaintenance, Maintenance),
    (Degraded, EnterMaintenance, Maintenance),
    (Maintenance, ExitMaintenance, Active),
    (Provisioning, Decommission, Decommissioned),
    (Active, Decommission, Decommissioned),
    (Degraded, Decommission, Decommissioned),
    (Maintenance, Decommission, Decommissioned),
];

/// A trigger that the current state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionRefused {
    /// The state the device is in (and stays in).
    pub state: LifecycleState,
    /// What was attempted.
    pub trigger: Trigger,
}

impl fmt::Display for TransitionRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not allowed in state {}",
            self.trigger.name(),
            self.state
        )
    }
}

impl core::error::Error for TransitionRefused {}

/// The state `trigger` leads to from `state`, by [`TRANSITIONS`].
///
/// ```
/// use lanyard_core::agent::lifecycle::*;
/// assert_eq!(next_state(LifecycleState::Active, Trigger::HealthCritical), Ok(LifecycleState::Degraded));
/// assert!(next_state(LifecycleState::Decommissioned, Trigger::Register).is_err());
/// ```
pub fn next_state(
    state: LifecycleState,
    trigger: Trigger,
) -> Result<LifecycleState, TransitionRefused> {
    TRANSITIONS
        .iter()
        .find(|(from, t, _)| *from == state && *t == trigger)
        .map(|(_, _, to)| *to)
        .ok_or(TransitionRefused { state, trigger })
}
