//! Crash safety of the embedded store with the real agent: SIGKILL at random
//! points during ingest, ≥ 20 times, on one `--storage.path`; after each
//! restart the store must open cleanly and every sample older than the fsync
//! window must still be there.
//!
//! Per round: start the agent on the shared data dir (defaults: storage
//! interval 1s, `wal_fsync: interval`, `wal_fsync_interval: 1s`), check that it
//! opened cleanly (/readyz 200, no corruption/write-error counters, writable,
//! no error lines in its log), check the samples recorded in earlier rounds,
//! let it ingest for a random 1.5–4 s (seeded RNG: `NGXPROBE_E2E_SEED`),
//! read the raw samples of a steady series through the HTTP API
//! (`/api/v1/query?query=ngxprobe_build_info[15m]`), and SIGKILL it — in
//! every other round 0–30 ms after a whole second, i.e. while the store is
//! taking and writing that second's samples.
//!
//! What must survive a kill at wall time K: every sample seen before the kill
//! with a timestamp < K − (fsync window 1 s + one storage interval 1 s). That
//! is the brief's bound (it also holds for power loss). The config documents
//! a stronger promise for kill -9 ("loses at most the sample being written"):
//! every sample seen except the newest one. Both are checked; the stronger
//! one is reported separately so a failure says which promise broke.
use ngxprobe_e2e::agent::AgentOptions;
use ngxprobe_e2e::util::TempDir;
use ngxprobe_e2e::{Agent, guard};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ROUNDS: usize = 20;
const FSYNC_WINDOW_MS: i64 = 1000;
const INTERVAL_MS: i64 = 1000;
const SERIES: &str = "ngxprobe_build_info";

/// xorshift64*: deterministic for a given seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi) milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Raw sample timestamps (ms) of SERIES over the last 15 minutes.
fn samples(agent: &Agent) -> anyhow::Result<Vec<i64>> {
    let data = agent.query(&format!("{SERIES}[15m]"))?;
    let result = data["result"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no result array: {data}"))?;
    // A fresh store has nothing older than "now" yet.
    if result.is_empty() {
        return Ok(Vec::new());
    }
    anyhow::ensure!(result.len() == 1, "want exactly 1 series, got {data}");
    let mut out = Vec::new();
    for v in result[0]["values"].as_array().into_iter().flatten() {
        let ts = v[0].as_f64().ok_or_else(|| anyhow::anyhow!("bad sample {v}"))?;
        anyhow::ensure!(v[1] == "1", "bad value in {v}");
        out.push((ts * 1000.0).round() as i64);
    }
    anyhow::ensure!(
        out.windows(2).all(|w| w[0] < w[1]),
        "timestamps not strictly increasing (duplicates or disorder): {out:?}"
    );
    Ok(out)
}

/// The store opened cleanly: no corruption found, nothing failed to write, and
/// it writes to disk. Returns the torn-tail truncation count (expected > 0
/// sometimes: a kill in the middle of a WAL write leaves a torn record).
fn check_clean_open(agent: &Agent) -> u64 {
    let s = agent.scrape().expect("scrape /metrics");
    let get = |name: &str| -> f64 { s.samples.iter().filter(|x| x.name == name).map(|x| x.value).sum() };
    for name in [
        "ngxprobe_store_wal_corruptions_total",
        "ngxprobe_store_corrupt_chunks_total",
        "ngxprobe_store_write_errors_total",
    ] {
        assert_eq!(
            get(name),
            0.0,
            "{name} after restart; agent log:\n{}",
            agent.log_tail(40)
        );
    }
    assert_eq!(
        get("ngxprobe_store_writable"),
        1.0,
        "store not writable; agent log:\n{}",
        agent.log_tail(40)
    );
    let log = std::fs::read_to_string(agent.log_path()).unwrap_or_default();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.to_ascii_lowercase().contains("corrupt"))
        .collect();
    assert!(bad.is_empty(), "agent logged errors on open:\n{}", bad.join("\n"));
    get("ngxprobe_store_wal_truncations_total") as u64
}

#[test]
fn sigkill_during_ingest_keeps_fsynced_samples() {
    let _g = guard("sigkill_during_ingest_keeps_fsynced_samples");
    let seed: u64 = std::env::var("NGXPROBE_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0FF_EE00_0001);
    eprintln!("[e2e] seed {seed} (set NGXPROBE_E2E_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let dir = TempDir::new("store-crash").unwrap();
    let data = dir.path().join("data");
    let opts = AgentOptions {
        storage_path: Some(data.clone()),
        ..Default::default()
    };
    let t_test = Instant::now();

    // Samples that must be present from now on (bound of the brief), and the
    // documented kill -9 bound (all seen but the newest) — checked separately.
    let mut must: BTreeSet<i64> = BTreeSet::new();
    let mut promised: BTreeSet<i64> = BTreeSet::new();
    let mut promise_broken: Vec<String> = Vec::new();
    let mut truncations = Vec::new();
    let mut kill_phase_ms = Vec::new();

    for round in 0..=ROUNDS {
        let t_start = Instant::now();
        let mut agent = Agent::start_opts(&opts).expect("agent (re)start on the crashed store");
        let startup = t_start.elapsed();
        truncations.push(check_clean_open(&agent));

        let have: BTreeSet<i64> = samples(&agent)
            .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", agent.log_tail(30)))
            .into_iter()
            .collect();
        let missing: Vec<i64> = must.difference(&have).copied().collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} sample(s) older than the fsync window lost after SIGKILL: {missing:?}\n\
             present: {have:?}\nagent log:\n{}",
            missing.len(),
            agent.log_tail(30)
        );
        let lost_promised: Vec<i64> = promised.difference(&have).copied().collect();
        if !lost_promised.is_empty() {
            promise_broken.push(format!("round {round}: lost {lost_promised:?}"));
            // Keep checking the rest against what is really there.
            for t in &lost_promised {
                promised.remove(t);
            }
        }
        eprintln!(
            "[e2e] round {round}: opened in {startup:.2?}, {} samples present, {} required, \
             wal truncations {}",
            have.len(),
            must.len(),
            truncations.last().unwrap()
        );
        if round == ROUNDS {
            break;
        }

        // Ingest for a random 1.5–4 s, read what is there, kill.
        let ingest = rng.ms(1500, 4000);
        let until = Instant::now() + ingest;
        // Let it ingest; nothing to synchronise with (the kill point is meant
        // to be arbitrary), so this is a plain bounded wait.
        while Instant::now() < until {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        let seen = samples(&agent).unwrap();
        // Every other round aims the kill at the first 30 ms after a whole
        // second, when the store is sampling and writing its WAL record (the
        // samples are taken on whole seconds); the others land anywhere.
        if round % 2 == 1 {
            let target = (now_ms() / 1000 + 1) * 1000 + rng.ms(0, 30).as_millis() as i64;
            for _ in 0..200 {
                let left = target - now_ms();
                if left <= 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(left.min(10) as u64));
            }
        }
        let kill_ms = now_ms();
        let st = agent.kill();
        eprintln!(
            "[e2e] round {round}: ingested {ingest:?}, SIGKILL at {kill_ms} ms ({st:?}); \
             newest sample seen {:?}",
            seen.last()
        );
        assert!(
            seen.iter().any(|t| *t > kill_ms - 3000),
            "round {round}: no recent sample before the kill (is the store ingesting?): {seen:?}"
        );
        kill_phase_ms.push(kill_ms % INTERVAL_MS);
        let bound = kill_ms - FSYNC_WINDOW_MS - INTERVAL_MS;
        must.extend(seen.iter().copied().filter(|t| *t < bound));
        if let Some((_newest, rest)) = seen.split_last() {
            promised.extend(rest.iter().copied());
        }
        drop(agent);
    }
    kill_phase_ms.sort();
    eprintln!(
        "[e2e] {ROUNDS} SIGKILLs in {:.1?}; kill phase within the 1 s interval (ms): {kill_phase_ms:?}; \
         torn WAL tails truncated per start: {truncations:?}; {} samples required at the end",
        t_test.elapsed(),
        must.len()
    );
    assert!(
        promise_broken.is_empty(),
        "the fsync-window bound held, but the documented kill -9 promise (\"loses at most the \
         sample being written\") did not:\n{}",
        promise_broken.join("\n")
    );
}
