//! The per-request uprobe (agent-ebpf/src/request_uprobe.rs): attached per
//! nginx executable, with that build's offsets in REQ_OFFSETS at the index
//! given as the attach cookie. The program is loaded on first use, so an
//! agent that never attaches it (disabled, no known build) does not load it.
use std::{collections::BTreeMap, path::Path};

use agent_common::{MAX_NGINX_BINARIES, NginxOffsets, RequestProbeStats};
use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};

use super::{Probe, ProbeError, load_error, nginx_build::PROBED_FUNCTION};

pub(super) const PROGRAM: &str = "ngx_free_request";

/// Handles on the request program's maps, taken from the object at load.
pub(super) struct RequestMaps {
    offsets: Array<MapData, NginxOffsets>,
    stats: PerCpuArray<MapData, RequestProbeStats>,
    ring: Option<RingBuf<MapData>>,
    /// Slot → 1 if the socket programs make per-request records for it.
    socket_slots: Array<MapData, u32>,
    links: BTreeMap<u32, UProbeLinkId>,
    loaded: bool,
}

impl RequestMaps {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, ProbeError> {
        let offsets = Array::try_from(super::take_map(ebpf, "REQ_OFFSETS")?)
            .map_err(|e| ProbeError::Map("REQ_OFFSETS", e.to_string()))?;
        let stats = PerCpuArray::try_from(super::take_map(ebpf, "REQ_STATS")?)
            .map_err(|e| ProbeError::Map("REQ_STATS", e.to_string()))?;
        let ring = RingBuf::try_from(super::take_map(ebpf, "REQUESTS")?)
            .map_err(|e| ProbeError::Map("REQUESTS", e.to_string()))?;
        let socket_slots = Array::try_from(super::take_map(ebpf, "RED_SLOTS")?)
            .map_err(|e| ProbeError::Map("RED_SLOTS", e.to_string()))?;
        Ok(RequestMaps {
            offsets,
            stats,
            ring: Some(ring),
            socket_slots,
            links: BTreeMap::new(),
            loaded: false,
        })
    }
}

impl Probe {
    /// The ring buffer of request records, for the one consumer (once).
    pub fn take_request_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.requests.ring.take()
    }

    /// Turns the socket programs' per-request records for instance `slot`
    /// on or off (plaintext HTTP/1.x only; see agent-ebpf/src/red.rs).
    pub fn set_socket_requests(&mut self, slot: u32, on: bool) -> Result<(), ProbeError> {
        self.requests
            .socket_slots
            .set(slot, u32::from(on), 0)
            .map_err(|e| ProbeError::Map("RED_SLOTS", e.to_string()))
    }

    /// Attaches the request uprobe to `exe` (every process running that file
    /// fires it; records carry the tgid) with `offsets` for its build.
    /// Returns the attachment's index (its cookie).
    pub fn attach_request_probe(&mut self, exe: &Path, offsets: &NginxOffsets) -> Result<u32, ProbeError> {
        let idx = (0..MAX_NGINX_BINARIES)
            .find(|i| !self.requests.links.contains_key(i))
            .ok_or(ProbeError::Map(
                "REQ_OFFSETS",
                "every nginx executable slot is in use".into(),
            ))?;
        let zero = aya::maps::PerCpuValues::try_from(vec![RequestProbeStats::default(); self.ncpus])
            .map_err(|e| ProbeError::Map("REQ_STATS", e.to_string()))?;
        self.requests
            .stats
            .set(idx, zero, 0)
            .map_err(|e| ProbeError::Map("REQ_STATS", e.to_string()))?;
        self.requests
            .offsets
            .set(idx, *offsets, 0)
            .map_err(|e| ProbeError::Map("REQ_OFFSETS", e.to_string()))?;
        let program: &mut UProbe = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(ProbeError::MissingProgram(PROGRAM))?
            .try_into()
            .map_err(|e| load_error::from_program_error(PROGRAM, e))?;
        if !self.requests.loaded {
            program.load().map_err(|e| load_error::from_program_error(PROGRAM, e))?;
            self.requests.loaded = true;
        }
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::Symbol(PROBED_FUNCTION),
            cookie: Some(u64::from(idx)),
        };
        let link = program.attach(point, exe, UProbeScope::AllProcesses).map_err(|e| {
            load_error::uprobe_attach_error(PROGRAM, &format!("{}:{PROBED_FUNCTION}", exe.display()), e)
        })?;
        self.requests.links.insert(idx, link);
        Ok(idx)
    }

    /// Detaches the attachment `idx` (no-op if it is not attached).
    pub fn detach_request_probe(&mut self, idx: u32) {
        let Some(link) = self.requests.links.remove(&idx) else {
            return;
        };
        if let Some(program) = self.ebpf.program_mut(PROGRAM)
            && let Ok(p) = <&mut UProbe>::try_from(program)
        {
            // An error means the link is already gone.
            let _ = p.detach(link);
        }
        // Entries of a free index are never read: the program only runs
        // from a link, and a new link rewrites them first.
        let _ = self.requests.offsets.set(idx, NginxOffsets::default(), 0);
    }

    /// Counters of attachment `idx`, summed over CPUs.
    pub fn request_probe_stats(&self, idx: u32) -> Result<RequestProbeStats, ProbeError> {
        let per_cpu = self
            .requests
            .stats
            .get(&idx, 0)
            .map_err(|e| ProbeError::Map("REQ_STATS", e.to_string()))?;
        let mut t = RequestProbeStats::default();
        for s in per_cpu.iter() {
            t.records += s.records;
            t.ring_full += s.ring_full;
            t.signature_mismatch += s.signature_mismatch;
            t.not_logged += s.not_logged;
            t.read_errors += s.read_errors;
        }
        Ok(t)
    }

    /// True once the request program is in the kernel (loaded at the first attach).
    pub(super) fn request_program_loaded(&self) -> bool {
        self.requests.loaded
    }

    /// Attached request uprobes.
    pub fn request_probes_attached(&self) -> usize {
        self.requests.links.len()
    }
}
