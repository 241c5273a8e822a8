//! The agent's heap: glibc malloc settings that keep the resident size near
//! what the agent actually holds.
//!
//! Left to its defaults, glibc gives every thread that allocates its own
//! arena (the requests consumer, discovery, rules, the sampler, the runtime
//! worker) and each arena keeps the pages it freed; and the first large
//! free (parsing the kernel's BTF at load frees ~13 MB buffers) raises the
//! mmap and trim thresholds to tens of MB, so later large buffers come from
//! the arenas and stay there. Measured with a plaintext keep-alive load and
//! one new nginx after another (docs: README "Performance"): the anonymous
//! memory grew by ~8 MiB per nginx to ~42 MiB after five; with one arena and
//! fixed thresholds it stays at ~7 MiB, at no extra CPU; see also
//! [`release_free_memory`].
//!
//! A variable the user set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`, or any `GLIBC_TUNABLES`) wins: glibc has already
//! read it, and the matching setting is left alone.

/// One arena: the agent's threads allocate little and rarely at once (the
/// requests consumer allocates only for a new series), so they do not queue
/// on its lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;
/// glibc's own starting values (128 KiB), pinned: setting them turns off
/// the adjustment that raises them after a large free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 128 * 1024;

/// Applies the settings above; call before any other thread starts (the
/// arena limit counts arenas as threads create them). Returns what it set,
/// for the log.
pub fn tune_allocator() -> Vec<&'static str> {
    let mut set = Vec::new();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user = |var: &str| std::env::var_os(var).is_some() || std::env::var_os("GLIBC_TUNABLES").is_some();
        let settings = [
            ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX, "arena_max=1"),
            (
                "MALLOC_MMAP_THRESHOLD_",
                libc::M_MMAP_THRESHOLD,
                MMAP_THRESHOLD,
                "mmap_threshold=128KiB",
            ),
            (
                "MALLOC_TRIM_THRESHOLD_",
                libc::M_TRIM_THRESHOLD,
                TRIM_THRESHOLD,
                "trim_threshold=128KiB",
            ),
        ];
        for (var, param, value, name) in settings {
            // SAFETY: mallopt only changes malloc's parameters; it returns 0
            // when it refuses one, which leaves glibc's default in place.
            if !user(var) && unsafe { libc::mallopt(param, value) } == 1 {
                set.push(name);
            }
        }
    }
    set
}

/// Hands the heap's free pages back to the kernel. Called after the work
/// that frees a lot at once: loading (it parses the kernel's whole BTF,
/// several MB, twice) and a discovery scan that found, restarted or lost an
/// nginx (executables read for their symbols, uprobes attached, series
/// dropped); freed memory between live allocations is otherwise kept.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
