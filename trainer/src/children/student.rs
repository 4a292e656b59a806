//! One child's trainable encoder: the frozen parent's embeddings and layer weights, sliced to
//! the child's heads and FFN neurons, under the child's own parameters (a low-rank delta on
//! every dense weight of the layers it trains, its own biases and LayerNorms, its layer
//! bridges and its head), run packed through the fused ops; and the tensors it exports
//! (`own_layers.NAME.*`, `bridges.NAME.*`, `heads.NAME.*`; see `mrl_encoder`'s weights).
//!
//! Invariants: the parent's tensors are never variables (no gradient reaches them, so `full`
//! stays the parent); a delta starts at zero (`B = 0`, as LoRA does), so step 0 computes
//! exactly the child the recipe started from.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use mrl_encoder::arch::tensor_prefix;
use mrl_encoder::model::Bridge;
use mrl_encoder::{BertConfig, Profile};

use crate::fused::{self, Spans};
use crate::optim::Params;
use crate::router::Rng;
use crate::{Result, TrainerError};

/// The HF BERT names of a layer's dense weights, with the axis a narrowed child slices:
/// `true` for the rows (its outputs are heads or neurons), `false` for the columns.
const DENSE: [(&str, bool); 6] = [
    ("attention.self.query", true),
    ("attention.self.key", true),
    ("attention.self.value", true),
    ("attention.output.dense", false),
    ("intermediate.dense", true),
    ("output.dense", false),
];

const NORMS: [&str; 2] = ["attention.output.LayerNorm", "output.LayerNorm"];

/// A dense layer of the child: the parent's weight sliced to the child (frozen), its own
/// bias and, when trained, a low-rank delta `B·A` (`A`: `r × in`, `B`: `out × r`).
struct Dense {
    /// The parent tensor's name without `.weight` (`encoder.layer.4.attention.self.query`).
    name: String,
    weight: Tensor,
    bias: Tensor,
    delta: Option<(Tensor, Tensor)>,
    /// The parent's outputs: an exported bias is padded back to them.
    parent_outputs: usize,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = fused::linear_frozen(x, &self.weight, &self.bias)?;
        Ok(match &self.delta {
            Some((a, b)) => (y + x.matmul(&a.t()?)?.matmul(&b.t()?)?)?,
            None => y,
        })
    }
}

struct Norm {
    name: String,
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        Ok(fused::layer_norm(x, &self.weight, &self.bias, eps)?)
    }
}

struct ChildLayer {
    index: usize,
    trained: bool,
    dense: Vec<Dense>,
    norms: Vec<Norm>,
}

/// What the recipe says about a child's own parameters.
#[derive(Debug, Clone, Copy)]
pub struct OwnSettings {
    /// Rank of the low-rank deltas.
    pub rank: usize,
    /// Whether the first layer the child runs trains too. Off, it runs every step with the
    /// parent's weights and off the graph (a bridge after it still learns), which saves its
    /// backward pass.
    pub train_first_layer: bool,
}

/// One child under training.
pub struct ChildStudent {
    /// The profile's name in `mrl.json`; its exported tensors are named after it.
    pub name: String,
    /// The layers and widths it runs (the calibration's choice).
    pub profile: Profile,
    cfg: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: (Tensor, Tensor),
    layers: Vec<ChildLayer>,
    /// After parent layer `.0`: `x·Wᵀ + b`.
    bridges: Vec<(usize, Tensor, Tensor)>,
    head: (Tensor, Tensor),
    /// The variables, by the name they are exported under.
    params: Params,
}

/// A frozen parent tensor by its name under the checkpoint's prefix (`arch::tensor_prefix`),
/// as f32.
fn get(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    let prefix = tensor_prefix(|n| tensors.contains_key(n));
    tensors
        .get(&format!("{prefix}{name}"))
        .ok_or_else(|| TrainerError::Invalid(format!("the parent has no tensor {prefix}{name}")))?
        .to_dtype(DType::F32)
        .map_err(Into::into)
}

impl ChildStudent {
    /// The child `name` running `profile`, its layer bridges `bridges` and head
    /// (`head`, `outputs × hidden`, with its bias), from the parent's `tensors`.
    ///
    /// Errors: a narrowed hidden width (children here keep the parent's), a missing tensor.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        profile: &Profile,
        cfg: &BertConfig,
        tensors: &HashMap<String, Tensor>,
        bridges: &[Bridge],
        head: (Tensor, Tensor),
        own: OwnSettings,
        rng: &mut Rng,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        // The tensor names below are BERT's; MPNet's differ (and it has no token types).
        if cfg.architecture() != Some(mrl_encoder::config::Architecture::Bert) {
            return Err(TrainerError::Invalid(format!(
                "{name}: the children recipe trains BERT parents; this one is {:?}",
                cfg.model_type
            )));
        }
        if profile.hidden != h {
            return Err(TrainerError::Invalid(format!(
                "{name} is {} wide; children here keep the parent's width {h}",
                profile.hidden
            )));
        }
        let dh = h / cfg.num_attention_heads;
        let attn = profile.heads * dh;
        let mut params: Params = Vec::new();
        let mut var = |key: String, t: Tensor| -> Result<Tensor> {
            let v = Var::from_tensor(&t.contiguous()?)?;
            let out = v.as_tensor().clone();
            params.push((key, v));
            Ok(out)
        };
        let mut layers = Vec::new();
        for (i, &l) in profile.layers.iter().enumerate() {
            let trained = i > 0 || own.train_first_layer;
            let base = format!("encoder.layer.{l}");
            let mut dense = Vec::new();
            for (part, rows) in DENSE {
                let pname = format!("{base}.{part}");
                let w = get(tensors, &format!("{pname}.weight"))?;
                let b = get(tensors, &format!("{pname}.bias"))?;
                let out = w.dims2()?.0;
                let narrow = if part.starts_with("attention") {
                    attn
                } else {
                    profile.ffn
                };
                let (w, b) = match rows {
                    true => (w.narrow(0, 0, narrow)?, b.narrow(0, 0, narrow)?),
                    false => (w.narrow(1, 0, narrow)?, b),
                };
                let (o, n) = w.dims2()?;
                let own_key = format!("own_layers.{name}.{pname}");
                let (bias, delta) = match trained {
                    true => {
                        let bias = var(format!("{own_key}.bias"), b)?;
                        // A ~ N(0, 1/in), B = 0: the delta starts at zero.
                        let std = 1.0 / (n as f64).sqrt();
                        let a: Vec<f32> = (0..own.rank * n)
                            .map(|_| (rng.normal() * std) as f32)
                            .collect();
                        let a = var(
                            format!("{own_key}.lora_a"),
                            Tensor::from_vec(a, (own.rank, n), &Device::Cpu)?,
                        )?;
                        let b = var(
                            format!("{own_key}.lora_b"),
                            Tensor::zeros((o, own.rank), DType::F32, &Device::Cpu)?,
                        )?;
                        (bias, Some((a, b)))
                    }
                    false => (b, None),
                };
                dense.push(Dense {
                    name: pname,
                    weight: w.contiguous()?,
                    bias,
                    delta,
                    parent_outputs: out,
                });
            }
            let mut norms = Vec::new();
            for part in NORMS {
                let pname = format!("{base}.{part}");
                let (w, b) = (
                    get(tensors, &format!("{pname}.weight"))?,
                    get(tensors, &format!("{pname}.bias"))?,
                );
                let own_key = format!("own_layers.{name}.{pname}");
                let (w, b) = match trained {
                    true => (
                        var(format!("{own_key}.weight"), w)?,
                        var(format!("{own_key}.bias"), b)?,
                    ),
                    false => (w, b),
                };
                norms.push(Norm {
                    name: pname,
                    weight: w,
                    bias: b,
                });
            }
            layers.push(ChildLayer {
                index: l,
                trained,
                dense,
                norms,
            });
        }
        let mut own_bridges = Vec::new();
        for b in bridges {
            let w = Tensor::from_vec(b.weight.clone(), (h, h), &Device::Cpu)?;
            let bias = Tensor::from_vec(b.bias.clone(), h, &Device::Cpu)?;
            own_bridges.push((
                b.after,
                var(format!("bridges.{name}.{}.weight", b.after), w)?,
                var(format!("bridges.{name}.{}.bias", b.after), bias)?,
            ));
        }
        let head = (
            var(format!("heads.{name}.weight"), head.0)?,
            var(format!("heads.{name}.bias"), head.1)?,
        );
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            name: name.to_string(),
            profile: profile.clone(),
            cfg: cfg.clone(),
            word: get(tensors, "embeddings.word_embeddings.weight")?,
            position: get(tensors, "embeddings.position_embeddings.weight")?,
            token_type: get(tensors, "embeddings.token_type_embeddings.weight")?.get(0)?,
            emb_norm: (
                get(tensors, "embeddings.LayerNorm.weight")?,
                get(tensors, "embeddings.LayerNorm.bias")?,
            ),
            layers,
            bridges: own_bridges,
            head,
            params,
        })
    }

    /// Whether the child runs layer bridges.
    pub fn has_bridges(&self) -> bool {
        !self.bridges.is_empty()
    }

    /// The child's variables, sorted by name.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The variables in two groups: the low-rank deltas, and everything else (which starts
    /// fitted), each sorted by name.
    pub fn groups(&self) -> [Params; 2] {
        let (deltas, rest) = self
            .params
            .iter()
            .cloned()
            .partition(|(n, _)| n.ends_with(".lora_a") || n.ends_with(".lora_b"));
        [deltas, rest]
    }

    /// Parameters the child owns (its variables' elements).
    pub fn own_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Pooled, head-mapped vectors `[B, outputs]` of packed sequences (`ids`, `positions`
    /// `[N]`, `spans`, `pool` `[B, N]` of `1/len`; `student::Batch::Packed`).
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        spans: &Arc<Spans>,
        pool: &Tensor,
    ) -> Result<Tensor> {
        let eps = self.cfg.layer_norm_eps;
        let nh = self.profile.heads;
        let x = (self.word.index_select(ids, 0)? + self.position.index_select(positions, 0)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = fused::layer_norm(&x, &self.emb_norm.0, &self.emb_norm.1, eps)?;
        for layer in &self.layers {
            let d = &layer.dense;
            let q = d[0].forward(&x)?;
            let k = d[1].forward(&x)?;
            let v = d[2].forward(&x)?;
            let ctx = fused::attention(&q, &k, &v, spans, nh)?;
            let a = layer.norms[0].forward(&(d[3].forward(&ctx)? + &x)?, eps)?;
            let f = fused::gelu(&d[4].forward(&a)?)?;
            x = layer.norms[1].forward(&(d[5].forward(&f)? + &a)?, eps)?;
            if !layer.trained {
                x = x.detach();
            }
            if let Some((_, w, b)) = self.bridges.iter().find(|(l, _, _)| *l == layer.index) {
                x = fused::linear(&x, w, b)?;
            }
        }
        let pooled = pool.matmul(&x)?;
        Ok(fused::linear(&pooled, &self.head.0, &self.head.1)?)
    }

    /// The tensors the child adds to (or replaces in) the checkpoint: its own layers'
    /// deltas (the delta is `B·A`, over the child's slice of the weight), biases and norms
    /// at the parent's shapes, its bridges and its head.
    pub fn export(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let own = |pname: &str| format!("own_layers.{}.{pname}", self.name);
        for layer in self.layers.iter().filter(|l| l.trained) {
            for (d, (_, rows)) in layer.dense.iter().zip(DENSE) {
                let out_full = d.parent_outputs;
                let o = d.weight.dims2()?.0;
                if let Some((a, b)) = &d.delta {
                    // Unpadded: the encoder adds a narrowed `B·A` to the weight's leading
                    // block.
                    out.push((format!("{}.lora_a", own(&d.name)), a.detach()));
                    out.push((format!("{}.lora_b", own(&d.name)), b.detach()));
                }
                let bias = d.bias.detach();
                let bias = match rows {
                    // The parent's biases past the child's slice are never used by it.
                    true => bias.pad_with_zeros(0, 0, out_full - o)?,
                    false => bias,
                };
                out.push((format!("{}.bias", own(&d.name)), bias));
            }
            for n in &layer.norms {
                out.push((format!("{}.weight", own(&n.name)), n.weight.detach()));
                out.push((format!("{}.bias", own(&n.name)), n.bias.detach()));
            }
        }
        for (after, w, b) in &self.bridges {
            out.push((format!("bridges.{}.{after}.weight", self.name), w.detach()));
            out.push((format!("bridges.{}.{after}.bias", self.name), b.detach()));
        }
        out.push((format!("heads.{}.weight", self.name), self.head.0.detach()));
        out.push((format!("heads.{}.bias", self.name), self.head.1.detach()));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::importance::tests::{tiny_config, tiny_seqs, tiny_tensors};
    use mrl_encoder::model::BertModel;

    fn random(shape: (usize, usize), rng: &mut Rng, scale: f64) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.normal() * scale) as f32)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A child moved off its start, exported and loaded by the inference encoder, computes
    /// what it computed in training (narrowed heads and FFN, a first layer frozen or trained,
    /// a bridge, its own head); the parent's profile computes exactly what the parent alone
    /// does; a delta without its other factor is refused at load.
    #[test]
    fn an_exported_child_runs_in_the_encoder_as_it_trained() {
        for train_first_layer in [false, true] {
            exported_child_runs_as_trained(train_first_layer);
        }
    }

    fn exported_child_runs_as_trained(train_first_layer: bool) {
        let cfg = tiny_config();
        let h = cfg.hidden_size;
        let tensors = tiny_tensors(&cfg, 3);
        let profile = Profile {
            layers: vec![0, 2, 3],
            heads: 2,
            ffn: 16,
            hidden: h,
        };
        let mut rng = Rng::new(5);
        let bridge = Bridge {
            after: 0,
            weight: random((h, h), &mut rng, 0.3)
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap(),
            bias: vec![0.05; h],
        };
        let head = (
            random((h, h), &mut rng, 0.3),
            Tensor::zeros(h, DType::F32, &Device::Cpu).unwrap(),
        );
        let own = OwnSettings {
            rank: 3,
            train_first_layer,
        };
        let child = ChildStudent::new(
            "kid",
            &profile,
            &cfg,
            &tensors,
            &[bridge],
            head,
            own,
            &mut rng,
        )
        .unwrap();
        // Every variable moves (a delta left at B = 0 would hide a wrong merge).
        for (_, v) in child.params() {
            let (rows, cols) = match v.dims() {
                [r, c] => (*r, *c),
                [n] => (1, *n),
                _ => unreachable!(),
            };
            let step = random((rows, cols), &mut rng, 0.1)
                .reshape(v.shape())
                .unwrap();
            v.set(&(v.as_tensor() + step).unwrap()).unwrap();
        }
        assert!(child.params().iter().any(|(n, _)| n.ends_with(".lora_b")));
        let seqs = tiny_seqs();
        let (ids, pos, spans, pool) = super::super::packed(&seqs).unwrap();
        let want: Vec<Vec<f32>> = child
            .forward(&ids, &pos, &spans, &pool)
            .unwrap()
            .to_vec2()
            .unwrap();

        let mut all = tensors.clone();
        all.extend(child.export().unwrap());
        let mut model = BertModel::from_tensors(all.clone(), &cfg).unwrap();
        model.bind_profile_layers("kid", &profile).unwrap();
        model.bind_profile_bridges("kid", &profile).unwrap();
        model.bind_profile_head("kid", &profile).unwrap();
        let owned = if train_first_layer {
            vec![0, 2, 3]
        } else {
            vec![2, 3]
        };
        assert_eq!(model.own_layers_of(&profile), owned);
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let got = model.forward(&rows, &profile).unwrap();
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
        let parent = BertModel::from_tensors(tensors, &cfg).unwrap();
        let full = Profile::full(&cfg);
        assert_eq!(
            model.forward(&rows, &full).unwrap(),
            parent.forward(&rows, &full).unwrap()
        );
        // The full profile owns no layer.
        assert!(model.bind_profile_layers("kid", &full).is_err());
        // Half a delta is refused, whichever half is missing.
        for part in ["lora_a", "lora_b"] {
            let mut broken = all.clone();
            broken.remove(&format!(
                "own_layers.kid.encoder.layer.2.attention.self.query.{part}"
            ));
            let err = BertModel::from_tensors(broken, &cfg)
                .err()
                .expect("refused");
            assert!(err.to_string().contains("without own_layers.kid"), "{err}");
        }
    }
}
