//! The policy decision's combine step, pure and shared: the eBPF program and the policy
//! compiler's `lookup`/`explain` both decide with this one function, so they cannot
//! drift apart (the differential test checks the whole path on random worlds).
use crate::{PolicyValue, ACTION_ALLOW};

/// The outcome of one direction's check (or of a whole flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Cookie of the entry that decided (0: no entry covered the subject).
    pub cookie: u32,
    /// The direction whose check decided a denial (0 when allowed).
    pub direction: u8,
}

/// Combines the two LPM lookups of one direction (see `PolicyKey`): the entry found for
/// the exact peer and the one found for any peer. An allow from either wins; otherwise
/// an entry found denies (with its cookie); no entry at all means no policy covers the
/// subject in this direction: allowed, unless `deny_unmanaged` (enforcement `always`).
/// References, not copies: the eBPF program passes map values as they are (copying an
/// `Option<PolicyValue>` leaves a register the verifier rejects as unread).
#[inline(always)]
#[must_use]
pub fn combine(
    exact: Option<&PolicyValue>,
    any: Option<&PolicyValue>,
    deny_unmanaged: bool,
    direction: u8,
) -> Decision {
    if let Some(v) = exact {
        if v.action == ACTION_ALLOW {
            return Decision {
                allowed: true,
                cookie: v.cookie,
                direction: 0,
            };
        }
    }
    if let Some(v) = any {
        if v.action == ACTION_ALLOW {
            return Decision {
                allowed: true,
                cookie: v.cookie,
                direction: 0,
            };
        }
    }
    match exact.or(any) {
        Some(v) => Decision {
            allowed: false,
            cookie: v.cookie,
            direction,
        },
        None => Decision {
            allowed: !deny_unmanaged,
            cookie: 0,
            direction: if deny_unmanaged { direction } else { 0 },
        },
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;

    use super::*;
    use crate::ACTION_DENY;

    fn v(action: u32, cookie: u32) -> Option<&'static PolicyValue> {
        Some(Box::leak(Box::new(PolicyValue { action, cookie })))
    }

    #[test]
    fn an_allow_wins_then_an_entry_denies_then_the_mode_decides() {
        let allow = |cookie| Decision {
            allowed: true,
            cookie,
            direction: 0,
        };
        assert_eq!(combine(v(ACTION_ALLOW, 1), v(ACTION_DENY, 2), false, 1), allow(1));
        assert_eq!(combine(v(ACTION_DENY, 1), v(ACTION_ALLOW, 2), false, 1), allow(2));
        assert_eq!(combine(None, v(ACTION_ALLOW, 2), true, 1), allow(2));
        assert_eq!(
            combine(v(ACTION_DENY, 3), v(ACTION_DENY, 4), false, 2),
            Decision {
                allowed: false,
                cookie: 3,
                direction: 2
            },
            "the exact entry's cookie names the denial"
        );
        assert_eq!(
            combine(None, v(ACTION_DENY, 4), false, 1),
            Decision {
                allowed: false,
                cookie: 4,
                direction: 1
            }
        );
        assert_eq!(combine(None, None, false, 1), allow(0), "no policy covers the pod");
        assert_eq!(
            combine(None, None, true, 1),
            Decision {
                allowed: false,
                cookie: 0,
                direction: 1
            },
            "enforcement always"
        );
    }
}
