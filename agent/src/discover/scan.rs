//! [`Scanner`]: finds nginx processes in /proc and groups them into instances.
//!
//! A process that claims to be nginx (by its title) is verified by its
//! executable's content; a process that cannot be read is skipped and
//! reported, never fatal to the scan; instances are admitted within the
//! configured caps ([`super::admit`]).
use super::admit::{self, Candidate, Limits};
use super::cgroup::{container_id, pod_uid};
use super::cmdline::{NginxArgs, Title, classify_cmdline, is_nginx_binary_name, parse_nginx_args, resolve_conf_path};
use super::exe::{ExeCache, Verdict};
use super::labels::{check_label, is_container_id, log_excerpt};
use super::proc::{self, MAX_CMDLINE_BYTES, pid_dir};
use super::tcp_table;
use super::{
    DiscoverError, DiscoveryConfig, Instance, InstanceKey, Listener, ProcError, Refusal, RefusalReason, ScanOutcome,
};
use agent_common::{MAX_INSTANCES, MAX_LISTENERS};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Parent links followed when looking for a worker's master. Bounds the walk
/// should pid reuse during the scan ever produce a cycle.
const MAX_ANCESTRY_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Titled "nginx: master process".
    Master,
    /// `master_process off`: untitled, serves connections itself.
    Single,
    Worker,
    /// Cache manager/loader: part of an instance, but handles no connections
    /// and is not reported.
    Helper,
}

#[derive(Debug)]
struct NginxProc {
    ppid: u32,
    start_ticks: u64,
    role: Role,
    exe: String,
    version: String,
    /// Options of the master's command line (default for workers).
    args: NginxArgs,
    /// The command line was longer than we read: its options are unknown.
    cut: bool,
}

/// Finds nginx instances, scan after scan, remembering what it examined
/// (verdicts on executables, listeners of masters) between scans.
pub struct Scanner {
    proc_root: PathBuf,
    limits: Limits,
    exes: ExeCache,
    listeners: ListenerCache,
}

/// What a scan gathers besides instances.
#[derive(Default)]
struct Findings {
    refused: Vec<Refusal>,
    errors: Vec<ProcError>,
}

impl Findings {
    /// The value of a read, or `None` after recording why it failed.
    fn note<T>(&mut self, pid: u32, r: Result<Option<T>, DiscoverError>) -> Option<T> {
        r.unwrap_or_else(|error| {
            self.errors.push(ProcError { pid, error });
            None
        })
    }

    fn refuse(&mut self, reason: RefusalReason, subject: String, detail: impl Into<String>) {
        self.refused.push(Refusal {
            reason,
            subject,
            detail: detail.into(),
        });
    }
}

impl Scanner {
    pub fn new(cfg: &DiscoveryConfig) -> Scanner {
        Scanner {
            proc_root: cfg.proc_path.clone(),
            limits: Limits {
                per_netns: cfg.max_instances_per_netns.get() as usize,
                listeners_per_instance: cfg.max_listeners_per_instance.get() as usize,
                instances: MAX_INSTANCES as usize,
                listeners: MAX_LISTENERS as usize,
            },
            exes: ExeCache::default(),
            listeners: ListenerCache::default(),
        }
    }

    /// Executables opened and examined so far (each at most once while it runs).
    pub fn executables_examined(&self) -> u64 {
        self.exes.examined
    }

    /// Finds every nginx instance visible in the proc root (normally "/proc";
    /// the host's /proc mounted elsewhere when the agent runs in a container).
    ///
    /// Fails only when the proc root itself cannot be listed. Processes that
    /// exit during the scan are skipped silently; processes that cannot be
    /// read are skipped and listed in [`ScanOutcome::errors`].
    pub fn scan(&mut self) -> Result<ScanOutcome, DiscoverError> {
        let proc_root = self.proc_root.clone();
        let proc_root = proc_root.as_path();
        let mut found = Findings::default();
        let procs = self.find_nginx_processes(proc_root, &mut found)?;
        self.exes.end_scan();
        self.listeners.retain(|pid, _| procs.contains_key(pid));
        let mut tree = Ancestry {
            proc_root,
            procs: &procs,
            other_ppids: HashMap::new(),
        };

        let mut keys = BTreeMap::new();
        for (&pid, p) in procs.iter().filter(|(_, p)| p.role == Role::Master) {
            if let Some(key) = master_key(proc_root, pid, p, &mut found) {
                keys.insert(pid, key);
            }
        }
        // A single-process nginx under a master is the new binary of an upgrade
        // caught before it set its title: it will show up titled on the next scan.
        for (&pid, p) in procs.iter().filter(|(_, p)| p.role == Role::Single) {
            if tree.nearest_master(pid, &keys, &mut found).is_none()
                && let Some(key) = master_key(proc_root, pid, p, &mut found)
            {
                keys.insert(pid, key);
            }
        }

        let mut groups: BTreeMap<InstanceKey, Group> = BTreeMap::new();
        for (&pid, key) in &keys {
            let is_root = match tree.nearest_master(pid, &keys, &mut found) {
                Some(parent) => keys.get(&parent) != Some(key),
                None => true,
            };
            let group = groups.entry(key.clone()).or_default();
            group.masters.push(pid);
            if is_root {
                group.roots.push(pid);
            }
        }
        for (&pid, _) in procs.iter().filter(|(_, p)| p.role == Role::Worker) {
            let Some(master) = tree.nearest_master(pid, &keys, &mut found) else {
                continue;
            };
            if let Some(group) = keys.get(&master).and_then(|k| groups.get_mut(k)) {
                group.workers.push(pid);
            }
        }

        let mut candidates = Vec::new();
        for (key, group) in groups {
            if let Some(c) = self.candidate(proc_root, key, group, &procs, &mut found) {
                candidates.push(c);
            }
        }
        let (instances, refused) = admit::admit(candidates, &self.limits);
        found.refused.extend(refused);
        Ok(ScanOutcome {
            instances,
            refused: found.refused,
            errors: found.errors,
        })
    }

    fn find_nginx_processes(
        &mut self,
        proc_root: &Path,
        found: &mut Findings,
    ) -> Result<HashMap<u32, NginxProc>, DiscoverError> {
        let mut procs = HashMap::new();
        for pid in proc::list_pids(proc_root)? {
            let r = self.identify(proc_root, pid, found);
            if let Some(p) = found.note(pid, r) {
                procs.insert(pid, p);
            }
        }
        Ok(procs)
    }

    /// Whether `pid` is an nginx process, and which kind. The command line is
    /// read first (world-readable, so unrelated processes never need
    /// privileges); the executable only for processes that look like nginx.
    /// A process titled like nginx whose executable is not is refused.
    fn identify(
        &mut self,
        proc_root: &Path,
        pid: u32,
        found: &mut Findings,
    ) -> Result<Option<NginxProc>, DiscoverError> {
        let Some(raw) = proc::cmdline(proc_root, pid)? else {
            return Ok(None);
        };
        let cut = raw.len() > MAX_CMDLINE_BYTES;
        let (role, args) = match classify_cmdline(&raw[..raw.len().min(MAX_CMDLINE_BYTES)]) {
            Title::Master { argv } => (Role::Master, parse_nginx_args(argv.get(1..).unwrap_or(&[]))),
            Title::Worker => (Role::Worker, NginxArgs::default()),
            Title::Helper => (Role::Helper, NginxArgs::default()),
            Title::Untitled { argv } => match untitled_server_args(&argv) {
                Some(args) => (Role::Single, args),
                None => return Ok(None),
            },
            Title::Other => return Ok(None),
        };
        let exe_link = pid_dir(proc_root, pid).join("exe");
        let Some(verdict) = self.exes.verdict(&exe_link)? else {
            return Ok(None);
        };
        let version = match verdict {
            Verdict::Nginx { version } => version,
            // An untitled process named nginx claims nothing: ignore it quietly
            // (nginx-prometheus-exporter, a wrapper script, a renamed copy).
            Verdict::NotNginx { .. } if role == Role::Single => return Ok(None),
            Verdict::NotNginx { why } => {
                found.refuse(
                    RefusalReason::NotNginx,
                    process_subject(pid, &raw),
                    format!("executable {why}"),
                );
                return Ok(None);
            }
        };
        let Some(exe) = proc::exe(proc_root, pid)? else {
            return Ok(None);
        };
        // Only a master's executable becomes a label.
        if matches!(role, Role::Master | Role::Single)
            && let Err(why) = check_label(&exe)
        {
            found.refuse(
                RefusalReason::BadLabel,
                process_subject(pid, &raw),
                format!("executable path {why}"),
            );
            return Ok(None);
        }
        let Some(stat) = proc::stat(proc_root, pid)? else {
            return Ok(None);
        };
        Ok(Some(NginxProc {
            ppid: stat.ppid,
            start_ticks: stat.start_ticks,
            role,
            exe,
            version,
            args,
            cut,
        }))
    }

    /// The instance of a group of processes, with its listeners, or `None`
    /// if every master exited meanwhile or could not be read.
    fn candidate(
        &mut self,
        proc_root: &Path,
        key: InstanceKey,
        mut group: Group,
        procs: &HashMap<u32, NginxProc>,
        found: &mut Findings,
    ) -> Option<Candidate> {
        let mut listeners = BTreeSet::new();
        let mut any_alive = false;
        for &master in &group.masters {
            let r = self.listeners_of(proc_root, master);
            match r {
                Ok(Some(l)) => {
                    any_alive = true;
                    listeners.extend(l);
                }
                Ok(None) => {}
                // Listeners unknown: the instance cannot be reported right.
                Err(error) => {
                    found.errors.push(ProcError { pid: master, error });
                    return None;
                }
            }
        }
        if !any_alive {
            return None; // every master exited while we looked
        }
        // Prefer roots; among them the lowest pid, for a deterministic choice.
        let master_pid = group
            .roots
            .iter()
            .chain(&group.masters)
            .copied()
            .min_by_key(|&p| (!group.roots.contains(&p), p))?;
        let master = procs.get(&master_pid)?;
        let root = found.note(master_pid, proc::runs_as_root(proc_root, master_pid))?;
        group.workers.sort_unstable();
        Some(Candidate {
            inst: Instance {
                key,
                master_pid,
                worker_pids: group.workers,
                exe: master.exe.clone(),
                version: master.version.clone(),
                listeners: listeners.into_iter().collect(),
            },
            root,
            start_ticks: master.start_ticks,
        })
    }
}

/// Processes of one instance. Masters with the same key are one instance:
/// during a binary upgrade (USR2) the new master is a child of the old one
/// with the same config and netns.
#[derive(Debug, Default)]
struct Group {
    masters: Vec<u32>,
    /// Masters whose nearest master ancestor is not of this instance (the
    /// old master during an upgrade). Normally exactly one.
    roots: Vec<u32>,
    workers: Vec<u32>,
}

/// A process for a log line: its pid and the start of its title, escaped.
fn process_subject(pid: u32, raw_cmdline: &[u8]) -> String {
    let title = raw_cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
    let title = String::from_utf8_lossy(&title[..title.len().min(4 * MAX_LOG_TITLE)]);
    format!("pid {pid} {}", log_excerpt(&title))
}

/// Bytes of a title decoded for a log excerpt (the excerpt cuts further).
const MAX_LOG_TITLE: usize = 256;

/// Options of an untitled command line that may be a single-process nginx
/// server: argv[0] named nginx, and not a control run like `nginx -s reload`.
fn untitled_server_args(argv: &[String]) -> Option<NginxArgs> {
    let (argv0, rest) = argv.split_first()?;
    if !is_nginx_binary_name(argv0) {
        return None;
    }
    let args = parse_nginx_args(rest);
    (!args.control).then_some(args)
}

/// The instance key of a master: its config, container and network
/// namespace. `None` if it is gone, unreadable or refused (recorded).
fn master_key(proc_root: &Path, pid: u32, p: &NginxProc, found: &mut Findings) -> Option<InstanceKey> {
    let dir = pid_dir(proc_root, pid);
    let netns = found.note(pid, proc::ns_inode(&dir.join("ns").join("net")))?;
    let cgroup = found.note(pid, proc::read_text(&dir.join("cgroup")))?;
    let subject = || format!("nginx master pid {pid}");
    if p.cut {
        found.refuse(
            RefusalReason::BadLabel,
            subject(),
            format!("command line longer than {MAX_CMDLINE_BYTES} bytes: its config path is unknown"),
        );
        return None;
    }
    let conf_path = resolve_conf_path(&p.args);
    if let Err(why) = check_label(&conf_path) {
        found.refuse(
            RefusalReason::BadLabel,
            subject(),
            format!("config path {} {why}", log_excerpt(&conf_path)),
        );
        return None;
    }
    let container_id = container_id(&cgroup);
    if container_id.as_deref().is_some_and(|id| !is_container_id(id)) {
        found.refuse(RefusalReason::BadLabel, subject(), "malformed container id");
        return None;
    }
    Some(InstanceKey {
        conf_path,
        container_id,
        pod_uid: pod_uid(&cgroup),
        netns,
    })
}

/// Listeners found per master, with the socket inodes they were found from.
/// The TCP tables list every socket of the namespace (thousands of TIME_WAIT
/// rows under load) and cost milliseconds to parse; a master's listening
/// sockets change only on reload, when its set of socket fds changes too.
type ListenerCache = HashMap<u32, (BTreeSet<u64>, BTreeSet<Listener>)>;

impl Scanner {
    /// LISTEN sockets held by a process, from its fds matched against the TCP
    /// tables of its own network namespace. `None` if it exited meanwhile.
    fn listeners_of(&mut self, proc_root: &Path, pid: u32) -> Result<Option<BTreeSet<Listener>>, DiscoverError> {
        let Some(inodes) = proc::socket_inodes(proc_root, pid)? else {
            return Ok(None);
        };
        if let Some((known, listeners)) = self.listeners.get(&pid)
            && *known == inodes
        {
            return Ok(Some(listeners.clone()));
        }
        let found = listeners_from_tables(proc_root, pid, &inodes)?;
        if let Some(listeners) = &found {
            self.listeners.insert(pid, (inodes, listeners.clone()));
        }
        Ok(found)
    }
}

fn listeners_from_tables(
    proc_root: &Path,
    pid: u32,
    inodes: &BTreeSet<u64>,
) -> Result<Option<BTreeSet<Listener>>, DiscoverError> {
    let net = pid_dir(proc_root, pid).join("net");
    let mut listeners = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        // A missing tcp6 (IPv6 disabled) reads like a vanished file: no rows.
        let Some(text) = proc::read_text(&net.join(table))? else {
            continue;
        };
        listeners.extend(
            tcp_table::parse_table(&text)
                .filter(|row| row.is_listen() && inodes.contains(&row.inode))
                .map(|row| Listener {
                    addr: row.local_addr,
                    port: row.local_port,
                }),
        );
    }
    Ok(Some(listeners))
}

/// Parent-pid lookups, reading /proc/PID/stat only for non-nginx ancestors.
struct Ancestry<'a> {
    proc_root: &'a Path,
    procs: &'a HashMap<u32, NginxProc>,
    other_ppids: HashMap<u32, Option<u32>>,
}

impl Ancestry<'_> {
    /// `None` at the top, for a vanished process, and for one that cannot be
    /// read (recorded): its descendants are then not attributed to a master.
    fn ppid_of(&mut self, pid: u32, found: &mut Findings) -> Option<u32> {
        if let Some(p) = self.procs.get(&pid) {
            return Some(p.ppid);
        }
        if let Some(&cached) = self.other_ppids.get(&pid) {
            return cached;
        }
        let ppid = found.note(pid, proc::ppid(self.proc_root, pid));
        self.other_ppids.insert(pid, ppid);
        ppid
    }

    /// The closest ancestor of `pid` that is one of `masters`.
    fn nearest_master<V>(&mut self, pid: u32, masters: &BTreeMap<u32, V>, found: &mut Findings) -> Option<u32> {
        let mut cur = pid;
        for _ in 0..MAX_ANCESTRY_DEPTH {
            match self.ppid_of(cur, found) {
                // pid 0 is the parent of init and kthreadd: the top.
                None | Some(0) => return None,
                Some(parent) if masters.contains_key(&parent) => return Some(parent),
                Some(parent) => cur = parent,
            }
        }
        None
    }
}
