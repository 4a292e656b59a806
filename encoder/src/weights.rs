//! Named tensors of a checkpoint as the encoder reads them: the parent's layers (with the
//! optional `bert.` / `mpnet.` prefix some exports carry), mrl's own heads and layer bridges,
//! and the layers a profile owns (`own_layers.NAME.*`: low-rank deltas and replaced norms and
//! biases over the parent's, merged once at load).

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use crate::dense::Linear;
use crate::error::{EncoderError, Result};
use crate::model::Bridge;

/// Named tensors of a checkpoint, with the optional `bert.` (`mpnet.`) prefix some exports
/// carry.
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    /// The checkpoint's tensors by name, its prefix (if any) found from the names.
    pub(crate) fn new(tensors: HashMap<String, Tensor>) -> Self {
        let prefix = crate::arch::tensor_prefix(|name| tensors.contains_key(name));
        Self { tensors, prefix }
    }

    /// The Matryoshka head named `name` (`head`, or a profile's own such as `heads.b50`), if
    /// the checkpoint has one: `{name}.weight` is `outputs × hidden`.
    pub(crate) fn head(&self, name: &str, hidden: usize) -> Result<Option<Linear>> {
        let Some(t) = self.tensors.get(&format!("{name}.weight")) else {
            return Ok(None);
        };
        let outputs = t.dims().first().copied().unwrap_or(0);
        if outputs < hidden {
            return Err(EncoderError::Tensor(candle_core::Error::Msg(format!(
                "{name}.weight has {outputs} outputs, fewer than the hidden width {hidden}"
            ))));
        }
        self.unprefixed().linear(name, hidden, outputs).map(Some)
    }

    /// The same tensors read by their full names: heads and bridges are mrl's own, never
    /// under an export's `bert.` prefix.
    pub(crate) fn unprefixed(&self) -> Weights {
        Weights {
            tensors: self.tensors.clone(),
            prefix: "",
        }
    }

    /// Every profile head the checkpoint holds (`heads.NAME.weight`), by `NAME`.
    pub(crate) fn profile_heads(&self, hidden: usize) -> Result<HashMap<String, Linear>> {
        let mut out = HashMap::new();
        for key in self.tensors.keys() {
            let Some(name) = key
                .strip_prefix("heads.")
                .and_then(|k| k.strip_suffix(".weight"))
            else {
                continue;
            };
            if let Some(h) = self.head(&format!("heads.{name}"), hidden)? {
                out.insert(name.to_string(), h);
            }
        }
        Ok(out)
    }

    /// Every layer bridge the checkpoint holds (`bridges.NAME.LAYER.weight`, `hidden ×
    /// hidden`), by `NAME`, each list in layer order.
    pub(crate) fn bridges(&self) -> Result<HashMap<String, Vec<Bridge>>> {
        let bad = |m: String| EncoderError::Tensor(candle_core::Error::Msg(m));
        let unprefixed = self.unprefixed();
        let mut out: HashMap<String, Vec<Bridge>> = HashMap::new();
        for (key, t) in &self.tensors {
            let Some((name, layer)) = key
                .strip_prefix("bridges.")
                .and_then(|k| k.strip_suffix(".weight"))
                .and_then(|k| k.rsplit_once('.'))
            else {
                continue;
            };
            let layer: usize = layer.parse().map_err(|_| {
                bad(format!(
                    "{key}: the part before .weight is not a layer index"
                ))
            })?;
            let (rows, cols) = t.dims2()?;
            if rows != cols {
                return Err(bad(format!("{key} is {rows} × {cols}; a bridge is square")));
            }
            let base = format!("bridges.{name}.{layer}");
            let bridge = Bridge {
                after: layer,
                weight: unprefixed.get(&format!("{base}.weight"), &[rows, cols])?,
                bias: unprefixed.get(&format!("{base}.bias"), &[rows])?,
            };
            out.entry(name.to_string()).or_default().push(bridge);
        }
        for list in out.values_mut() {
            list.sort_by_key(|b| b.after);
        }
        Ok(out)
    }

    /// The dense layer `{name}.weight` (`outputs × inputs`) and `{name}.bias`.
    pub(crate) fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear> {
        Ok(Linear::new(
            self.get(&format!("{name}.weight"), &[outputs, inputs])?,
            self.get(&format!("{name}.bias"), &[outputs])?,
            inputs,
        ))
    }

    /// The tensor as row-major f32, after checking its shape.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = format!("{}{name}", self.prefix);
        let bad = |msg: String| EncoderError::Tensor(candle_core::Error::Msg(msg));
        let t = self
            .tensors
            .get(&key)
            .ok_or_else(|| bad(format!("missing tensor {key} in model.safetensors")))?;
        if t.dims() != shape {
            return Err(bad(format!(
                "tensor {key} has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// What a profile's own tensor `own_layers.NAME.X.{part}` does to the parent's `X`.
const OWN_PARTS: [&str; 4] = ["lora_a", "lora_b", "weight", "bias"];

impl Weights {
    /// The layers profiles own, by profile name and parent layer index: each a copy of the
    /// parent's layer tensors with the profile's changes applied. In the checkpoint they are
    /// `own_layers.NAME.X.lora_a` (`r × in`) with `own_layers.NAME.X.lora_b` (`out × r`), a
    /// low-rank delta added to the parent's `X.weight` (`W + B·A`, as LoRA merges; Hu et al.,
    /// 2021) or, narrower, to its leading `out × in` block (a child's prefix of heads or FFN
    /// neurons),
    /// and `own_layers.NAME.X.weight` / `.bias`, which replace the parent's (a norm's scale, a
    /// bias). `X` is a parent tensor name inside `encoder.layer.L.`; the parent's own tensors
    /// are never changed, so the full profile stays the parent.
    ///
    /// Errors: a name outside a layer, a part without its pair or the parent tensor it
    /// changes, or shapes that do not multiply to the parent's.
    pub(crate) fn own_layers(&self) -> Result<HashMap<String, HashMap<usize, Weights>>> {
        let bad = |m: String| EncoderError::Tensor(candle_core::Error::Msg(m));
        let mut out: HashMap<String, HashMap<usize, Weights>> = HashMap::new();
        let mut keys: Vec<&String> = self.tensors.keys().collect();
        keys.sort();
        for key in keys {
            let Some(rest) = key.strip_prefix("own_layers.") else {
                continue;
            };
            let (name, rest) = rest
                .split_once('.')
                .ok_or_else(|| bad(format!("{key}: no profile name")))?;
            let (target, part) = rest
                .rsplit_once('.')
                .filter(|(_, p)| OWN_PARTS.contains(p))
                .ok_or_else(|| bad(format!("{key}: not one of .{}", OWN_PARTS.join(", ."))))?;
            let layer: usize = target
                .strip_prefix("encoder.layer.")
                .and_then(|t| t.split('.').next())
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| bad(format!("{key}: not inside encoder.layer.L")))?;
            let layers = out.entry(name.to_string()).or_default();
            let w = match layers.entry(layer) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let prefix = format!("{}encoder.layer.{layer}.", self.prefix);
                    let tensors = self
                        .tensors
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix))
                        .map(|(k, t)| (k.clone(), t.clone()))
                        .collect();
                    e.insert(Weights {
                        tensors,
                        prefix: self.prefix,
                    })
                }
            };
            let own = |p: &str| {
                self.tensors
                    .get(&format!("own_layers.{name}.{target}.{p}"))
                    .ok_or_else(|| bad(format!("{key} without own_layers.{name}.{target}.{p}")))
            };
            let parent_key = |p: &str| format!("{}{target}.{p}", self.prefix);
            match part {
                // Merged with its `lora_a` (sorted before it); alone it is an error.
                "lora_b" => {
                    own("lora_a")?;
                }
                "lora_a" => {
                    let (a, b) = (own("lora_a")?, own("lora_b")?);
                    let wkey = parent_key("weight");
                    let parent = w
                        .tensors
                        .get(&wkey)
                        .ok_or_else(|| bad(format!("{key}: the parent has no {wkey}")))?;
                    let delta = b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?;
                    // A narrowed child's delta covers the block of its prefix of heads or
                    // neurons: the rest of the weight is the parent's (it never runs it).
                    let ((o, n), (out, inp)) = (delta.dims2()?, parent.dims2()?);
                    if o > out || n > inp {
                        return Err(bad(format!(
                            "{key}: B·A is {o} × {n}, wider than {wkey}'s {out} × {inp}"
                        )));
                    }
                    let delta =
                        delta
                            .pad_with_zeros(0, 0, out - o)?
                            .pad_with_zeros(1, 0, inp - n)?;
                    let merged = (parent.to_dtype(DType::F32)? + delta)?;
                    w.tensors.insert(wkey, merged);
                }
                p => {
                    if p == "weight"
                        && self
                            .tensors
                            .contains_key(&format!("own_layers.{name}.{target}.lora_a"))
                    {
                        return Err(bad(format!(
                            "{key} and a low-rank delta of the same weight"
                        )));
                    }
                    let pkey = parent_key(p);
                    let parent = w
                        .tensors
                        .get(&pkey)
                        .ok_or_else(|| bad(format!("{key}: the parent has no {pkey}")))?;
                    let t = own(p)?;
                    if t.dims() != parent.dims() {
                        return Err(bad(format!(
                            "{key} is {:?}, {pkey} {:?}",
                            t.dims(),
                            parent.dims()
                        )));
                    }
                    w.tensors.insert(pkey, t.clone());
                }
            }
        }
        Ok(out)
    }
}
