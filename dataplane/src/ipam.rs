//! Node-local IPv4 address management for the per-node pod CIDR.
//!
//! Pure logic: no I/O. The agent persists `Ipam` (serde) after every change so an
//! agent restart keeps every lease. Addresses are handed out round-robin (like the
//! reference `host-local` plugin) so a freed address is not reused at once: a client
//! that still talks to the old pod does not reach the new one by accident.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub use crate::endpoint::Owner;

/// Why an address could not be leased or a CIDR not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("pod CIDR {cidr:?} is not a valid IPv4 prefix (want a.b.c.d/len with len 8..=30)")]
    InvalidCidr { cidr: String },
    #[error("pod CIDR {cidr} has no free address ({leased} leased)")]
    Exhausted { cidr: String, leased: usize },
}

/// An IPv4 prefix: `ipnetwork`'s, the one prefix type across Moat.
pub type Cidr = Ipv4Network;

/// Parses a pod or service CIDR `a.b.c.d/len` (len 8 to 30); the host bits are cleared.
///
/// # Errors
/// When the text is not an IPv4 prefix of length 8 to 30.
pub fn parse_cidr(s: &str) -> Result<Cidr, IpamError> {
    let bad = || IpamError::InvalidCidr { cidr: s.to_string() };
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(bad());
    }
    let net = Ipv4Network::new(addr, len).map_err(|_| bad())?;
    Ipv4Network::new(net.network(), len).map_err(|_| bad())
}

/// The persisted form of a CIDR, `{"base": "10.244.0.0", "len": 24}` (what earlier
/// agents wrote, so their `ipam.json` still loads).
mod cidr_on_disk {
    use std::net::Ipv4Addr;

    use ipnetwork::Ipv4Network;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct OnDisk {
        base: Ipv4Addr,
        len: u8,
    }

    pub fn serialize<S: Serializer>(c: &Ipv4Network, s: S) -> Result<S::Ok, S::Error> {
        OnDisk {
            base: c.network(),
            len: c.prefix(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Network, D::Error> {
        let o = OnDisk::deserialize(d)?;
        Ipv4Network::new(o.base, o.len).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ipam {
    #[serde(with = "cidr_on_disk")]
    cidr: Cidr,
    /// Leased address (host order) → owner.
    leases: BTreeMap<u32, Owner>,
    /// Offset the next search starts from.
    cursor: u32,
}

impl Ipam {
    #[must_use]
    pub fn new(cidr: Cidr) -> Self {
        Self {
            cidr,
            leases: BTreeMap::new(),
            cursor: 1,
        }
    }

    #[must_use]
    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The address leased to `owner`, if any.
    #[must_use]
    pub fn lookup(&self, owner: &Owner) -> Option<Ipv4Addr> {
        self.leases
            .iter()
            .find(|(_, o)| *o == owner)
            .map(|(ip, _)| Ipv4Addr::from(*ip))
    }

    /// Leases an address to `owner`; the same owner always gets its existing lease back.
    ///
    /// # Errors
    /// `Exhausted` when every usable address (all but network and broadcast) is leased.
    pub fn allocate(&mut self, owner: &Owner) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.lookup(owner) {
            return Ok(ip);
        }
        let size = self.cidr.size();
        // Offsets 1..size-1: skip the network and broadcast addresses.
        let usable = size - 2;
        for step in 0..usable {
            let offset = 1 + (self.cursor - 1 + step) % usable;
            let ip = u32::from(self.cidr.network()) + offset;
            if let std::collections::btree_map::Entry::Vacant(slot) = self.leases.entry(ip) {
                slot.insert(owner.clone());
                self.cursor = 1 + offset % usable;
                return Ok(Ipv4Addr::from(ip));
            }
        }
        Err(IpamError::Exhausted {
            cidr: self.cidr.to_string(),
            leased: self.leases.len(),
        })
    }

    /// Releases `owner`'s lease; returns the freed address. Releasing twice is fine.
    pub fn release(&mut self, owner: &Owner) -> Option<Ipv4Addr> {
        let ip = self.lookup(owner)?;
        self.leases.remove(&u32::from(ip));
        Some(ip)
    }

    /// Every lease, in address order.
    pub fn leases(&self) -> impl Iterator<Item = (Ipv4Addr, &Owner)> {
        self.leases.iter().map(|(ip, o)| (Ipv4Addr::from(*ip), o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str) -> Owner {
        Owner {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn parses_and_normalises_cidr() {
        let c = parse_cidr("10.1.2.77/24").unwrap();
        assert_eq!(c.to_string(), "10.1.2.0/24");
        for bad in ["10.1.2.0", "10.1.2.0/31", "10.1.2.0/7", "x/24", "10.1.2.0/abc"] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn same_owner_same_address_and_round_robin() {
        let mut ipam = Ipam::new(parse_cidr("10.0.0.0/29").unwrap());
        let a = ipam.allocate(&owner("a")).unwrap();
        assert_eq!(a, "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ipam.allocate(&owner("a")).unwrap(), a);
        let b = ipam.allocate(&owner("b")).unwrap();
        assert_eq!(b, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ipam.release(&owner("a")), Some(a));
        assert_eq!(ipam.release(&owner("a")), None);
        // The freed .1 is not reused while fresh addresses remain.
        assert_eq!(
            ipam.allocate(&owner("c")).unwrap(),
            "10.0.0.3".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn exhaustion_skips_network_and_broadcast() {
        let mut ipam = Ipam::new(parse_cidr("10.0.0.0/30").unwrap());
        let got: Vec<_> = ["a", "b"].iter().map(|c| ipam.allocate(&owner(c)).unwrap()).collect();
        assert_eq!(
            got,
            ["10.0.0.1".parse::<Ipv4Addr>().unwrap(), "10.0.0.2".parse().unwrap()]
        );
        assert!(matches!(ipam.allocate(&owner("c")), Err(IpamError::Exhausted { .. })));
        ipam.release(&owner("a"));
        assert_eq!(
            ipam.allocate(&owner("c")).unwrap(),
            "10.0.0.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn survives_serialisation() {
        let mut ipam = Ipam::new(parse_cidr("10.0.0.0/24").unwrap());
        let a = ipam.allocate(&owner("a")).unwrap();
        let back: Ipam = serde_json::from_str(&serde_json::to_string(&ipam).unwrap()).unwrap();
        assert_eq!(back.lookup(&owner("a")), Some(a));
        assert_eq!(back.len(), 1);
        // The on-disk form earlier agents wrote still loads.
        let old: Ipam = serde_json::from_str(
            r#"{"cidr":{"base":"10.0.0.0","len":24},"leases":{"167772165":{"container_id":"a","ifname":"eth0"}},"cursor":5}"#,
        )
        .unwrap();
        assert_eq!(old.cidr().to_string(), "10.0.0.0/24");
        assert_eq!(old.lookup(&owner("a")), Some(Ipv4Addr::new(10, 0, 0, 5)));
    }
}
