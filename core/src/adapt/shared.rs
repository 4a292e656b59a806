//! Re-nests across processes: an adaptive collection on a store several processes write (a
//! Qdrant server) is coordinated through the store's epoch (`VectorStore::shared`), on top of
//! the in-process locks of `Adapter`.
//!
//! What holds, and why:
//! - every write and search notes the epoch it ran under (this process's last view) and reads
//!   the store's epoch after it; the same epoch means no claim, switch or abandon happened in
//!   between (each changes it), so the write filled every slot a reader may use and the search
//!   read a slot no re-nest was writing. Otherwise this process loads what changed (the
//!   current rotation, another process's pending one) and the write or search runs again
//!   (writes replace by id, so a second write is harmless);
//! - a writer that sees a pending rotation whose lease runs fills its slot too, as in-process
//!   writers do (a claim whose lease ran out can never be switched to: the store refuses to
//!   renew or finish it);
//! - this process's view (epoch, current rotation, pending rotation) changes under one lock,
//!   only forwards (`Epoch::is_after`), the current rotation before the epoch: a write or
//!   search that read the epoch first never runs under an older rotation than it names;
//! - a re-nest claims its version in the store before it writes a page (one claim at a time,
//!   with a lease it renews every quarter lease while it pages), rewrites a page only where no
//!   write came since it read it (write tokens), fills what writes cut off by a crash left
//!   without the new slot, and switches only if its claim still holds; a claimant that
//!   stopped renewing may be taken over, and a failed one gives its claim up.
//!
//! Left open: a page request the server applies after its claim was taken over (a stall
//! longer than the lease inside one request) can still write the old claimant's vectors; and
//! processes' clocks must agree within about half a lease (leases are compared across them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Adapter, Current};
use crate::error::{Error, Result};
use crate::store::{Epoch, Shared, StoreError};

/// How long a claim holds without renewal: a re-nest renews it every quarter of this while it
/// pages, and another process may take over a claim this old.
pub(super) const LEASE: Duration = Duration::from_secs(60);
/// How long a write waits for another process's claim to store the rotation it fills (it does
/// so right after its claim lands).
const PENDING_WAIT: Duration = Duration::from_secs(30);
/// Runs of one write or search before a store that keeps changing under it is reported.
const MAX_RUNS: usize = 16;

/// What this process last saw of a shared collection: the epoch, and the rotation another
/// process's re-nest is filling (which this process's writes fill too).
#[derive(Default)]
pub(super) struct Seen {
    pub(super) epoch: Epoch,
    pub(super) filling: Option<Arc<Current>>,
}

impl Adapter {
    /// The epoch this process last saw (`None`: the store is not shared).
    pub(super) fn seen_epoch(&self) -> Option<Epoch> {
        self.seen
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).epoch)
    }

    /// The pending rotation (this process's re-nest or another's) that writes fill too.
    pub(super) fn seen_filling(&self) -> Option<Arc<Current>> {
        self.seen
            .as_ref()
            .and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).filling.clone())
    }

    /// Moves this process's view to `epoch` (with `current` first, when given) unless it
    /// already holds a later one.
    pub(super) fn set_seen(
        &self,
        epoch: Epoch,
        current: Option<Current>,
        filling: Option<Arc<Current>>,
    ) {
        if let Some(s) = &self.seen {
            let mut held = s.lock().unwrap_or_else(|e| e.into_inner());
            if held.epoch != epoch && !epoch.is_after(&held.epoch) {
                return;
            }
            if let Some(c) = current {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
            }
            *held = Seen { epoch, filling };
        }
    }

    /// Whether the store's epoch is still `seen` (an unshared store: always); when it is not,
    /// this process's view is brought up to date before it returns `false`.
    ///
    /// Errors: the store's; `Unavailable` when another process's pending rotation does not
    /// appear in time.
    pub(super) fn unchanged(&self, seen: Option<Epoch>) -> Result<bool> {
        let Some(seen) = seen else {
            return Ok(true);
        };
        let Some(now) = self.store.shared(&self.name)? else {
            return Ok(true);
        };
        if now.epoch == seen {
            return Ok(true);
        }
        self.refresh(now)?;
        Ok(false)
    }

    /// Runs `op` (a write or a search, under the epoch it is given) until it ran under an
    /// epoch that held throughout.
    ///
    /// Errors: `op`'s; the store's; `Unavailable` when the store kept changing for
    /// `MAX_RUNS` runs.
    pub(super) fn under_one_epoch<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        for _ in 0..MAX_RUNS {
            let seen = self.seen_epoch();
            let out = op()?;
            if self.unchanged(seen)? {
                return Ok(out);
            }
        }
        Err(StoreError::Unavailable(format!(
            "collection {:?} kept re-nesting under this request",
            self.name
        ))
        .into())
    }

    /// Brings this process's view up to the store's `now` (unless it holds a later one): the
    /// current rotation, and the pending one while its lease runs (waiting for its claimant
    /// to store it). One refresh at a time: the view's lock is held throughout.
    ///
    /// Errors: the store's; `Unavailable` after `PENDING_WAIT` without the pending rotation.
    pub(super) fn refresh(&self, mut now: Shared) -> Result<()> {
        let Some(seen) = &self.seen else {
            return Ok(());
        };
        let mut held = seen.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + PENDING_WAIT;
        loop {
            // Nothing moved (a waiter polling, say: the pending matrix is not fetched again),
            // or this process already holds a later view.
            if !now.epoch.is_after(&held.epoch) {
                return Ok(());
            }
            if self.current().version() != now.epoch.current {
                let stored = self.store.rotation(&self.name)?;
                let current = Current::from_stored(&self.name, &self.spec, stored)?;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(current);
            }
            let filling = match now.epoch.pending {
                Some(_) if now.lease_live => {
                    match self.store.pending_rotation(&self.name, &now.epoch)? {
                        Some(stored) => {
                            let mut pending =
                                Current::from_stored(&self.name, &self.spec, Some(stored))?;
                            // Queries are never mapped by a rotation only being filled.
                            pending.maps.clear();
                            Some(Arc::new(pending))
                        }
                        None if Instant::now() > deadline => {
                            return Err(StoreError::Unavailable(format!(
                                "collection {:?}: another process claimed re-nest {} but has \
                                 not stored its rotation",
                                self.name, now.epoch.claims
                            ))
                            .into());
                        }
                        None => {
                            std::thread::sleep(Duration::from_millis(20));
                            now = self.shared_now()?;
                            continue;
                        }
                    }
                }
                _ => None,
            };
            *held = Seen {
                epoch: now.epoch,
                filling,
            };
            return Ok(());
        }
    }

    /// The store's epoch now, with its lease.
    ///
    /// Errors: the store's; `Internal` for a store that is not shared (a bug: callers check).
    pub(super) fn shared_now(&self) -> Result<Shared> {
        self.store
            .shared(&self.name)?
            .ok_or_else(|| Error::Internal("a shared collection's store stopped sharing".into()))
    }

    /// Waits while another process holds a live claim on the collection (a bulk loader's
    /// `finish`, an explicit re-nest), bringing this process's view up to date.
    ///
    /// Errors: the store's.
    pub(super) fn wait_for_other_claims(&self) -> Result<()> {
        if self.seen.is_none() {
            // Not shared, or not adaptive: nothing to wait for, and nothing to ask the store.
            return Ok(());
        }
        loop {
            let Some(now) = self.store.shared(&self.name)? else {
                return Ok(());
            };
            self.refresh(now)?;
            if !(now.epoch.pending.is_some() && now.lease_live) {
                return Ok(());
            }
            self.check_open()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An error for a re-nest whose claim was taken over.
    pub(super) fn claim_lost(&self, claim: &Epoch) -> Error {
        StoreError::Unavailable(format!(
            "collection {:?}: re-nest claim {} was taken over by another process",
            self.name, claim.claims
        ))
        .into()
    }
}
