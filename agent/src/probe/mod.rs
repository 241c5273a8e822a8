//! Probe stage: loads ngxprobe's eBPF programs, attaches them, and gives the
//! collect stage a small typed interface over their maps.
mod btf_offsets;
mod config;
mod load_error;
mod nginx_build;
mod nginx_dwarf;
mod request_probe;
mod tcp_health;

use std::{collections::BTreeMap, path::Path};

use agent_common::{GLOBAL_SLOT, KernelOffsets, ListenKey, MAX_INSTANCES, SlotStats};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::BtfTracePoint,
    util::nr_cpus,
};

pub use config::EbpfConfig;
pub use load_error::ProbeError;
pub use nginx_build::{BuildError, BuildId, KnownBuild, identify as identify_nginx_build};
pub use tcp_health::kernel_hz;

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ngxprobe"));

/// Program name in the object → kernel tracepoint it attaches to.
const PROGRAMS: [(&str, &str); 10] = [
    ("ngx_set_state", "inet_sock_set_state"),
    ("ngx_destroy_sock", "tcp_destroy_sock"),
    ("ngx_recv", "sock_recv_length"),
    ("ngx_send", "sock_send_length"),
    ("ngx_tcp_retransmit", "tcp_retransmit_skb"),
    ("ngx_tcp_retransmit_synack", "tcp_retransmit_synack"),
    ("ngx_tcp_send_reset", "tcp_send_reset"),
    ("ngx_tcp_receive_reset", "tcp_receive_reset"),
    ("ngx_process_exit", "sched_process_exit"),
    ("ngx_oom_victim", "mark_victim"),
];

/// Empty programs on the same tracepoints, attached instead of PROGRAMS when
/// FLOOR_ENV is "1": `cargo xtask bench overhead --floor` measures with them
/// what merely being attached costs (the floor under the real programs).
const FLOOR_PROGRAMS: [(&str, &str); 10] = [
    ("floor_set_state", "inet_sock_set_state"),
    ("floor_destroy_sock", "tcp_destroy_sock"),
    ("floor_recv", "sock_recv_length"),
    ("floor_send", "sock_send_length"),
    ("floor_tcp_retransmit", "tcp_retransmit_skb"),
    ("floor_tcp_retransmit_synack", "tcp_retransmit_synack"),
    ("floor_tcp_send_reset", "tcp_send_reset"),
    ("floor_tcp_receive_reset", "tcp_receive_reset"),
    ("floor_process_exit", "sched_process_exit"),
    ("floor_oom_victim", "mark_victim"),
];
pub const FLOOR_ENV: &str = "NGXPROBE_EBPF_FLOOR";

/// bpf_map_update_elem flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Counters of one instance slot, summed over CPUs: the kernel's per-CPU
/// value type, added up field by field.
pub type SlotTotals = SlotStats;

/// Run statistics of one program (non-zero only with kernel.bpf_stats_enabled=1).
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Loaded and attached programs plus handles on their maps.
pub struct Probe {
    ebpf: Ebpf,
    listeners: HashMap<MapData, ListenKey, u32>,
    seeds: HashMap<MapData, u64, u32>,
    control: Array<MapData, u32>,
    stats: PerCpuArray<MapData, SlotStats>,
    tcp: tcp_health::TcpMaps,
    installed: BTreeMap<ListenKey, u32>,
    ncpus: usize,
    max_seeds: u32,
    pub offsets: KernelOffsets,
    /// The attached programs: PROGRAMS, or FLOOR_PROGRAMS in floor mode.
    programs: &'static [(&'static str, &'static str)],
    /// The per-request uprobe's maps and links (request_probe.rs).
    requests: request_probe::RequestMaps,
}

impl Probe {
    /// Loads the programs into the kernel and attaches them.
    pub fn load(max_seeds: u32) -> Result<Probe, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let offsets =
            btf_offsets::kernel_offsets(Path::new(BTF_PATH)).map_err(|e| ProbeError::Offsets(e.to_string()))?;
        let tcp_offsets =
            btf_offsets::tcp_offsets(Path::new(BTF_PATH)).map_err(|e| ProbeError::Offsets(e.to_string()))?;
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("KERNEL_OFFSETS", &offsets, true)
            .override_global("TCP_OFFSETS", &tcp_offsets, true)
            .map_max_entries("SEEDS", max_seeds.max(16))
            .load(EBPF_OBJECT)
            .map_err(load_error::from_ebpf_error)?;
        let programs: &'static [(&str, &str)] = if std::env::var(FLOOR_ENV).is_ok_and(|v| v == "1") {
            tracing::warn!("{FLOOR_ENV}=1: empty benchmark programs attached, nginx is NOT being measured");
            &FLOOR_PROGRAMS
        } else {
            &PROGRAMS
        };
        for &(prog, tracepoint) in programs {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or(ProbeError::MissingProgram(prog))?
                .try_into()
                .map_err(|e| load_error::from_program_error(prog, e))?;
            program
                .load(tracepoint, &btf)
                .map_err(|e| load_error::from_program_error(prog, e))?;
            program
                .attach()
                .map_err(|e| load_error::attach_error(prog, tracepoint, e))?;
        }
        let listeners = HashMap::try_from(take_map(&mut ebpf, "LISTENERS")?)
            .map_err(|e| ProbeError::Map("LISTENERS", e.to_string()))?;
        let seeds =
            HashMap::try_from(take_map(&mut ebpf, "SEEDS")?).map_err(|e| ProbeError::Map("SEEDS", e.to_string()))?;
        let control =
            Array::try_from(take_map(&mut ebpf, "CONTROL")?).map_err(|e| ProbeError::Map("CONTROL", e.to_string()))?;
        let stats = PerCpuArray::try_from(take_map(&mut ebpf, "STATS")?)
            .map_err(|e| ProbeError::Map("STATS", e.to_string()))?;
        let tcp = tcp_health::TcpMaps::take(&mut ebpf)?;
        let ncpus = nr_cpus().map_err(|(what, e)| ProbeError::Map("STATS", format!("{what}: {e}")))?;
        let requests = request_probe::RequestMaps::take(&mut ebpf)?;
        Ok(Probe {
            ebpf,
            listeners,
            seeds,
            control,
            stats,
            tcp,
            installed: BTreeMap::new(),
            ncpus,
            max_seeds: max_seeds.max(16),
            offsets,
            programs,
            requests,
        })
    }

    /// Makes the LISTENERS map equal `desired` ((netns, port) → slot, with
    /// LISTEN_H2C_ONLY for h2c-only ports).
    pub fn set_listeners(&mut self, desired: &BTreeMap<ListenKey, u32>) -> Result<(), ProbeError> {
        let stale: Vec<ListenKey> = self
            .installed
            .keys()
            .filter(|k| !desired.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            // Already gone is fine: the map is ours alone.
            let _ = self.listeners.remove(&k);
            self.installed.remove(&k);
        }
        for (k, slot) in desired {
            if self.installed.get(k) != Some(slot) {
                self.listeners
                    .insert(k, slot, 0)
                    .map_err(|e| ProbeError::Map("LISTENERS", e.to_string()))?;
                self.installed.insert(*k, *slot);
            }
        }
        Ok(())
    }

    /// Counters of `slot`, summed over CPUs.
    pub fn slot_totals(&self, slot: u32) -> Result<SlotTotals, ProbeError> {
        let per_cpu = self
            .stats
            .get(&slot, 0)
            .map_err(|e| ProbeError::Map("STATS", e.to_string()))?;
        let mut t = SlotStats::default();
        for s in per_cpu.iter() {
            t.accepted = t.accepted.wrapping_add(s.accepted);
            t.requests = t.requests.wrapping_add(s.requests);
            t.closed = t.closed.wrapping_add(s.closed);
            t.responses = t.responses.wrapping_add(s.responses);
            t.blocked_sends = t.blocked_sends.wrapping_add(s.blocked_sends);
            t.conn_map_full = t.conn_map_full.wrapping_add(s.conn_map_full);
            t.active = t.active.wrapping_add(s.active);
            t.reading = t.reading.wrapping_add(s.reading);
            t.writing = t.writing.wrapping_add(s.writing);
            t.events = t.events.wrapping_add(s.events);
            t.unparsed_tls = t.unparsed_tls.wrapping_add(s.unparsed_tls);
            t.unparsed_http2 = t.unparsed_http2.wrapping_add(s.unparsed_http2);
            t.unparsed_other = t.unparsed_other.wrapping_add(s.unparsed_other);
            t.red_records = t.red_records.wrapping_add(s.red_records);
            t.red_ring_full = t.red_ring_full.wrapping_add(s.red_ring_full);
        }
        Ok(t)
    }

    /// Node-wide eBPF self counters.
    pub fn global_totals(&self) -> Result<SlotTotals, ProbeError> {
        self.slot_totals(GLOBAL_SLOT)
    }

    /// Zeroes a slot before it is given to a new instance.
    pub fn reset_slot(&mut self, slot: u32) -> Result<(), ProbeError> {
        let zero = PerCpuValues::try_from(vec![SlotStats::default(); self.ncpus])
            .map_err(|e| ProbeError::Map("STATS", e.to_string()))?;
        self.stats
            .set(slot, zero, 0)
            .map_err(|e| ProbeError::Map("STATS", e.to_string()))?;
        // A reused slot starts without socket per-request records: the
        // per-request reconcile turns them on once it knows the instance has
        // no uprobe (never both for one instance).
        self.set_socket_requests(slot, false)?;
        self.reset_tcp_slot(slot)
    }

    /// Hands a connection found open at start (not seen accepted) to the
    /// programs, which adopt it at its next event. Returns false if the seed
    /// table is full.
    pub fn seed_conn(&mut self, cookie: u64, slot: u32) -> Result<bool, ProbeError> {
        self.set_seeding(true)?;
        match self.seeds.insert(cookie, slot, BPF_NOEXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(e))
                if matches!(e.io_error.raw_os_error(), Some(libc::EEXIST) | Some(libc::E2BIG)) =>
            {
                Ok(false)
            }
            Err(e) => Err(ProbeError::Map("SEEDS", e.to_string())),
        }
    }

    /// True while a seed is waiting for its socket's first event.
    pub fn seed_pending(&self, cookie: u64) -> bool {
        self.seeds.get(&cookie, 0).is_ok()
    }

    /// Withdraws a seed whose socket is gone. True if it was still pending
    /// (false: the programs adopted it meanwhile, and account for it).
    pub fn withdraw_seed(&mut self, cookie: u64) -> bool {
        self.seeds.remove(&cookie).is_ok()
    }

    /// Turns the programs' seed lookups on or off (off once none is pending,
    /// so sockets without state cost only a pointer test again).
    pub fn set_seeding(&mut self, on: bool) -> Result<(), ProbeError> {
        self.control
            .set(0, u32::from(on), 0)
            .map_err(|e| ProbeError::Map("CONTROL", e.to_string()))
    }

    pub fn seed_capacity(&self) -> u32 {
        self.max_seeds
    }

    pub fn listener_count(&self) -> usize {
        self.installed.len()
    }

    /// Per-program run time and count (kernel.bpf_stats_enabled=1 fills them):
    /// the tracepoint programs, plus the request uprobe once it is loaded (its
    /// cost per request is what `bench overhead` compares with RED on and off).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let uprobe = self.request_program_loaded().then_some(request_probe::PROGRAM);
        self.programs
            .iter()
            .map(|(name, _)| *name)
            .chain(uprobe)
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name,
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }

    pub fn programs_loaded(&self) -> usize {
        self.programs.len()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name)
        .ok_or(ProbeError::Map(name, "missing from the object".into()))
}

const _: () = assert!(GLOBAL_SLOT == MAX_INSTANCES);
