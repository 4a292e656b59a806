//! How processes that share an adaptive collection on a Qdrant server agree on its rotation:
//! one state point per collection, changed only by conditional writes, and a matrix point per
//! rotation slot stamped with the claim that wrote it.
//!
//! The state point's payload (integers): `incarnation` (drawn when it is first written, so a
//! collection deleted and made again is told apart), `claims` (re-nest claims so far), `current` (the
//! version in force), `current_claim` (the claim that switched to it; 0 for a switch made
//! without one), `pending` (the version being filled; 0: none), `lease` (when the pending
//! claim's lease runs out, ms since the Unix epoch) and `owner` (a random number of the
//! claimant, to tell which of two racing claims won).
//!
//! Why it holds (Qdrant applies a shard's updates one at a time, and a filtered set-payload
//! changes the point only where the filter matches it, the whole filter at once):
//! - a claim moves `claims` from the number it saw to the next, so of two claims from one
//!   state exactly one lands; the claimant reads the point back and finds its `owner`;
//! - the pending matrix is written after the claim lands, and only over a matrix of an older
//!   claim, so a claimant that lost its lease (and was taken over) cannot overwrite its
//!   successor's;
//! - finish and abandon match the claim's number and pending version, so only the claim in
//!   force ends; a reader loads a matrix only when its stamp is the claim the state names;
//! - renew and finish also need the lease to run: a claim whose lease ran out is dead (it can
//!   only be taken over or given up), so writers need not fill its slot, and a claim whose
//!   claimant died before it stored its matrix holds nobody up beyond its lease.
//!
//! Collections made before the state point have none until their first claim; their
//! rotation is read from the metadata, as then.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qdrant_client::qdrant::{
    Condition, Filter, GetPointsBuilder, PayloadIncludeSelector, PointId, PointStruct, Range,
    RetrievedPoint, SetPayloadPointsBuilder, UpsertPointsBuilder,
};
use qdrant_client::Payload;
use serde_json::{Map, Value};

use super::{remote, rotation_point, to_json, RemoteStore, ROTATION_KEY};
use crate::store::{Epoch, Result, RotationInfo, Shared, StoreError, StoredRotation};

const INCARNATION: &str = "_mrl_incarnation";
const CLAIMS: &str = "_mrl_claims";
const CURRENT: &str = "_mrl_current";
const CURRENT_CLAIM: &str = "_mrl_current_claim";
const PENDING: &str = "_mrl_pending";
const LEASE: &str = "_mrl_lease";
const OWNER: &str = "_mrl_owner";

/// The payload keys of a rotation (matrix) point: its version, matrix, query maps, what is
/// shown of it, and the claim that wrote it (absent: written without a claim).
pub(super) const ROTATION_VERSION_KEY: &str = "_mrl_rotation";
pub(super) const ROTATION_MATRIX_KEY: &str = "_mrl_matrix";
pub(super) const ROTATION_MAPS_KEY: &str = "_mrl_maps";
const ROTATION_INFO_KEY: &str = "_mrl_info";
const ROTATION_CLAIM_KEY: &str = "_mrl_claim";

/// The state point: a hash of bytes that are not UTF-8, as the rotation points are.
pub(super) fn state_point() -> PointId {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest([0xFF, b's', b't', b'a', b't', b'e']);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    PointId::from(uuid::Uuid::from_bytes(bytes).to_string())
}

/// The state point as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    incarnation: i64,
    claims: i64,
    current: i64,
    current_claim: i64,
    pending: i64,
    lease: i64,
    owner: i64,
}

impl State {
    fn epoch(&self) -> Epoch {
        Epoch {
            incarnation: self.incarnation,
            claims: self.claims as u64,
            current: self.current as u64,
            pending: (self.pending > 0).then_some(self.pending as u64),
        }
    }

    fn payload(&self) -> HashMap<String, qdrant_client::qdrant::Value> {
        HashMap::from([
            (INCARNATION.to_string(), self.incarnation.into()),
            (CLAIMS.to_string(), self.claims.into()),
            (CURRENT.to_string(), self.current.into()),
            (CURRENT_CLAIM.to_string(), self.current_claim.into()),
            (PENDING.to_string(), self.pending.into()),
            (LEASE.to_string(), self.lease.into()),
            (OWNER.to_string(), self.owner.into()),
        ])
    }
}

/// Milliseconds since the Unix epoch: leases are compared across processes, so every
/// process sharing a collection needs a clock within a lease of the others'.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A random non-negative integer: a claimant's `owner`, a point's write token.
pub(super) fn random_i64() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    // Each `RandomState` is seeded afresh; the clock separates two from one seed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 1) as i64
}

fn int(p: &HashMap<String, qdrant_client::qdrant::Value>, key: &str) -> Option<i64> {
    p.get(key).and_then(|v| to_json(v).as_i64())
}

impl RemoteStore {
    /// The state point, `None` for a collection that has never had one.
    fn state_of(&self, name: &str) -> Result<Option<State>> {
        let got = self
            .block_on(
                self.client.get_points(
                    GetPointsBuilder::new(name, vec![state_point()]).with_payload(
                        PayloadIncludeSelector {
                            fields: [
                                INCARNATION,
                                CLAIMS,
                                CURRENT,
                                CURRENT_CLAIM,
                                PENDING,
                                LEASE,
                                OWNER,
                            ]
                            .map(String::from)
                            .to_vec(),
                        },
                    ),
                ),
            )
            .map_err(|e| self.failed(name, e))?;
        let Some(p) = got.result.into_iter().next().map(|p| p.payload) else {
            return Ok(None);
        };
        let field =
            |key| int(&p, key).ok_or_else(|| remote(format!("{name:?}'s state point lacks {key}")));
        Ok(Some(State {
            incarnation: field(INCARNATION)?,
            claims: field(CLAIMS)?,
            current: field(CURRENT)?,
            current_claim: field(CURRENT_CLAIM)?,
            pending: field(PENDING)?,
            lease: field(LEASE)?,
            owner: field(OWNER)?,
        }))
    }

    /// Writes the state point if the collection has none yet (a new adaptive collection, or
    /// one from before state points: its rotation is then the metadata's), with a fresh
    /// incarnation; a state point already there is left as it is.
    pub(super) fn ensure_state(&self, name: &str) -> Result<()> {
        let current = self.meta(name)?.1.map_or(0, |r| r.version as i64);
        let state = State {
            incarnation: random_i64().max(1),
            current,
            ..State::default()
        };
        // A filter no point matches: an existing state point is never updated, a missing one
        // is inserted.
        let never = Filter::must([Condition::matches(CLAIMS, -1)]);
        self.write_state(name, &state, Some(never))
    }

    /// Writes the state point whole (only where it matches `only`; a missing one regardless).
    fn write_state(&self, name: &str, state: &State, only: Option<Filter>) -> Result<()> {
        self.put_own_point(name, state_point(), state.payload(), only)
    }

    /// Writes one of the store's own points (no vectors), only where it matches `only` (a
    /// missing point is written regardless).
    fn put_own_point(
        &self,
        name: &str,
        id: PointId,
        payload: impl Into<Payload>,
        only: Option<Filter>,
    ) -> Result<()> {
        let point = PointStruct::new(id, HashMap::<String, Vec<f32>>::new(), payload);
        let mut request = UpsertPointsBuilder::new(name, vec![point]).wait(true);
        if let Some(f) = only {
            request = request.update_filter(f);
        }
        self.block_on(self.client.upsert_points(request))
            .map_err(|e| self.failed(name, e))?;
        Ok(())
    }

    /// The state point, written first where there is none.
    fn state(&self, name: &str) -> Result<State> {
        if let Some(s) = self.state_of(name)? {
            return Ok(s);
        }
        self.ensure_state(name)?;
        self.state_of(name)?
            .ok_or_else(|| remote(format!("{name:?}'s state point was not written")))
    }

    pub(super) fn shared_of(&self, name: &str) -> Result<Shared> {
        let s = self.state(name)?;
        Ok(Shared {
            epoch: s.epoch(),
            lease_live: s.pending > 0 && s.lease > now_ms(),
        })
    }

    /// Sets `fields` on the state point where it matches `conditions` (and nowhere else).
    fn set_state_if(
        &self,
        name: &str,
        fields: HashMap<String, qdrant_client::qdrant::Value>,
        conditions: Vec<Condition>,
    ) -> Result<()> {
        self.set_if(name, state_point(), fields, conditions)
    }

    /// Sets `fields` on point `id` where it matches `conditions`: the compare-and-set every
    /// change of the store's own points goes through.
    fn set_if(
        &self,
        name: &str,
        id: PointId,
        fields: impl Into<HashMap<String, qdrant_client::qdrant::Value>>,
        conditions: Vec<Condition>,
    ) -> Result<()> {
        let filter = Filter::must(std::iter::once(Condition::has_id([id])).chain(conditions));
        self.block_on(
            self.client.set_payload(
                SetPayloadPointsBuilder::new(name, fields)
                    .points_selector(filter)
                    .wait(true),
            ),
        )
        .map_err(|e| self.failed(name, e))?;
        Ok(())
    }

    /// Conditions that hold while the state point is still `e`.
    fn still(e: &Epoch) -> Vec<Condition> {
        vec![
            Condition::matches(INCARNATION, e.incarnation),
            Condition::matches(CLAIMS, e.claims as i64),
            Condition::matches(CURRENT, e.current as i64),
            Condition::matches(PENDING, e.pending.unwrap_or(0) as i64),
        ]
    }

    pub(super) fn claim_of(
        &self,
        name: &str,
        seen: &Epoch,
        rotation: &StoredRotation,
        lease: Duration,
    ) -> Result<Option<Epoch>> {
        if rotation.info.version != seen.current + 1 {
            return Err(StoreError::Storage(format!(
                "a claim of version {} from version {}; this is a bug",
                rotation.info.version, seen.current
            )));
        }
        self.ensure_state(name)?;
        let mut conditions = Self::still(seen);
        if seen.pending.is_some() {
            // Taking over a claim whose claimant stopped renewing it.
            conditions.push(Condition::range(
                LEASE,
                Range {
                    lt: Some(now_ms() as f64),
                    ..Default::default()
                },
            ));
        }
        let owner = random_i64();
        let claim = Epoch {
            incarnation: seen.incarnation,
            claims: seen.claims + 1,
            current: seen.current,
            pending: Some(seen.current + 1),
        };
        self.set_state_if(
            name,
            HashMap::from([
                (CLAIMS.to_string(), (claim.claims as i64).into()),
                (PENDING.to_string(), (rotation.info.version as i64).into()),
                (
                    LEASE.to_string(),
                    (now_ms() + lease.as_millis() as i64).into(),
                ),
                (OWNER.to_string(), owner.into()),
            ]),
            conditions,
        )?;
        match self.state_of(name)? {
            Some(s) if s.claims == claim.claims as i64 && s.owner == owner => {}
            _ => return Ok(None),
        }
        // Only over the matrix of an older claim: a claimant taken over cannot overwrite
        // its successor's.
        let older = Filter::should([
            Condition::is_empty(ROTATION_CLAIM_KEY),
            Condition::range(
                ROTATION_CLAIM_KEY,
                Range {
                    lt: Some(claim.claims as f64),
                    ..Default::default()
                },
            ),
        ]);
        if let Err(e) = self.write_rotation_point(name, rotation, Some(claim.claims), Some(older)) {
            // Nobody could fill a claim without its matrix: give it up at once.
            if let Err(a) = self.abandon_of(name, &claim) {
                tracing::warn!(
                    "{name:?}: cannot give up re-nest claim {}: {a}",
                    claim.claims
                );
            }
            return Err(e);
        }
        Ok(Some(claim))
    }

    /// Conditions that hold while a claim's lease runs.
    fn live() -> Condition {
        Condition::range(
            LEASE,
            Range {
                gt: Some(now_ms() as f64),
                ..Default::default()
            },
        )
    }

    pub(super) fn renew_of(&self, name: &str, claim: &Epoch, lease: Duration) -> Result<bool> {
        let until = now_ms() + lease.as_millis() as i64;
        let mut conditions = Self::still(claim);
        conditions.push(Self::live());
        self.set_state_if(
            name,
            HashMap::from([(LEASE.to_string(), until.into())]),
            conditions,
        )?;
        Ok(self
            .state_of(name)?
            .is_some_and(|s| s.epoch() == *claim && s.lease == until))
    }

    pub(super) fn finish_of(
        &self,
        name: &str,
        claim: &Epoch,
        rotation: &StoredRotation,
    ) -> Result<bool> {
        let version = rotation.info.version as i64;
        let owner = random_i64();
        let mut conditions = Self::still(claim);
        conditions.push(Self::live());
        self.set_state_if(
            name,
            HashMap::from([
                (CURRENT.to_string(), version.into()),
                (CURRENT_CLAIM.to_string(), (claim.claims as i64).into()),
                (PENDING.to_string(), 0i64.into()),
                (LEASE.to_string(), 0i64.into()),
                (OWNER.to_string(), owner.into()),
            ]),
            conditions,
        )?;
        // This call switched if the state bears its stamp, or a later claim has already
        // replaced the stamp (claims start only from a switched or abandoned state, and a
        // claim taken over is never switched to).
        let won = self.state_of(name)?.is_some_and(|s| {
            s.current_claim == claim.claims as i64
                && (s.owner == owner || s.claims > claim.claims as i64)
        });
        if won {
            // The switch is made: what is shown is brought up to date as well as it can be.
            if let Err(e) = self.show_finished(name, claim, rotation) {
                tracing::warn!("{name:?}: rotation {version} is in force but not shown: {e}");
            }
        }
        Ok(won)
    }

    /// Shows a finished re-nest's figures (the claim stored those of its fit) on its matrix
    /// point and beside the spec.
    fn show_finished(&self, name: &str, claim: &Epoch, rotation: &StoredRotation) -> Result<()> {
        let info = Value::String(serde_json::to_string(&rotation.info).map_err(remote)?);
        self.set_if(
            name,
            rotation_point(StoredRotation::slot(rotation.info.version)),
            Payload::from(Map::from_iter([(ROTATION_INFO_KEY.to_string(), info)])),
            vec![Condition::matches(ROTATION_CLAIM_KEY, claim.claims as i64)],
        )?;
        // Beside the spec; readers go by the state point.
        self.set_rotation_info(name, &rotation.info)?;
        Ok(())
    }

    pub(super) fn abandon_of(&self, name: &str, claim: &Epoch) -> Result<()> {
        self.set_state_if(
            name,
            HashMap::from([
                (PENDING.to_string(), 0i64.into()),
                (LEASE.to_string(), 0i64.into()),
            ]),
            Self::still(claim),
        )
    }

    /// The current rotation: by the state point where there is one, else by the metadata.
    pub(super) fn rotation_of(&self, name: &str) -> Result<Option<StoredRotation>> {
        let (state, shown) = match self.state_of(name)? {
            Some(s) => (s, None),
            None => match self.meta(name)?.1 {
                Some(info) => (
                    State {
                        current: info.version as i64,
                        ..State::default()
                    },
                    Some(info),
                ),
                None => return Ok(None),
            },
        };
        if state.current == 0 {
            return Ok(None);
        }
        let claim = (state.current_claim > 0).then_some(state.current_claim as u64);
        match self.read_rotation_point(name, state.current as u64, claim, shown)? {
            Some(r) => Ok(Some(r)),
            None => Err(remote(format!(
                "collection {name:?} names rotation version {} but its matrix is missing",
                state.current
            ))),
        }
    }

    pub(super) fn pending_of(&self, name: &str, epoch: &Epoch) -> Result<Option<StoredRotation>> {
        match epoch.pending {
            Some(v) => self.read_rotation_point(name, v, Some(epoch.claims), None),
            None => Ok(None),
        }
    }

    /// Version `version`'s matrix point, if it holds that version (written by claim `claim`,
    /// where one is named); what is shown of it from the point, else `shown`.
    fn read_rotation_point(
        &self,
        name: &str,
        version: u64,
        claim: Option<u64>,
        shown: Option<RotationInfo>,
    ) -> Result<Option<StoredRotation>> {
        let point = rotation_point(StoredRotation::slot(version));
        let got = self
            .block_on(
                self.client
                    .get_points(GetPointsBuilder::new(name, vec![point]).with_payload(true)),
            )
            .map_err(|e| self.failed(name, e))?;
        let Some(RetrievedPoint { payload, .. }) = got.result.into_iter().next() else {
            return Ok(None);
        };
        if int(&payload, ROTATION_VERSION_KEY) != Some(version as i64)
            || claim.is_some_and(|c| int(&payload, ROTATION_CLAIM_KEY) != Some(c as i64))
        {
            return Ok(None);
        }
        let info = match (payload.get(ROTATION_INFO_KEY).map(to_json), shown) {
            (Some(Value::String(s)), _) => serde_json::from_str(&s).map_err(remote)?,
            (_, Some(info)) => info,
            _ => match self.meta(name)?.1 {
                Some(info) if info.version == version => info,
                _ => {
                    return Err(remote(format!(
                        "{name:?}'s rotation {version} is not described"
                    )))
                }
            },
        };
        let matrix = match payload.get(ROTATION_MATRIX_KEY).map(to_json) {
            Some(Value::String(m)) => m,
            _ => return Ok(None),
        };
        let maps = match payload.get(ROTATION_MAPS_KEY) {
            Some(m) => serde_json::from_value(to_json(m)).map_err(remote)?,
            None => Default::default(),
        };
        Ok(Some(StoredRotation { info, matrix, maps }))
    }

    /// Writes `rotation` into its slot's matrix point, stamped with `claim`; only where the
    /// point matches `only` (a missing point is written regardless).
    fn write_rotation_point(
        &self,
        name: &str,
        rotation: &StoredRotation,
        claim: Option<u64>,
        only: Option<Filter>,
    ) -> Result<()> {
        let mut payload = Map::from_iter([
            (
                ROTATION_VERSION_KEY.to_string(),
                Value::from(rotation.info.version),
            ),
            (
                ROTATION_MATRIX_KEY.to_string(),
                Value::String(rotation.matrix.clone()),
            ),
            (
                ROTATION_MAPS_KEY.to_string(),
                serde_json::to_value(&rotation.maps).map_err(remote)?,
            ),
            (
                ROTATION_INFO_KEY.to_string(),
                Value::String(serde_json::to_string(&rotation.info).map_err(remote)?),
            ),
        ]);
        if let Some(c) = claim {
            payload.insert(ROTATION_CLAIM_KEY.to_string(), Value::from(c));
        }
        let slot = rotation_point(StoredRotation::slot(rotation.info.version));
        self.put_own_point(name, slot, Payload::from(payload), only)
    }

    /// Shows `info` beside the spec (`CollectionInfo::rotation`).
    fn set_rotation_info(&self, name: &str, info: &RotationInfo) -> Result<()> {
        use qdrant_client::qdrant::UpdateCollectionBuilder;
        let metadata = HashMap::from([(
            ROTATION_KEY.to_string(),
            Value::String(serde_json::to_string(info).map_err(remote)?),
        )]);
        self.block_on(
            self.client
                .update_collection(UpdateCollectionBuilder::new(name).metadata(metadata)),
        )
        .map_err(|e| self.failed(name, e))?;
        Ok(())
    }

    /// Makes `rotation` current whatever the state (no claim): the matrix, the state point
    /// (the next claim number, so every process sees the change) and what is shown.
    pub(super) fn set_rotation_of(&self, name: &str, rotation: &StoredRotation) -> Result<()> {
        let before = self.state(name)?;
        self.write_rotation_point(name, rotation, None, None)?;
        let state = State {
            incarnation: before.incarnation,
            claims: before.claims + 1,
            current: rotation.info.version as i64,
            ..State::default()
        };
        self.write_state(name, &state, None)?;
        self.set_rotation_info(name, &rotation.info)
    }
}
