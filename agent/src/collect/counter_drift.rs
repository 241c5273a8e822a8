//! ngxprobe's stub_status counters checked against nginx's own, where nginx
//! has them: a build with the stub_status module keeps its counters in
//! shared memory, pointed to by the exported globals `ngx_stat_accepted` …
//! `ngx_stat_waiting`. At each collection the agent reads them from the
//! master (process_vm_readv: the shared zone is mapped before the workers
//! are forked, at the same address in all of them) and exports the
//! difference as `ngxprobe_counter_drift{counter}`. They are never
//! substituted for the probes' counts: this is the agent checking itself.
//!
//! Counters (accepted, handled, requests): the agent counts from when it
//! started watching, nginx from its start, so the drift is the change of
//! the difference since the first reading: 0 while both count the same. A
//! new shared zone (nginx allocates one per configuration cycle) or a value
//! going back starts a new base, carrying the drift so far. Gauges (active,
//! reading, writing, waiting): the difference itself. Under load both move
//! between the two reads (requests in flight): the drift is exact at
//! quiescence, as the accuracy suite compares.
use std::{collections::HashMap, fs, io, os::unix::fs::MetadataExt, path::Path};

use object::{Object, ObjectSymbol};

use super::families::StubStatus;
use crate::discover::InstanceKey;

/// nginx's globals, in [`StubStatus`] order.
const SYMBOLS: [&str; 7] = [
    "ngx_stat_accepted",
    "ngx_stat_handled",
    "ngx_stat_requests",
    "ngx_stat_active",
    "ngx_stat_reading",
    "ngx_stat_writing",
    "ngx_stat_waiting",
];

/// Label values of `counter`, in [`StubStatus`] order.
pub const COUNTERS: [&str; 7] = [
    "accepted", "handled", "requests", "active", "reading", "writing", "waiting",
];

/// Where one master's `ngx_stat_*` pointers are.
#[derive(Debug)]
pub struct NginxCounters {
    pid: u32,
    /// Addresses of the seven pointer globals in the master.
    globals: [u64; 7],
}

/// nginx executables are a few MB (as nginx_build reads them).
const MAX_EXE_BYTES: u64 = 256 << 20;

impl NginxCounters {
    /// The master's `ngx_stat_*` globals: their addresses in the executable
    /// plus where the process mapped it (/proc/PID/maps, matched by inode).
    /// An error says why not (no stub_status module: the symbols are absent).
    pub fn locate(proc_root: &Path, pid: u32) -> Result<NginxCounters, String> {
        let dir = proc_root.join(pid.to_string());
        let exe = dir.join("exe");
        let meta = fs::metadata(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
        let mut data = Vec::new();
        io::Read::read_to_end(
            &mut io::Read::take(fs::File::open(&exe).map_err(|e| e.to_string())?, MAX_EXE_BYTES),
            &mut data,
        )
        .map_err(|e| e.to_string())?;
        let file = object::File::parse(&*data).map_err(|e| e.to_string())?;
        let mut offsets = [0u64; 7];
        for (i, name) in SYMBOLS.iter().enumerate() {
            offsets[i] = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(name) && !s.is_undefined())
                .map(|s| s.address())
                .ok_or_else(|| format!("{name} is not exported (nginx without the stub_status module)"))?;
        }
        // The lowest virtual address of the file's segments maps at the
        // start of its first mapping (offset 0).
        let first_vaddr = file
            .segments()
            .map(|s| object::ObjectSegment::address(&s))
            .min()
            .unwrap_or(0);
        let maps_path = dir.join("maps");
        let maps = fs::read_to_string(&maps_path).map_err(|e| format!("{}: {e}", maps_path.display()))?;
        let start = mapping_start(&maps, meta.ino()).ok_or_else(|| {
            format!(
                "no mapping of the executable (inode {}) in {}",
                meta.ino(),
                maps_path.display()
            )
        })?;
        let base = start.wrapping_sub(first_vaddr);
        Ok(NginxCounters {
            pid,
            globals: offsets.map(|o| base.wrapping_add(o)),
        })
    }

    /// The seven counters now, and the shared zone's address (the first
    /// pointer: a new zone is a new base).
    pub fn read(&self) -> io::Result<([u64; 7], u64)> {
        let mut ptrs = [0u64; 7];
        for (p, at) in ptrs.iter_mut().zip(self.globals) {
            *p = read_u64(self.pid, at)?;
        }
        let mut vals = [0u64; 7];
        for (v, at) in vals.iter_mut().zip(ptrs) {
            *v = read_u64(self.pid, at)?;
        }
        Ok((vals, ptrs[0]))
    }
}

/// Start of the mapping of file `inode` at file offset 0 in /proc/PID/maps.
fn mapping_start(maps: &str, inode: u64) -> Option<u64> {
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let _dev = f.next()?;
        let ino: u64 = f.next()?.parse().ok()?;
        if ino != inode || offset != 0 {
            return None;
        }
        u64::from_str_radix(range.split('-').next()?, 16).ok()
    })
}

fn read_u64(pid: u32, addr: u64) -> io::Result<u64> {
    let mut v = 0u64;
    let local = libc::iovec {
        iov_base: (&raw mut v).cast(),
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: reads 8 bytes of another process into `v`, which outlives the
    // call; the kernel checks the remote address and our permission.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if n != 8 {
        return Err(if n < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "short read")
        });
    }
    Ok(v)
}

/// One instance's drift state.
#[derive(Debug, Default)]
pub struct Drift {
    /// (ours, nginx's, zone address) at the current base.
    base: Option<([u64; 3], [u64; 3], u64)>,
    /// Drift of earlier bases.
    carried: [i64; 3],
    last: [i64; 3],
}

impl Drift {
    /// The drift per counter ([`COUNTERS`] order) given our view and nginx's.
    pub fn update(&mut self, ours: &StubStatus, theirs: [u64; 7], zone: u64) -> [i64; 7] {
        let o = [ours.accepted, ours.handled, ours.requests];
        let t = [theirs[0], theirs[1], theirs[2]];
        let rebase = match self.base {
            None => true,
            Some((_, t0, z0)) => z0 != zone || t.iter().zip(t0).any(|(now, was)| *now < was),
        };
        if rebase {
            if self.base.is_some() {
                for (c, l) in self.carried.iter_mut().zip(self.last) {
                    *c += l;
                }
            }
            self.base = Some((o, t, zone));
        }
        let (o0, t0, _) = self.base.unwrap_or((o, t, zone));
        let mut out = [0i64; 7];
        for i in 0..3 {
            let seg = (o[i].wrapping_sub(o0[i]) as i64).wrapping_sub(t[i].wrapping_sub(t0[i]) as i64);
            self.last[i] = seg;
            out[i] = self.carried[i] + seg;
        }
        let gauges = [ours.active, ours.reading, ours.writing, ours.waiting];
        for (i, g) in gauges.iter().enumerate() {
            out[3 + i] = *g as i64 - theirs[3 + i] as i64;
        }
        out
    }
}

/// Drift state of every instance. Checked by the discovery loop after each
/// scan (its thread holds the capabilities to read other processes; the
/// threads serving /metrics do not), exported by families().
#[derive(Debug, Default)]
pub struct DriftChecks(HashMap<InstanceKey, Check>);

#[derive(Debug)]
struct Check {
    master_pid: u32,
    counters: Result<NginxCounters, String>,
    drift: Drift,
    /// A read failure was logged (once per master).
    read_error_logged: bool,
    /// The drift at the last check.
    latest: Option<[i64; 7]>,
}

impl DriftChecks {
    /// Checks one running instance: its drift ([`COUNTERS`] order) is
    /// [`Self::latest`] until the next check; none when nginx's counters
    /// cannot be read (said once in the log per master).
    pub fn check(&mut self, proc_root: &Path, key: &InstanceKey, master_pid: u32, ours: &StubStatus) {
        let c = self
            .0
            .entry(key.clone())
            .or_insert_with(|| Check::locate(proc_root, key, master_pid));
        if c.master_pid != master_pid {
            *c = Check::locate(proc_root, key, master_pid);
        }
        c.latest = None;
        let Ok(counters) = c.counters.as_ref() else {
            return;
        };
        match counters.read() {
            Ok((vals, zone)) => c.latest = Some(c.drift.update(ours, vals, zone)),
            Err(e) => {
                if !c.read_error_logged {
                    c.read_error_logged = true;
                    tracing::warn!(
                        "counter self-check of {}: cannot read nginx's counters from pid {master_pid}: {e}",
                        super::registry::describe(key)
                    );
                }
            }
        }
    }

    pub fn latest(&self, key: &InstanceKey) -> Option<[i64; 7]> {
        self.0.get(key).and_then(|c| c.latest)
    }

    /// Forgets instances no longer tracked.
    pub fn retain(&mut self, keep: impl Fn(&InstanceKey) -> bool) {
        self.0.retain(|k, _| keep(k));
    }
}

impl Check {
    fn locate(proc_root: &Path, key: &InstanceKey, master_pid: u32) -> Check {
        let counters = NginxCounters::locate(proc_root, master_pid);
        match &counters {
            Ok(_) => tracing::info!(
                "counter self-check of {}: reading nginx's own counters from pid {master_pid} \
                 (ngxprobe_counter_drift)",
                super::registry::describe(key)
            ),
            Err(e) => tracing::info!(
                "counter self-check of {} off: {e} (its counters come from the probes alone)",
                super::registry::describe(key)
            ),
        }
        Check {
            master_pid,
            counters,
            drift: Drift::default(),
            read_error_logged: false,
            latest: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(a: u64, r: u64, active: u64) -> StubStatus {
        StubStatus {
            accepted: a,
            handled: a,
            requests: r,
            active,
            reading: 0,
            writing: active,
            waiting: 0,
        }
    }

    #[test]
    fn counters_drift_from_the_first_reading_and_carry_across_zones() {
        let mut d = Drift::default();
        // nginx had counted 100 requests before we watched: no drift.
        assert_eq!(d.update(&ours(0, 0, 1), [50, 50, 100, 1, 0, 1, 0], 7)[..3], [0, 0, 0]);
        // Both count 5 more: 0; we count one more than nginx: 1.
        assert_eq!(d.update(&ours(2, 5, 1), [52, 52, 105, 1, 0, 1, 0], 7)[2], 0);
        assert_eq!(d.update(&ours(2, 7, 1), [52, 52, 106, 1, 0, 1, 0], 7)[2], 1);
        // A reload's new zone starts from 0: the drift so far is kept.
        assert_eq!(d.update(&ours(2, 7, 1), [0, 0, 0, 1, 0, 1, 0], 9)[2], 1);
        assert_eq!(d.update(&ours(3, 9, 1), [1, 1, 2, 1, 0, 1, 0], 9)[..3], [0, 0, 1]);
        // Gauges: the difference itself.
        assert_eq!(d.update(&ours(3, 9, 2), [1, 1, 2, 3, 0, 1, 0], 9)[3..], [-1, 0, 1, 0]);
    }

    #[test]
    fn maps_line_of_the_executable_at_offset_zero() {
        let maps = "\
55d0c0a00000-55d0c0a23000 r--p 00000000 fe:01 1234 /usr/sbin/nginx
55d0c0a23000-55d0c0ae3000 r-xp 00023000 fe:01 1234 /usr/sbin/nginx
7f0000000000-7f0000001000 rw-s 00000000 00:01 99 /dev/zero (deleted)
";
        assert_eq!(mapping_start(maps, 1234), Some(0x55d0c0a00000));
        assert_eq!(mapping_start(maps, 4321), None);
    }

    /// Debian's nginx, run here: the counters read from its master equal
    /// what its stub_status page would show at rest (a fresh nginx: one
    /// accepted connection per request the harness made).
    #[test]
    fn reads_a_real_masters_counters() {
        let nginx = match ngxprobe_e2e::nginx::Nginx::start(Default::default()) {
            Ok(n) => n,
            Err(e) => return ngxprobe_e2e::util::skip_or_fail(&format!("nginx: {e:#}")),
        };
        let c = NginxCounters::locate(Path::new("/proc"), nginx.master_pid() as u32).expect("locate");
        let (before, zone) = c.read().expect("read");
        let stub = ngxprobe_e2e::oracle::fetch(nginx.oracle_addr()).expect("stub_status");
        let (after, zone2) = c.read().expect("read");
        assert_eq!(zone, zone2);
        // The oracle request itself is one more accepted connection and
        // request between the two reads.
        assert!(
            before[0] < stub.accepted as u64 + 1 && stub.accepted as u64 <= after[0],
            "{before:?} {stub:?} {after:?}"
        );
        assert!(
            before[2] < stub.requests as u64 + 1 && stub.requests as u64 <= after[2],
            "{before:?} {stub:?} {after:?}"
        );
    }
}
