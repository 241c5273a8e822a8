//! `scan`: finds nginx processes in /proc and groups them into instances.
use super::cgroup::container_id;
use super::cmdline::{NginxArgs, Title, classify_cmdline, is_nginx_binary_name, parse_nginx_args, resolve_conf_path};
use super::proc::{self, pid_dir};
use super::tcp_table;
use super::{DiscoverError, Instance, InstanceKey, Listener};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Printed by `nginx -v`, so present in every nginx build (OpenResty's too)
/// and absent from other programs that merely are named "nginx".
const NGINX_BINARY_MARKER: &[u8] = b"nginx version: ";

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
    role: Role,
    exe: String,
    /// Options of the master's command line (default for workers).
    args: NginxArgs,
}

/// Finds every nginx instance visible in `proc_root` (normally "/proc"; the
/// host's /proc mounted elsewhere when the agent runs in a container).
///
/// Instances are sorted by key. Processes exiting during the scan are
/// skipped; missing privileges to inspect a process are an error.
pub fn scan(proc_root: &Path) -> Result<Vec<Instance>, DiscoverError> {
    let procs = find_nginx_processes(proc_root)?;
    prune_listener_cache(&procs);
    let mut tree = Ancestry {
        proc_root,
        procs: &procs,
        other_ppids: HashMap::new(),
    };

    let mut keys = BTreeMap::new();
    for (&pid, p) in procs.iter().filter(|(_, p)| p.role == Role::Master) {
        if let Some(key) = master_key(proc_root, pid, &p.args)? {
            keys.insert(pid, key);
        }
    }
    // A single-process nginx under a master is the new binary of an upgrade
    // caught before it set its title: it will show up titled on the next scan.
    for (&pid, p) in procs.iter().filter(|(_, p)| p.role == Role::Single) {
        if tree.nearest_master(pid, &keys)?.is_none()
            && let Some(key) = master_key(proc_root, pid, &p.args)?
        {
            keys.insert(pid, key);
        }
    }

    let mut groups: BTreeMap<InstanceKey, Group> = BTreeMap::new();
    for (&pid, key) in &keys {
        let is_root = match tree.nearest_master(pid, &keys)? {
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
        let Some(master) = tree.nearest_master(pid, &keys)? else {
            continue;
        };
        if let Some(group) = keys.get(&master).and_then(|k| groups.get_mut(k)) {
            group.workers.push(pid);
        }
    }

    let mut instances = Vec::new();
    for (key, group) in groups {
        if let Some(inst) = build_instance(proc_root, key, group, &procs)? {
            instances.push(inst);
        }
    }
    Ok(instances)
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

fn build_instance(
    proc_root: &Path,
    key: InstanceKey,
    mut group: Group,
    procs: &HashMap<u32, NginxProc>,
) -> Result<Option<Instance>, DiscoverError> {
    let mut listeners = BTreeSet::new();
    let mut any_alive = false;
    for &master in &group.masters {
        if let Some(found) = listeners_of(proc_root, master)? {
            any_alive = true;
            listeners.extend(found);
        }
    }
    if !any_alive {
        return Ok(None); // every master exited while we looked
    }
    let master_pid = group.roots.iter().chain(&group.masters).copied().min_by_key(|&p| {
        // Prefer roots; among them the lowest pid, for a deterministic choice.
        (!group.roots.contains(&p), p)
    });
    let Some(master_pid) = master_pid else {
        return Ok(None);
    };
    group.workers.sort_unstable();
    Ok(Some(Instance {
        key,
        master_pid,
        worker_pids: group.workers,
        exe: procs.get(&master_pid).map(|p| p.exe.clone()).unwrap_or_default(),
        listeners: listeners.into_iter().collect(),
    }))
}

fn find_nginx_processes(proc_root: &Path) -> Result<HashMap<u32, NginxProc>, DiscoverError> {
    let mut procs = HashMap::new();
    for pid in proc::list_pids(proc_root)? {
        if let Some(p) = identify(proc_root, pid)? {
            procs.insert(pid, p);
        }
    }
    Ok(procs)
}

/// Whether `pid` is an nginx process, and which kind. The command line is read
/// first (world-readable, so unrelated processes never need privileges); the
/// executable is checked only for processes whose command line looks like nginx.
fn identify(proc_root: &Path, pid: u32) -> Result<Option<NginxProc>, DiscoverError> {
    let Some(raw) = proc::cmdline(proc_root, pid)? else {
        return Ok(None);
    };
    let (role, args) = match classify_cmdline(&raw) {
        Title::Master { argv } => (Role::Master, parse_nginx_args(argv.get(1..).unwrap_or(&[]))),
        Title::Worker => (Role::Worker, NginxArgs::default()),
        Title::Helper => (Role::Helper, NginxArgs::default()),
        Title::Untitled { argv } => match untitled_server_args(&argv) {
            Some(args) => (Role::Single, args),
            None => return Ok(None),
        },
        Title::Other => return Ok(None),
    };
    let Some(exe) = proc::exe(proc_root, pid)? else {
        return Ok(None);
    };
    if !is_nginx_binary_name(&exe) {
        return Ok(None);
    }
    // An untitled process named nginx could be anything (a copied binary, a
    // wrapper): require the nginx binary itself.
    if role == Role::Single {
        let marker = proc::file_contains(&pid_dir(proc_root, pid).join("exe"), NGINX_BINARY_MARKER)?;
        if marker != Some(true) {
            return Ok(None);
        }
    }
    let Some(ppid) = proc::ppid(proc_root, pid)? else {
        return Ok(None);
    };
    Ok(Some(NginxProc { ppid, role, exe, args }))
}

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

/// The instance key of a master: its config, container and network namespace.
fn master_key(proc_root: &Path, pid: u32, args: &NginxArgs) -> Result<Option<InstanceKey>, DiscoverError> {
    let dir = pid_dir(proc_root, pid);
    let Some(netns) = proc::ns_inode(&dir.join("ns").join("net"))? else {
        return Ok(None);
    };
    let Some(cgroup) = proc::read_text(&dir.join("cgroup"))? else {
        return Ok(None);
    };
    Ok(Some(InstanceKey {
        conf_path: resolve_conf_path(args),
        container_id: container_id(&cgroup),
        netns,
    }))
}

/// Listeners found per master, with the socket inodes they were found from.
/// The TCP tables list every socket of the namespace (thousands of TIME_WAIT
/// rows under load) and cost milliseconds to parse; a master's listening
/// sockets change only on reload, when its set of socket fds changes too.
type ListenerCache = HashMap<u32, (BTreeSet<u64>, BTreeSet<Listener>)>;
static LISTENER_CACHE: std::sync::Mutex<Option<ListenerCache>> = std::sync::Mutex::new(None);

/// LISTEN sockets held by a process, from its fds matched against the TCP
/// tables of its own network namespace. `None` if it exited meanwhile.
fn listeners_of(proc_root: &Path, pid: u32) -> Result<Option<BTreeSet<Listener>>, DiscoverError> {
    let Some(inodes) = proc::socket_inodes(proc_root, pid)? else {
        return Ok(None);
    };
    let inode_set = inodes.clone();
    {
        let cache = LISTENER_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, listeners)) = cache.as_ref().and_then(|c| c.get(&pid))
            && *known == inode_set
        {
            return Ok(Some(listeners.clone()));
        }
    }
    let found = listeners_from_tables(proc_root, pid, &inodes)?;
    if let Some(listeners) = &found {
        let mut cache = LISTENER_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get_or_insert_with(HashMap::new)
            .insert(pid, (inode_set, listeners.clone()));
    }
    Ok(found)
}

/// Forgets cached listeners of processes that are gone.
fn prune_listener_cache(alive: &HashMap<u32, NginxProc>) {
    let mut cache = LISTENER_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = cache.as_mut() {
        c.retain(|pid, _| alive.contains_key(pid));
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
    fn ppid_of(&mut self, pid: u32) -> Result<Option<u32>, DiscoverError> {
        if let Some(p) = self.procs.get(&pid) {
            return Ok(Some(p.ppid));
        }
        if let Some(&cached) = self.other_ppids.get(&pid) {
            return Ok(cached);
        }
        let ppid = proc::ppid(self.proc_root, pid)?;
        self.other_ppids.insert(pid, ppid);
        Ok(ppid)
    }

    /// The closest ancestor of `pid` that is one of `masters`.
    fn nearest_master<V>(&mut self, pid: u32, masters: &BTreeMap<u32, V>) -> Result<Option<u32>, DiscoverError> {
        let mut cur = pid;
        for _ in 0..MAX_ANCESTRY_DEPTH {
            match self.ppid_of(cur)? {
                // pid 0 is the parent of init and kthreadd: the top.
                None | Some(0) => return Ok(None),
                Some(parent) if masters.contains_key(&parent) => return Ok(Some(parent)),
                Some(parent) => cur = parent,
            }
        }
        Ok(None)
    }
}
