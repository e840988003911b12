//! Read-only handles on the pinned counter and conntrack maps, for the API: `moatctl
//! drops` and `status` read the kernel's numbers directly instead of asking the node
//! owner, so they answer while the owner is busy.
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use moat_dataplane_common::{metric, metric_name, CtEntry, CtKey, DropCount, DropKey, CT_MAP, DROPS_MAP, METRICS_MAP};

use super::datapath::DatapathError;

pub struct Stats {
    metrics: PerCpuArray<MapData, u64>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    drops: PerCpuHashMap<MapData, DropKey, DropCount>,
}

fn open(pin_dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    MapData::from_pin(pin_dir.join(name)).map_err(|source| DatapathError::Map {
        name,
        source: Box::new(source),
    })
}

impl Stats {
    /// Opens the maps the datapath pinned in `pin_dir`.
    ///
    /// # Errors
    /// When a pin is missing or is not the expected map.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let err = |name: &'static str| {
            move |source| DatapathError::Map {
                name,
                source: Box::new(source),
            }
        };
        Ok(Self {
            metrics: Map::from_map_data(open(pin_dir, METRICS_MAP)?)
                .and_then(PerCpuArray::try_from)
                .map_err(err(METRICS_MAP))?,
            ct: Map::from_map_data(open(pin_dir, CT_MAP)?)
                .and_then(HashMap::try_from)
                .map_err(err(CT_MAP))?,
            drops: Map::from_map_data(open(pin_dir, DROPS_MAP)?)
                .and_then(PerCpuHashMap::try_from)
                .map_err(err(DROPS_MAP))?,
        })
    }

    /// Non-zero counters summed over CPUs, by slot number.
    #[must_use]
    pub fn counter_slots(&self) -> Vec<(u32, u64)> {
        counter_slots(&self.metrics)
    }

    /// Counters summed over CPUs, by name; zero counters are left out.
    #[must_use]
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        named(counter_slots(&self.metrics))
    }

    /// Exact drops per (pod veth ifindex, reason): (packets, not reported as events).
    #[must_use]
    pub fn drops(&self) -> Vec<(DropKey, u64, u64)> {
        let mut out: Vec<(DropKey, u64, u64)> = self
            .drops
            .iter()
            .flatten()
            .map(|(k, per_cpu)| {
                let sum = |f: fn(&DropCount) -> u64| per_cpu.iter().map(f).sum::<u64>();
                (k, sum(|c| c.packets), sum(|c| c.suppressed))
            })
            .collect();
        out.sort_by_key(|(k, ..)| (k.ifindex, k.reason));
        out
    }

    /// Tracked flows (the LRU map changes while it is read).
    #[must_use]
    pub fn tracked_flows(&self) -> usize {
        self.ct.keys().flatten().count()
    }
}

/// Non-zero counters of the per-CPU metrics map summed over CPUs, by slot number.
#[must_use]
pub fn counter_slots(metrics: &PerCpuArray<MapData, u64>) -> Vec<(u32, u64)> {
    (0..metric::SLOTS)
        .filter_map(|slot| {
            metric_name(slot)?;
            let total: u64 = metrics.get(&slot, 0).ok()?.iter().sum();
            (total > 0).then_some((slot, total))
        })
        .collect()
}

/// The slots' names (slots without one are left out).
#[must_use]
pub fn named(slots: Vec<(u32, u64)>) -> Vec<(&'static str, u64)> {
    slots
        .into_iter()
        .filter_map(|(slot, n)| Some((metric_name(slot)?, n)))
        .collect()
}
