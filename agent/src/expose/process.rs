//! The standard `process_*` metrics of the Prometheus Go client, read from
//! /proc/self on every scrape. A value that cannot be read is left out; a
//! scrape never fails because of it.
use std::path::Path;

use crate::metrics::{Family, MetricType};

/// Linux's user-visible clock tick (USER_HZ) is fixed at 100 for every
/// architecture's ABI; client_golang's procfs makes the same assumption.
const USER_HZ: f64 = 100.0;

pub fn process_families() -> Vec<Family> {
    read_process_families(Path::new("/proc/self"), Path::new("/proc/stat"))
}

/// `proc_self` is a /proc/PID directory; `proc_stat` the system-wide
/// /proc/stat (for the boot time). Separate so tests can use fake files.
pub(crate) fn read_process_families(proc_self: &Path, proc_stat: &Path) -> Vec<Family> {
    let mut families = Vec::new();
    let mut add = |name: &str, help: &str, kind, value: Option<f64>| {
        if let Some(value) = value {
            let mut family = Family::new(name, help, kind);
            family.push(&[], value);
            families.push(family);
        }
    };
    let stat = read(proc_self.join("stat")).and_then(|text| parse_stat(&text));
    let status = read(proc_self.join("status"));
    let boot_time = read(proc_stat.to_path_buf()).and_then(|text| parse_boot_time(&text));

    add(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        MetricType::Counter,
        stat.map(|s| (s.utime + s.stime) as f64 / USER_HZ),
    );
    add(
        "process_open_fds",
        "Number of open file descriptors.",
        MetricType::Gauge,
        open_fds(proc_self),
    );
    add(
        "process_max_fds",
        "Maximum number of open file descriptors.",
        MetricType::Gauge,
        max_fds(proc_self),
    );
    add(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        MetricType::Gauge,
        status.as_deref().and_then(|text| status_kib(text, "VmSize:")),
    );
    add(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        MetricType::Gauge,
        status.as_deref().and_then(|text| status_kib(text, "VmRSS:")),
    );
    add(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        MetricType::Gauge,
        stat.zip(boot_time)
            .map(|(s, boot)| boot as f64 + s.starttime as f64 / USER_HZ),
    );
    families
}

/// Open file descriptors of the process at `proc_pid` (a /proc/PID directory).
pub fn open_fds(proc_pid: &Path) -> Option<f64> {
    std::fs::read_dir(proc_pid.join("fd"))
        .ok()
        .map(|dir| dir.count() as f64)
}

/// Its open-files soft limit (/proc/PID/limits); None if unlimited or unreadable.
pub fn max_fds(proc_pid: &Path) -> Option<f64> {
    read(proc_pid.join("limits")).and_then(|text| parse_max_open_files(&text))
}

fn read(path: std::path::PathBuf) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
}

/// /proc/PID/stat: the command name (field 2) is in parentheses and may
/// itself contain spaces and ')', so fields are counted after the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    // after_comm starts at field 3 (state); field N is at index N - 3.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
    })
}

fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit on the "Max open files" line of /proc/PID/limits.
fn parse_max_open_files(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse::<u64>().ok().map(|v| v as f64)
}

/// A `Key:   1234 kB` line of /proc/PID/status, in bytes.
fn status_kib(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib as f64 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(families: &[Family]) -> Vec<&str> {
        families.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn reads_this_process() {
        let families = process_families();
        assert_eq!(
            names(&families),
            [
                "process_cpu_seconds_total",
                "process_open_fds",
                "process_max_fds",
                "process_virtual_memory_bytes",
                "process_resident_memory_bytes",
                "process_start_time_seconds",
            ]
        );
        let value = |name: &str| families.iter().find(|f| f.name == name).map(|f| f.samples[0].value);
        assert!(value("process_resident_memory_bytes").is_some_and(|v| v > 1e5));
        assert!(value("process_open_fds").is_some_and(|v| v >= 3.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        assert!(value("process_start_time_seconds").is_some_and(|v| v > now - 3600.0 && v <= now + 1.0));
    }

    #[test]
    fn parses_fake_proc_files_and_skips_missing_ones() {
        let dir = std::env::temp_dir().join(format!("ngxprobe-proc-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("fd"));
        // A command name with spaces and ')' must not shift the fields.
        let stat = "42 (weird) name) S 1 42 42 0 -1 4194560 1 0 0 0 250 150 0 0 20 0 1 0 5000 1000 100 0 0\n";
        std::fs::write(dir.join("stat"), stat).unwrap();
        std::fs::write(dir.join("status"), "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t 1024 kB\n").unwrap();
        std::fs::write(dir.join("limits"), "Limit Soft Limit Hard Limit Units\nMax open files            1024                 524288               files\n").unwrap();
        std::fs::write(dir.join("fd").join("0"), "").unwrap();
        let proc_stat = dir.join("proc_stat");
        std::fs::write(&proc_stat, "cpu 1 2 3\nbtime 1700000000\n").unwrap();

        let families = read_process_families(&dir, &proc_stat);
        let value = |name: &str| families.iter().find(|f| f.name == name).map(|f| f.samples[0].value);
        assert_eq!(value("process_cpu_seconds_total"), Some(4.0));
        assert_eq!(value("process_start_time_seconds"), Some(1_700_000_050.0));
        assert_eq!(value("process_virtual_memory_bytes"), Some(2048.0 * 1024.0));
        assert_eq!(value("process_resident_memory_bytes"), Some(1024.0 * 1024.0));
        assert_eq!(value("process_max_fds"), Some(1024.0));
        assert_eq!(value("process_open_fds"), Some(1.0));

        // Garbage and missing files: metrics are skipped, nothing panics.
        std::fs::write(dir.join("stat"), "garbage").unwrap();
        std::fs::write(dir.join("limits"), "Max open files unlimited unlimited files\n").unwrap();
        let families = read_process_families(&dir, &dir.join("missing"));
        assert_eq!(
            names(&families),
            [
                "process_open_fds",
                "process_virtual_memory_bytes",
                "process_resident_memory_bytes"
            ]
        );
        assert!(read_process_families(&dir.join("missing"), &proc_stat).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
