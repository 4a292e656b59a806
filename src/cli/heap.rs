//! The process's allocator: jemalloc as the global allocator, its tuning per command, and the
//! heap gauges `mrl serve` records.
//!
//! Why jemalloc and not glibc's malloc: under the service's mixed load (32 clients embedding,
//! searching, adding and deleting), the process's anonymous memory kept growing while the
//! bytes the program held stayed flat. `malloc_trim` every 30 s and capping glibc's arenas at
//! two slowed it (0.65 → 0.26 MiB a minute) but did not stop it, and a diff of
//! `/proc/PID/smaps` put what was left in glibc's own heap mappings (`[heap]` and its second
//! arena) though its counters showed neither more bytes in use nor more free bytes
//! (docs/api.md, the 60-minute soaks). jemalloc keeps size classes apart and returns unused
//! pages to the kernel on a time decay, which bounds that fragmentation; Qdrant's server
//! ships on it for the same reason. Its symbols are prefixed, so C code in the process keeps
//! glibc's malloc, and run-time tuning goes through `_RJEM_MALLOC_CONF`.

use std::ffi::{c_void, CStr};
use std::ptr;

use tikv_jemalloc_ctl::{arenas, epoch, raw, stats};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Purges every arena's unused pages (4096 is `MALLCTL_ARENAS_ALL`: every arena at once).
const PURGE_ALL: &CStr = c"arena.4096.purge";
/// Purges, in every arena, the unused pages whose decay time has passed.
const DECAY_ALL: &CStr = c"arena.4096.decay";

/// Runs a jemalloc control that neither reads nor writes a value (`arena.<i>.purge`,
/// `arena.<i>.decay`). Its status is ignored: these only hand pages back and cannot fail on
/// a valid name.
fn control(name: &CStr) {
    // SAFETY: the name is NUL-terminated and these controls take no old or new value.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            ptr::null_mut::<c_void>(),
            ptr::null_mut(),
            ptr::null_mut::<c_void>(),
            0,
        );
    }
}

/// Keeps freed memory in the process instead of returning it to the kernel: a training step
/// allocates and frees the same activation and gradient buffers every step, and fresh pages
/// cost a fault and a zeroing each (about a tenth of a step with glibc's default, measured
/// with `mrl bench train`). Sets jemalloc's dirty-page decay to "never" for every arena that
/// exists and for those created later. Failures leave the default decay (only slower).
pub(crate) fn keep_freed_memory() {
    // SAFETY: `arenas.dirty_decay_ms` takes an ssize_t; writing it only changes purging.
    let _ = unsafe { raw::write(b"arenas.dirty_decay_ms\0", -1isize) };
    for i in 0..arenas::narenas::read().unwrap_or(0) {
        // An arena not initialised yet answers EFAULT; it takes the new default.
        let name = format!("arena.{i}.dirty_decay_ms\0");
        // SAFETY: as above, for one arena.
        let _ = unsafe { raw::write(name.as_bytes(), -1isize) };
    }
}

/// Hands every arena's unused pages back to the kernel now, so a peak-RSS reset that follows
/// starts from what the program holds (see [`keep_freed_memory`], which keeps them).
pub(crate) fn release_freed_memory() {
    control(PURGE_ALL);
}

/// Heap upkeep for a server that runs for weeks: at start and every 30 s, jemalloc's own
/// figures go to the gauges `mrl_heap_in_use_bytes` (`stats.allocated`: bytes the program
/// holds) and `mrl_heap_free_bytes` (`stats.resident` − `stats.allocated`, jemalloc's upper
/// bound on the resident pages it keeps beyond them: unused pages not yet decayed, its
/// metadata, partly used pages), and `arena.<all>.decay` purges the unused pages whose decay
/// time has passed, also in arenas that saw no allocation since (without background threads
/// jemalloc decays only on allocator activity). The first sample is taken before this
/// returns, so the gauges exist once the server listens.
///
/// Errors: the thread could not be spawned.
pub(crate) fn spawn_heap_upkeep() -> std::io::Result<()> {
    metrics::describe_gauge!(
        "mrl_heap_in_use_bytes",
        metrics::Unit::Bytes,
        "Heap bytes the program holds (jemalloc stats.allocated)."
    );
    metrics::describe_gauge!(
        "mrl_heap_free_bytes",
        metrics::Unit::Bytes,
        "Resident heap bytes the allocator keeps beyond those (jemalloc stats.resident - \
         stats.allocated): unused pages until they decay, metadata, partly used pages."
    );
    record_heap();
    std::thread::Builder::new()
        .name("mrl-heap".into())
        .spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(30));
            control(DECAY_ALL);
            record_heap();
        })?;
    Ok(())
}

/// One sample of the heap gauges; skipped if jemalloc's statistics cannot be read.
fn record_heap() {
    // The statistics are a snapshot taken when the epoch advances.
    if epoch::advance().is_err() {
        return;
    }
    if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
        metrics::gauge!("mrl_heap_in_use_bytes").set(allocated as f64);
        metrics::gauge!("mrl_heap_free_bytes").set(resident.saturating_sub(allocated) as f64);
    }
}
