//! The fleet's conflict policies: what the cloud side (the twin host)
//! applies when a property changed on both sides. The device never needs
//! them: it reports what it did, and the twin host decides.

use super::document::{ConflictPolicy, Shadow};
use super::path::PathBuf;
use crate::error::Error;

/// Most per-property policies a fleet sets: as many as a shadow holds.
pub const MAX_FLEET_POLICIES: usize = super::document::MAX_POLICIES;
/// Longest dotted property path of a per-property policy, bytes.
pub const MAX_POLICY_PATH_LEN: usize = 64;

/// A per-property conflict policy: a dotted path and its policy.
pub type PropertyPolicy = (heapless::String<MAX_POLICY_PATH_LEN>, ConflictPolicy);

/// A fleet's conflict policies: one for every property, and some of their
/// own.
///
/// ```
/// use lanyard_core::shadow::{ConflictPolicy, FleetPolicies, Shadow, PathBuf};
/// let mut fleet = FleetPolicies::new(ConflictPolicy::CloudWins);
/// fleet.set("hvac", ConflictPolicy::LatestWins)?;
/// let mut shadow: Shadow<16, 512> = Shadow::new(ConflictPolicy::DeviceWins);
/// fleet.apply_to(&mut shadow)?;
/// let setpoint = PathBuf::from_dotted("hvac.setpoint")?;
/// assert_eq!(shadow.policy_for(setpoint.as_path()), ConflictPolicy::LatestWins);
/// # Ok::<(), lanyard_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPolicies {
    /// For properties without their own.
    pub default: ConflictPolicy,
    properties: heapless::Vec<PropertyPolicy, MAX_FLEET_POLICIES>,
}

impl Default for FleetPolicies {
    /// Cloud wins everywhere.
    fn default() -> Self {
        FleetPolicies::new(ConflictPolicy::CloudWins)
    }
}

impl FleetPolicies {
    /// `default` for every property.
    pub const fn new(default: ConflictPolicy) -> Self {
        FleetPolicies {
            default,
            properties: heapless::Vec::new(),
        }
    }

    /// Gives the property at `dotted` (and those under it) its own policy,
    /// replacing one it had. Refuses a path that is not a property path,
    /// or a policy past [`MAX_FLEET_POLICIES`]; nothing changes then.
    pub fn set(&mut self, dotted: &str, policy: ConflictPolicy) -> Result<(), Error> {
        PathBuf::from_dotted(dotted)?;
        if let Some(p) = self.properties.iter_mut().find(|(p, _)| p == dotted) {
            p.1 = policy;
            return Ok(());
        }
        let mut path = heapless::String::new();
        path.push_str(dotted)
            .map_err(|_| crate::PathError::KeyTooLong { len: dotted.len() })?;
        self.properties
            .push((path, policy))
            .map_err(|_| crate::CapacityError::Table {
                capacity: MAX_FLEET_POLICIES,
            })?;
        Ok(())
    }

    /// The properties with their own policy.
    pub fn properties(&self) -> &[PropertyPolicy] {
        &self.properties
    }

    /// Sets these policies on a shadow.
    pub fn apply_to<const L: usize, const P: usize>(
        &self,
        shadow: &mut Shadow<L, P>,
    ) -> Result<(), Error> {
        shadow.set_policy(&PathBuf::new(), self.default)?;
        for (path, policy) in &self.properties {
            shadow.set_policy(&PathBuf::from_dotted(path)?, *policy)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_replace_refuse_bad_paths_and_stop_at_capacity() {
        let mut f = FleetPolicies::default();
        f.set("sensors", ConflictPolicy::DeviceWins).unwrap();
        f.set("sensors", ConflictPolicy::ManualResolve).unwrap();
        assert_eq!(f.properties().len(), 1);
        assert_eq!(f.properties()[0].1, ConflictPolicy::ManualResolve);
        // Not a property path: refused, nothing changed.
        assert!(f.set("a..b", ConflictPolicy::LatestWins).is_err());
        assert!(f.set("", ConflictPolicy::LatestWins).is_err());
        for i in 1..MAX_FLEET_POLICIES {
            let mut name: heapless::String<8> = heapless::String::new();
            core::fmt::Write::write_fmt(&mut name, format_args!("p{i}")).unwrap();
            f.set(&name, ConflictPolicy::LatestWins).unwrap();
        }
        assert!(f.set("one.too.many", ConflictPolicy::LatestWins).is_err());
        assert_eq!(f.properties().len(), MAX_FLEET_POLICIES);
        // All of them fit a shadow.
        let mut shadow: Shadow<8, 256> = Shadow::new(ConflictPolicy::DeviceWins);
        f.apply_to(&mut shadow).unwrap();
        let p = PathBuf::from_dotted("sensors.t").unwrap();
        assert_eq!(
            shadow.policy_for(p.as_path()),
            ConflictPolicy::ManualResolve
        );
        let other = PathBuf::from_dotted("other").unwrap();
        assert_eq!(
            shadow.policy_for(other.as_path()),
            ConflictPolicy::CloudWins
        );
    }
}
