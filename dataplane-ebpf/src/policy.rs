//! Identity resolution and the policy decision for a new (or re-checked) flow.
//!
//! The lookup order is the contract documented on `PolicyKey` in `dataplane-common` and
//! mirrored by `moat_policy_compiler::lookup`: exact peer, then any peer; allowed when
//! either finds an allow entry; no entry at all means no policy covers the subject.
use aya_ebpf::maps::lpm_trie::Key;
use moat_dataplane_common::policy::combine;
pub use moat_dataplane_common::policy::Decision;
use moat_dataplane_common::{config_flag, direction, Config, PolicyKey, ANY_PEER, PREFIX_FULL};

use crate::maps::{IPCACHE, POLICY};

/// `reserved:world`: an address no ipcache prefix covers.
pub const IDENTITY_WORLD: u32 = 2;
/// `reserved:init`: a local pod the agent has not given an identity yet.
pub const IDENTITY_INIT: u32 = 5;

/// Identity of an address (wire order); `fallback` on an ipcache miss.
#[inline(always)]
pub fn identity_of(addr: u32, fallback: u32) -> u32 {
    match IPCACHE.get(&Key::new(32, addr)) {
        Some(info) => info.identity,
        None => fallback,
    }
}

#[inline(always)]
fn lookup(cfg: &Config, subject: u32, dir: u8, peer: u32, proto: u8, dport: u16) -> Decision {
    let port = dport.to_ne_bytes(); // already in wire order
    let key = |peer: u32| {
        Key::new(
            PREFIX_FULL,
            PolicyKey {
                subject,
                direction: dir,
                peer: peer.to_be_bytes(),
                proto,
                dport: port,
            },
        )
    };
    let exact = POLICY.get(&key(peer));
    let any = POLICY.get(&key(ANY_PEER));
    combine(exact, any, cfg.flags & config_flag::DENY_UNMANAGED != 0, dir)
}

/// The verdict for a flow from `src` to `dst`: the source pod's egress policy when
/// `egress`, the destination pod's ingress policy when `ingress`; both must allow.
#[inline(always)]
pub fn decide(cfg: &Config, src: u32, dst: u32, proto: u8, dport: u16, egress: bool, ingress: bool) -> Decision {
    let mut cookie = 0;
    if egress {
        let d = lookup(cfg, src, direction::EGRESS, dst, proto, dport);
        if !d.allowed {
            return d;
        }
        cookie = d.cookie;
    }
    if ingress {
        let d = lookup(cfg, dst, direction::INGRESS, src, proto, dport);
        if !d.allowed {
            return d;
        }
        cookie = d.cookie;
    }
    Decision {
        allowed: true,
        cookie,
        direction: 0,
    }
}
