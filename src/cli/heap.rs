//! The process's allocator: jemalloc as the global allocator, its tuning per command, and the
//! heap gauges `mrl serve` records.
//!
//! Why jemalloc and not glibc's malloc: under the service's mixed load (32 clients embedding,
//! searching, adding and deleting), glibc's heap kept growing while the bytes the program held
//! stayed flat: memory freed by one thread stays in its arena between blocks still in use, and
//! neither `malloc_trim` nor capping the arenas at two gave it back (three 60-minute soaks,
//! docs/api.md). jemalloc returns unused pages to the kernel on a time decay (10 s by default)
//! and keeps size classes apart, which bounds that fragmentation; Qdrant's server ships on it
//! for the same reason.

use std::ffi::{c_void, CStr};
use std::ptr;

use tikv_jemalloc_ctl::{epoch, raw, stats};

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
    // SAFETY: `*.dirty_decay_ms` take an ssize_t; writing them only changes purging.
    unsafe {
        let _ = raw::write(b"arenas.dirty_decay_ms\0", -1isize);
        let arenas: u32 = raw::read(b"arenas.narenas\0").unwrap_or(0);
        for i in 0..arenas {
            // An arena not initialised yet answers EFAULT; it takes the new default.
            let name = format!("arena.{i}.dirty_decay_ms\0");
            let _ = raw::write(name.as_bytes(), -1isize);
        }
    }
}

/// Hands every arena's unused pages back to the kernel now, so a peak-RSS reset that follows
/// starts from what the program holds (see [`keep_freed_memory`], which keeps them).
pub(crate) fn release_freed_memory() {
    control(PURGE_ALL);
}

/// Heap upkeep for a server that runs for weeks: every 30 s, jemalloc's own figures go to the
/// gauges `mrl_heap_in_use_bytes` (`stats.allocated`: bytes the program holds) and
/// `mrl_heap_free_bytes` (`stats.resident` − `stats.allocated`: resident pages the allocator
/// keeps beyond them: unused pages not yet decayed, its metadata, partly used pages), and
/// `arena.<all>.decay` purges the pages whose decay time has passed even in arenas that
/// saw no allocation since (jemalloc otherwise decays only on allocator activity).
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
         stats.allocated); unused pages go back to the kernel after 10 s."
    );
    std::thread::Builder::new()
        .name("mrl-heap".into())
        .spawn(|| loop {
            control(DECAY_ALL);
            // The statistics are a snapshot taken when the epoch advances.
            if epoch::advance().is_ok() {
                if let (Ok(allocated), Ok(resident)) =
                    (stats::allocated::read(), stats::resident::read())
                {
                    metrics::gauge!("mrl_heap_in_use_bytes").set(allocated as f64);
                    metrics::gauge!("mrl_heap_free_bytes")
                        .set(resident.saturating_sub(allocated) as f64);
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(30));
        })?;
    Ok(())
}
