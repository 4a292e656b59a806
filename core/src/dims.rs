//! The one dim policy: which output sizes a caller may ask for. HTTP, the CLI and the library
//! all check a `dim` here, so the same model and policy accept the same sizes everywhere.

use mrl_encoder::{nested, Embedder, Profile};

use crate::error::{Error, Result};

/// Which prefixes of a profile's output may be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DimPolicy {
    /// Only the checkpoint's nested dims (`mrl.json`'s `nested_dims`; the native width for a
    /// plain sentence-transformers folder): the sizes it was trained to serve. The server's
    /// default, since its clients store what it returns.
    #[default]
    Nested,
    /// Any prefix `1..=width`: the caller owns the vectors and may judge an untrained size.
    AnyPrefix,
}

impl DimPolicy {
    /// `AnyPrefix` when `any` is set, else `Nested`: how the `--allow-any-dim` switches read.
    pub fn any_if(any: bool) -> Self {
        if any {
            Self::AnyPrefix
        } else {
            Self::Nested
        }
    }

    /// Checks `dim` for `profile` of `embedder`: within the profile's output width
    /// (`1..=width`), and under `Nested` one of the checkpoint's nested dims.
    ///
    /// Errors: `InvalidField` naming `field`, with the range or the allowed dims.
    pub fn check(
        self,
        embedder: &Embedder,
        profile: &Profile,
        dim: usize,
        field: &str,
    ) -> Result<()> {
        let width = embedder.model().output_width(profile);
        nested::check_dim(dim, width).map_err(|e| Error::field(field, e.to_string()))?;
        let allowed = embedder.nested_dims();
        if self == Self::Nested && !allowed.contains(&dim) {
            return Err(Error::field(
                field,
                format!(
                    "dim {dim} is not one this checkpoint was trained for; allowed: {allowed:?} \
                     (--allow-any-dim accepts any prefix up to {width})",
                ),
            ));
        }
        Ok(())
    }
}
