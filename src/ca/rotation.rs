//! The rotation plan, as a pure function of time and the authorities' states.
//!
//! With `L` the active CA's lifetime (generation to NotAfter):
//! - at `L/2` a *prepared* CA is generated and enters the bundle at once;
//! - at `5L/6` the prepared CA starts signing, provided it has been published for `L/3` (the
//!   normal gap; it is shorter only if the daemon was down through the prepare window, and then
//!   the old CA keeps signing until it expires rather than activate an unpublished one);
//! - the old CA is *retired*: it signs nothing more and leaves the bundle when the last SVID it
//!   may have signed has expired (`min(NotAfter, retirement + longest SVID TTL + grace)`);
//! - anything past its NotAfter leaves the bundle; with no usable CA at all, a new one is
//!   generated and activated at once (first start, or a daemon down for longer than `L`).

use std::time::{Duration, SystemTime};

use crate::store::AuthorityState;

/// Extra time a retired CA stays published beyond its SVIDs' TTL, covering issuance that raced
/// with retirement and peers' clock skew.
pub const RETIRE_GRACE: Duration = Duration::from_secs(30);

/// What the plan needs to know of an authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotView {
    pub generation: u64,
    pub state: AuthorityState,
    pub issued_at: SystemTime,
    pub not_after: SystemTime,
    pub prune_after: Option<SystemTime>,
}

impl SlotView {
    fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }
    fn prepare_at(&self) -> SystemTime {
        self.issued_at + self.lifetime() / 2
    }
    fn rotate_at(&self) -> SystemTime {
        self.issued_at + self.lifetime() * 5 / 6
    }
    fn publication_lead(&self) -> Duration {
        self.lifetime() / 3
    }
}

/// One change to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Remove from the bundle.
    Prune(u64),
    /// Make this prepared authority the signer.
    Activate(u64),
    /// Stop signing with the active one; keep it published until `prune_after`.
    Retire {
        generation: u64,
        prune_after: SystemTime,
    },
    /// Generate a new authority in this state.
    Generate(AuthorityState),
}

/// The next step at `now`, or `None` when the plan is settled. `svid_ttl` is the longest TTL of
/// any SVID (X.509 or JWT) the CA signs.
pub(crate) fn next_step(now: SystemTime, slots: &[SlotView], svid_ttl: Duration) -> Option<Step> {
    if let Some(gone) = slots.iter().find(|s| {
        s.not_after <= now
            || (s.state == AuthorityState::Retired && s.prune_after.is_some_and(|p| p <= now))
    }) {
        return Some(Step::Prune(gone.generation));
    }
    let active = slots.iter().find(|s| s.state == AuthorityState::Active);
    let prepared = slots.iter().find(|s| s.state == AuthorityState::Prepared);
    match (active, prepared) {
        (None, Some(p)) => Some(Step::Activate(p.generation)),
        (None, None) => Some(Step::Generate(AuthorityState::Active)),
        (Some(a), Some(p)) => {
            if now >= a.rotate_at() && now >= p.issued_at + a.publication_lead() {
                Some(Step::Retire {
                    generation: a.generation,
                    prune_after: a.not_after.min(now + svid_ttl + RETIRE_GRACE),
                })
            } else {
                None
            }
        }
        (Some(a), None) => {
            (now >= a.prepare_at()).then_some(Step::Generate(AuthorityState::Prepared))
        }
    }
}

/// When the plan should next be looked at.
pub(crate) fn next_event(slots: &[SlotView]) -> Option<SystemTime> {
    let active = slots.iter().find(|s| s.state == AuthorityState::Active);
    let prepared = slots.iter().find(|s| s.state == AuthorityState::Prepared);
    let plan = match (active, prepared) {
        (Some(a), None) => Some(a.prepare_at()),
        (Some(a), Some(p)) => Some(a.rotate_at().max(p.issued_at + a.publication_lead())),
        _ => None,
    };
    slots
        .iter()
        .flat_map(|s| [Some(s.not_after), s.prune_after])
        .chain([plan])
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use AuthorityState::*;

    const H: Duration = Duration::from_secs(3600);

    fn t(h: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + H * 1000 + H * u32::try_from(h).unwrap_or(0)
    }
    fn slot(generation: u64, state: AuthorityState, issued: u64, ttl_h: u64) -> SlotView {
        SlotView {
            generation,
            state,
            issued_at: t(issued),
            not_after: t(issued) + H * u32::try_from(ttl_h).unwrap_or(0),
            prune_after: None,
        }
    }

    #[test]
    fn nothing_stored_generates_an_active_authority() {
        assert_eq!(next_step(t(0), &[], H), Some(Step::Generate(Active)));
    }

    #[test]
    fn a_prepared_authority_is_generated_at_half_life() {
        let a = [slot(1, Active, 0, 24)];
        assert_eq!(next_step(t(11), &a, H), None);
        assert_eq!(next_event(&a), Some(t(12)));
        assert_eq!(next_step(t(12), &a, H), Some(Step::Generate(Prepared)));
    }

    #[test]
    fn the_prepared_authority_signs_from_five_sixths_and_the_old_one_is_retired() {
        let slots = [slot(1, Active, 0, 24), slot(2, Prepared, 12, 24)];
        assert_eq!(next_step(t(19), &slots, H), None);
        assert_eq!(next_event(&slots), Some(t(20)));
        assert_eq!(
            next_step(t(20), &slots, H),
            Some(Step::Retire {
                generation: 1,
                prune_after: t(21) + RETIRE_GRACE
            })
        );
    }

    #[test]
    fn a_retired_authority_leaves_only_after_its_last_svid_expired() {
        let mut old = slot(1, Retired, 0, 24);
        old.prune_after = Some(t(21));
        let slots = [old, slot(2, Active, 12, 24)];
        assert_eq!(next_step(t(20), &slots, H), None);
        assert_eq!(next_event(&slots), Some(t(21)));
        assert_eq!(next_step(t(21), &slots, H), Some(Step::Prune(1)));
    }

    #[test]
    fn a_late_prepared_authority_waits_for_its_publication_lead() {
        // The daemon was down over the prepare window: the prepared CA appears at 22h.
        let slots = [slot(1, Active, 0, 24), slot(2, Prepared, 22, 24)];
        assert_eq!(next_step(t(23), &slots, H), None);
        // The old CA expires first: it is pruned, then the prepared one activates.
        assert_eq!(next_step(t(24), &slots, H), Some(Step::Prune(1)));
        assert_eq!(next_step(t(24), &slots[1..], H), Some(Step::Activate(2)));
    }

    #[test]
    fn everything_expired_generates_a_new_active_authority() {
        let slots = [slot(1, Active, 0, 24)];
        assert_eq!(next_step(t(30), &slots, H), Some(Step::Prune(1)));
        assert_eq!(next_step(t(30), &[], H), Some(Step::Generate(Active)));
    }
}
