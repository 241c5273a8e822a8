//! `storage:` config section. Names follow Prometheus' flags
//! (`--storage.tsdb.path`, `--storage.tsdb.retention.time`,
//! `--storage.tsdb.retention.size`) so users recognise them.
use crate::compat::PromDuration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, path::PathBuf, str::FromStr};

/// When the WAL is fsynced. Every policy `write(2)`s the WAL at the end of each
/// ingest tick, so `kill -9` of the agent alone loses at most the tick being
/// written (the kernel still holds the rest); fsync only matters for power
/// loss or a kernel crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WalFsync {
    /// fsync after every ingest tick / batch: nothing acknowledged is lost even
    /// on power loss. Costs one fsync per interval.
    Always,
    /// fsync at most every `wal_fsync_interval` (default): power loss loses
    /// up to that long.
    #[default]
    Interval,
    /// Never fsync the WAL (the kernel writes back, typically within 30 s);
    /// blocks written to disk are still fsynced.
    Never,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Off switch: false keeps no history (no files are created).
    pub enabled: bool,
    /// Data directory (created if missing; one agent per directory).
    pub path: PathBuf,
    /// How often everything on /metrics is sampled into the store.
    pub interval: PromDuration,
    /// Samples older than this are deleted, in whole 2 h blocks.
    pub retention: PromDuration,
    /// Size limit of the data directory (blocks + WAL); oldest blocks are
    /// deleted first. 0 = unlimited. Accepts `512MB`, `2GB` (powers of 1024,
    /// as Prometheus) or a plain number of bytes.
    pub retention_size: ByteSize,
    pub wal_fsync: WalFsync,
    pub wal_fsync_interval: PromDuration,
    /// WAL kept for readers that are behind (remote_write during a receiver
    /// outage): past this size the oldest unsent segments are deleted
    /// (ngxprobe_store_wal_reader_segments_dropped_total). 0 = unlimited.
    pub wal_reader_max_size: ByteSize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            enabled: true,
            path: PathBuf::from("/var/lib/ngxprobe"),
            interval: PromDuration::from_secs(1),
            retention: PromDuration::from_secs(15 * 24 * 3600),
            retention_size: ByteSize(0),
            wal_fsync: WalFsync::Interval,
            wal_fsync_interval: PromDuration::from_secs(1),
            wal_reader_max_size: ByteSize(1 << 30),
        }
    }
}

impl StorageConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("storage.interval must be > 0".into());
        }
        if self.retention.is_zero() {
            return Err("storage.retention must be > 0".into());
        }
        if self.wal_fsync == WalFsync::Interval && self.wal_fsync_interval.is_zero() {
            return Err("storage.wal_fsync_interval must be > 0 (or use wal_fsync: always)".into());
        }
        Ok(())
    }
}

/// A size in bytes, written like Prometheus' `--storage.tsdb.retention.size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 7] = [
    ("EB", 1 << 60),
    ("PB", 1 << 50),
    ("TB", 1 << 40),
    ("GB", 1 << 30),
    ("MB", 1 << 20),
    ("KB", 1 << 10),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("invalid size {s:?} (examples: 0, 512MB, 2GB, 1TB)");
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let unit = t[digits..].trim();
        if unit.is_empty() {
            return Ok(ByteSize(n));
        }
        let mul = SIZE_UNITS
            .iter()
            .find(|(u, _)| {
                u.eq_ignore_ascii_case(unit) || (unit.len() == 3 && u.eq_ignore_ascii_case(&unit.replace("iB", "B")))
            })
            .map(|(_, m)| *m)
            .ok_or_else(bad)?;
        n.checked_mul(mul).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (u, m) in SIZE_UNITS {
            if self.0 != 0 && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "0")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_prometheus() {
        assert_eq!("0".parse::<ByteSize>().unwrap().0, 0);
        assert_eq!("512MB".parse::<ByteSize>().unwrap().0, 512 << 20);
        assert_eq!("2GiB".parse::<ByteSize>().unwrap().0, 2 << 30);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("MB".parse::<ByteSize>().is_err());
        assert!("5XB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(3 << 30).to_string(), "3GB");
    }

    #[test]
    fn defaults_validate_and_serde_roundtrip() {
        let c = StorageConfig::default();
        c.validate().unwrap();
        let j = serde_json::to_string(&c).unwrap();
        let back: StorageConfig = serde_json::from_str(&j).unwrap();
        assert_eq!(back, c);
        let e = serde_json::from_str::<StorageConfig>(r#"{"retention_sizee": 1}"#);
        assert!(e.is_err());
    }
}
