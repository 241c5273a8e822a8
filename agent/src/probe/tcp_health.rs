//! The maps of the tcp_health programs (agent-ebpf/src/tcp_health.rs):
//! TCP event counters per (instance slot, listener port), connection
//! distributions and worker exits per slot, and the nginx masters whose
//! children's exits are counted.
use std::collections::{BTreeMap, BTreeSet};

use agent_common::{ConnHists, TcpCounters, TcpKey, WorkerExits};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
};

use super::{Probe, ProbeError, take_map};

pub(super) struct TcpMaps {
    counters: PerCpuHashMap<MapData, TcpKey, TcpCounters>,
    hists: PerCpuArray<MapData, ConnHists>,
    exits: PerCpuArray<MapData, WorkerExits>,
    masters: HashMap<MapData, u32, u32>,
    installed_masters: BTreeMap<u32, u32>,
}

impl TcpMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        Ok(TcpMaps {
            counters: PerCpuHashMap::try_from(take_map(ebpf, "TCP_COUNTERS")?)
                .map_err(|e| ProbeError::Map("TCP_COUNTERS", e.to_string()))?,
            hists: PerCpuArray::try_from(take_map(ebpf, "CONN_HISTS")?)
                .map_err(|e| ProbeError::Map("CONN_HISTS", e.to_string()))?,
            exits: PerCpuArray::try_from(take_map(ebpf, "WORKER_EXITS")?)
                .map_err(|e| ProbeError::Map("WORKER_EXITS", e.to_string()))?,
            masters: HashMap::try_from(take_map(ebpf, "NGINX_MASTERS")?)
                .map_err(|e| ProbeError::Map("NGINX_MASTERS", e.to_string()))?,
            installed_masters: BTreeMap::new(),
        })
    }
}

fn add_counters(t: &mut TcpCounters, s: &TcpCounters) {
    t.retrans_segs = t.retrans_segs.wrapping_add(s.retrans_segs);
    t.synack_retrans = t.synack_retrans.wrapping_add(s.synack_retrans);
    t.resets_sent = t.resets_sent.wrapping_add(s.resets_sent);
    t.resets_received = t.resets_received.wrapping_add(s.resets_received);
    for (a, b) in t.closed.iter_mut().zip(s.closed) {
        *a = a.wrapping_add(b);
    }
    t.rwnd_limited_jiffies = t.rwnd_limited_jiffies.wrapping_add(s.rwnd_limited_jiffies);
    t.sndbuf_limited_jiffies = t.sndbuf_limited_jiffies.wrapping_add(s.sndbuf_limited_jiffies);
    t.segs_out = t.segs_out.wrapping_add(s.segs_out);
}

fn add_hist(t: &mut agent_common::Hist, s: &agent_common::Hist) {
    for (a, b) in t.buckets.iter_mut().zip(s.buckets) {
        *a = a.wrapping_add(b);
    }
    t.sum = t.sum.wrapping_add(s.sum);
}

impl Probe {
    /// TCP event counters of `slot`, by listener port, summed over CPUs.
    pub fn tcp_counters(&self, slot: u32) -> Result<BTreeMap<u16, TcpCounters>, ProbeError> {
        let mut out: BTreeMap<u16, TcpCounters> = BTreeMap::new();
        for item in self.tcp.counters.iter() {
            let (key, per_cpu) = item.map_err(|e| ProbeError::Map("TCP_COUNTERS", e.to_string()))?;
            if key.slot != slot {
                continue;
            }
            let t = out.entry(key.port).or_default();
            for s in per_cpu.iter() {
                add_counters(t, s);
            }
        }
        Ok(out)
    }

    /// Connection distributions of `slot`, summed over CPUs.
    pub fn conn_hists(&self, slot: u32) -> Result<ConnHists, ProbeError> {
        let per_cpu = self
            .tcp
            .hists
            .get(&slot, 0)
            .map_err(|e| ProbeError::Map("CONN_HISTS", e.to_string()))?;
        let mut t = ConnHists::default();
        for s in per_cpu.iter() {
            add_hist(&mut t.rtt_us, &s.rtt_us);
            add_hist(&mut t.duration_ms, &s.duration_ms);
            add_hist(&mut t.requests, &s.requests);
            add_hist(&mut t.bytes_sent, &s.bytes_sent);
            add_hist(&mut t.bytes_received, &s.bytes_received);
        }
        Ok(t)
    }

    /// Exits of the children of `slot`'s master, summed over CPUs.
    pub fn worker_exits(&self, slot: u32) -> Result<WorkerExits, ProbeError> {
        let per_cpu = self
            .tcp
            .exits
            .get(&slot, 0)
            .map_err(|e| ProbeError::Map("WORKER_EXITS", e.to_string()))?;
        let mut t = WorkerExits::default();
        for s in per_cpu.iter() {
            t.exited = t.exited.wrapping_add(s.exited);
            t.oom = t.oom.wrapping_add(s.oom);
            for (a, b) in t.by_signal.iter_mut().zip(s.by_signal) {
                *a = a.wrapping_add(b);
            }
        }
        Ok(t)
    }

    /// Makes NGINX_MASTERS equal `desired` (master pid → slot).
    pub fn set_masters(&mut self, desired: &BTreeMap<u32, u32>) -> Result<(), ProbeError> {
        let stale: Vec<u32> = self
            .tcp
            .installed_masters
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for pid in stale {
            // Already gone is fine: the map is ours alone.
            let _ = self.tcp.masters.remove(&pid);
            self.tcp.installed_masters.remove(&pid);
        }
        for (pid, slot) in desired {
            if self.tcp.installed_masters.get(pid) != Some(slot) {
                self.tcp
                    .masters
                    .insert(pid, slot, 0)
                    .map_err(|e| ProbeError::Map("NGINX_MASTERS", e.to_string()))?;
                self.tcp.installed_masters.insert(*pid, *slot);
            }
        }
        Ok(())
    }

    /// Zeroes the tcp_health state of a slot given to a new instance.
    pub(super) fn reset_tcp_slot(&mut self, slot: u32) -> Result<(), ProbeError> {
        let hists = PerCpuValues::try_from(vec![ConnHists::default(); self.ncpus])
            .map_err(|e| ProbeError::Map("CONN_HISTS", e.to_string()))?;
        self.tcp
            .hists
            .set(slot, hists, 0)
            .map_err(|e| ProbeError::Map("CONN_HISTS", e.to_string()))?;
        let exits = PerCpuValues::try_from(vec![WorkerExits::default(); self.ncpus])
            .map_err(|e| ProbeError::Map("WORKER_EXITS", e.to_string()))?;
        self.tcp
            .exits
            .set(slot, exits, 0)
            .map_err(|e| ProbeError::Map("WORKER_EXITS", e.to_string()))?;
        let keys: BTreeSet<TcpKey> = self
            .tcp
            .counters
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot == slot)
            .collect();
        for k in keys {
            // Gone meanwhile is fine.
            let _ = self.tcp.counters.remove(&k);
        }
        Ok(())
    }
}

/// The kernel's tick rate (CONFIG_HZ), which chrono_stat counts in: from
/// /boot/config-RELEASE or /proc/config.gz. None if neither says.
pub fn kernel_hz() -> Option<u32> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let boot = format!("/boot/config-{}", release.trim());
    let text = std::fs::read_to_string(&boot).ok().or_else(|| {
        use std::io::Read as _;
        let f = std::fs::File::open("/proc/config.gz").ok()?;
        let mut s = String::new();
        flate2::read::GzDecoder::new(f).read_to_string(&mut s).ok()?;
        Some(s)
    })?;
    hz_from_config(&text)
}

fn hz_from_config(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| *hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hz_is_read_from_kernel_config() {
        assert_eq!(hz_from_config("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"), Some(250));
        assert_eq!(hz_from_config("CONFIG_HZ=0\n"), None);
        assert_eq!(hz_from_config("CONFIG_HZ_1000=y\n"), None);
        // This machine's kernel says (it has /proc/config.gz).
        assert!(kernel_hz().is_some_and(|hz| (100..=1000).contains(&hz)));
    }
}
