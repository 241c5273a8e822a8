//! Which nginx executables carry the request uprobe: one attachment per
//! file (every process running it fires it), only for files a tracked
//! instance that needs it runs (all of them with `uprobe: always`; those
//! with TLS, HTTP/2 or HTTP/3 listeners with `auto`), only for builds whose
//! offsets are known, and detached when the first requests show the offsets
//! do not fit or no instance needing it runs the file any more.
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use crate::probe::{BuildError, Probe, identify_nginx_build};

/// Values of `reason` on ngxprobe_uprobe_attach_refused_total.
pub const REFUSAL_REASONS: [&str; 3] = ["unknown_build", "signature_mismatch", "attach_failed"];

enum State {
    Attached { idx: u32 },
    Refused,
}

struct Binary {
    state: State,
    shown: String,
}

/// What one reconcile did, for the log.
#[derive(Debug, Default)]
pub struct AttachNews {
    pub attached: Vec<String>,
    pub refused: Vec<String>,
    /// Detached because no instance running the file needs it (info).
    pub detached: Vec<String>,
    /// What instances' configs say they need (info).
    pub config: Vec<String>,
    /// Configs that could not be read for certain (warn).
    pub config_unknown: Vec<String>,
}

#[derive(Default)]
pub struct Attachments {
    /// (device, inode) of an executable → its attachment.
    files: HashMap<(u64, u64), Binary>,
    /// Executables refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Counters of attachments already detached (ring_full, read_errors).
    pub retired_ring_full: u64,
    pub retired_read_errors: u64,
}

impl Attachments {
    /// Makes the attachments follow `running`: (master pid, executable as
    /// /proc shows it, whether the instance needs the uprobe) of each
    /// running instance. A file carries the uprobe while any instance
    /// running it needs it. Returns, per master pid, whether its instance's
    /// executable carries the uprobe: also for instances that do not need
    /// it but share a file that does (their requests come from the uprobe
    /// then, or they would be counted twice).
    pub fn reconcile(
        &mut self,
        probe: &mut Probe,
        proc_root: &std::path::Path,
        running: &[(u32, String, bool)],
        want_server_name: bool,
        news: &mut AttachNews,
    ) -> HashMap<u32, bool> {
        // The file of each instance, and whether one running it needs it.
        let mut files = Vec::new();
        let mut wanted: HashMap<(u64, u64), bool> = HashMap::new();
        for (pid, exe, need) in running {
            // /proc/PID/exe opens the file the process runs, in its own mount
            // namespace (containers) and after it was replaced on disk.
            let path: PathBuf = proc_root.join(pid.to_string()).join("exe");
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            *wanted.entry(id).or_default() |= *need;
            files.push((*pid, exe, path, id));
        }
        // Detach first (before an instance's socket records are turned back
        // on): files no instance runs, or none that runs it needs. A refusal
        // is kept while the file is run, so it is not logged again.
        let drop: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|(id, b)| match wanted.get(*id) {
                None => true,
                Some(w) => !w && matches!(b.state, State::Attached { .. }),
            })
            .map(|(id, _)| *id)
            .collect();
        for id in drop {
            if let Some(Binary {
                state: State::Attached { idx },
                shown,
            }) = self.files.remove(&id)
            {
                if let Ok(st) = probe.request_probe_stats(idx) {
                    self.retired_ring_full += st.ring_full;
                    self.retired_read_errors += st.read_errors;
                }
                probe.detach_request_probe(idx);
                if wanted.contains_key(&id) {
                    news.detached.push(format!(
                        "per-request metrics: uprobe detached from {shown}: no instance running it has TLS, HTTP/2 or \
                         HTTP/3 listeners any more (plaintext requests come from the socket probes)"
                    ));
                }
            }
        }
        let mut out = HashMap::new();
        for (pid, exe, path, id) in files {
            if !wanted.get(&id).copied().unwrap_or(false) {
                let attached = matches!(
                    self.files.get(&id),
                    Some(Binary {
                        state: State::Attached { .. },
                        ..
                    })
                );
                out.insert(pid, attached);
                continue;
            }
            let b = self.files.entry(id).or_insert_with(|| {
                let shown = format!("{exe:?} (pid {pid})");
                let state = match identify_nginx_build(&path) {
                    Ok(mut build) => {
                        build.offsets.want_server_name = u32::from(want_server_name);
                        match probe.attach_request_probe(&path, &build.offsets) {
                            Ok(idx) => {
                                news.attached.push(format!(
                                    "per-request metrics: uprobe on ngx_http_free_request attached to {shown}, {} \
                                     (offsets from {})",
                                    build.id, build.source
                                ));
                                State::Attached { idx }
                            }
                            Err(e) => {
                                *self.refused.entry("attach_failed").or_default() += 1;
                                news.refused.push(format!("per-request metrics off for {shown}: {e}"));
                                State::Refused
                            }
                        }
                    }
                    Err(e) => {
                        *self.refused.entry("unknown_build").or_default() += 1;
                        let why = match e {
                            BuildError::Unknown { id, dwarf, .. } => format!(
                                "unknown nginx build ({id}): its struct offsets are not in the table and \
                                 not in DWARF ({dwarf}), so no uprobe (requests on its TLS/HTTP/2 \
                                 connections stay uncounted)"
                            ),
                            other => other.to_string(),
                        };
                        news.refused.push(format!("per-request metrics off for {shown}: {why}"));
                        State::Refused
                    }
                };
                Binary { state, shown }
            });
            // The program drops requests without nginx's signature at the
            // offset it was given: the table does not fit this binary.
            if let State::Attached { idx } = b.state
                && let Ok(st) = probe.request_probe_stats(idx)
                && st.signature_mismatch > 0
            {
                self.retired_ring_full += st.ring_full;
                self.retired_read_errors += st.read_errors;
                probe.detach_request_probe(idx);
                b.state = State::Refused;
                *self.refused.entry("signature_mismatch").or_default() += 1;
                news.refused.push(format!(
                    "per-request metrics off for {}: {} request(s) did not carry nginx's \"HTTP\" signature at \
                     the expected offset; uprobe detached",
                    b.shown, st.signature_mismatch
                ));
            }
            out.insert(pid, matches!(b.state, State::Attached { .. }));
        }
        out
    }

    /// Attachment indexes in use.
    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.files.values().filter_map(|b| match b.state {
            State::Attached { idx } => Some(idx),
            State::Refused => None,
        })
    }
}
