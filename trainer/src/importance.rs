//! Importance ranking and permutation: activation statistics rank hidden channels, attention
//! heads and FFN neurons (width); the normalised error of skipping a layer ranks layers
//! (depth); a permutation of every tensor then puts the most important units first, so a
//! sub-encoder is a prefix slice of the parent.
//!
//! The permutation preserves the function: heads and neurons are internal to a layer, and a
//! hidden-channel permutation commutes with LayerNorm, residual adds and mean pooling, so the
//! permuted model's output is the original output with its channels reordered the same way.

use std::collections::HashMap;

use candle_core::Tensor;
use indicatif::ProgressBar;
use mrl_encoder::arch::{bias_buckets, tensor_prefix, LayerNames, RELATIVE_BIAS};
use mrl_encoder::tokenize::plan_batches;
use mrl_encoder::{BertConfig, BertModel, Observer, Profile};

use crate::error::{Result, TrainerError};

/// Sums of activation magnitudes over a calibration set.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationStats {
    /// Σ|LayerNorm output| per hidden channel, over every LayerNorm and token.
    pub hidden: Vec<f64>,
    /// Per layer, Σ|attention context| per head (the head's output before projection).
    pub heads: Vec<Vec<f64>>,
    /// Per layer, Σ|GELU(x·W1ᵀ + b)| per FFN neuron: what each neuron feeds the down
    /// projection.
    pub ffn: Vec<Vec<f64>>,
    pub tokens: usize,
}

impl ActivationStats {
    pub fn new(cfg: &BertConfig) -> Self {
        let layers = cfg.num_hidden_layers;
        Self {
            hidden: vec![0.0; cfg.hidden_size],
            heads: vec![vec![0.0; cfg.num_attention_heads]; layers],
            ffn: vec![vec![0.0; cfg.intermediate_size]; layers],
            tokens: 0,
        }
    }

    /// Collects statistics of the full model over `seqs`.
    pub fn collect(
        model: &BertModel,
        seqs: &[Vec<u32>],
        batch: usize,
        progress: &ProgressBar,
    ) -> Result<Self> {
        let cfg = model.config();
        let mut stats = Self::new(cfg);
        let full = Profile::full(cfg);
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        for idx in plan_batches(&lengths, batch) {
            let rows: Vec<&[u32]> = idx.iter().map(|&i| seqs[i].as_slice()).collect();
            model.forward_observed(&rows, &full, &mut stats)?;
            stats.tokens += rows.iter().map(|r| r.len()).sum::<usize>();
            progress.inc(rows.len() as u64);
        }
        Ok(stats)
    }

    /// The width permutation: each list ordered by importance, most important first. With
    /// `shared_heads` (MPNet, whose relative position bias is one table for every layer, a
    /// column per head) every layer gets one head order, by the heads' scores summed over
    /// layers.
    pub fn width_order(&self, shared_heads: bool) -> WidthOrder {
        let heads = if shared_heads {
            let mut sum = vec![0.0; self.heads.first().map_or(0, Vec::len)];
            for layer in &self.heads {
                sum.iter_mut().zip(layer).for_each(|(s, v)| *s += v);
            }
            vec![order_desc(&sum); self.heads.len()]
        } else {
            self.heads.iter().map(|s| order_desc(s)).collect()
        };
        WidthOrder {
            hidden: order_desc(&self.hidden),
            heads,
            ffn: self.ffn.iter().map(|s| order_desc(s)).collect(),
        }
    }
}

fn add_abs(acc: &mut [f64], row: &[f32]) {
    acc.iter_mut()
        .zip(row)
        .for_each(|(a, v)| *a += v.abs() as f64);
}

impl Observer for ActivationStats {
    fn hidden(&mut self, x: &[f32], hidden: usize) {
        for row in x.chunks_exact(hidden) {
            add_abs(&mut self.hidden[..hidden], row);
        }
    }

    fn heads(&mut self, layer: usize, ctx: &[f32], heads: usize, head_dim: usize) {
        let acc = &mut self.heads[layer];
        for row in ctx.chunks_exact(heads * head_dim) {
            for (h, part) in row.chunks_exact(head_dim).enumerate() {
                acc[h] += part.iter().map(|v| v.abs() as f64).sum::<f64>();
            }
        }
    }

    fn ffn(&mut self, layer: usize, inner: &[f32], ffn: usize) {
        for row in inner.chunks_exact(ffn) {
            add_abs(&mut self.ffn[layer][..ffn], row);
        }
    }
}

/// Indices sorted by score, highest first; ties keep the lower index first so the order is
/// deterministic.
pub fn order_desc(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// New position → original index, for every elastic width.
#[derive(Debug, Clone, PartialEq)]
pub struct WidthOrder {
    pub hidden: Vec<usize>,
    pub heads: Vec<Vec<usize>>,
    pub ffn: Vec<Vec<usize>>,
}

impl WidthOrder {
    pub fn identity(cfg: &BertConfig) -> Self {
        let layers = cfg.num_hidden_layers;
        Self {
            hidden: (0..cfg.hidden_size).collect(),
            heads: vec![(0..cfg.num_attention_heads).collect(); layers],
            ffn: vec![(0..cfg.intermediate_size).collect(); layers],
        }
    }
}

/// Σ(a − b)² / Σa² over all vectors.
pub fn normalised_mse(reference: &[Vec<f32>], other: &[Vec<f32>]) -> f64 {
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in reference.iter().zip(other) {
        for (x, y) in a.iter().zip(b) {
            err += ((x - y) as f64).powi(2);
            norm += (*x as f64).powi(2);
        }
    }
    err / norm.max(f64::MIN_POSITIVE)
}

/// Layers ranked by the normalised MSE of the pooled embedding when one is skipped,
/// iteratively: the layer whose removal (from what is still kept) hurts least is dropped, then
/// the rest are scored again. Returns every layer in drop order (the last one is never
/// dropped) and the score each dropped layer had when it went.
pub fn depth_order(
    model: &BertModel,
    seqs: &[Vec<u32>],
    batch: usize,
    progress: &ProgressBar,
) -> Result<(Vec<usize>, Vec<f64>)> {
    let cfg = model.config();
    let full = Profile::full(cfg);
    let reference = model.forward_all(seqs, &full, batch)?;
    let mut kept: Vec<usize> = full.layers.clone();
    let (mut order, mut scores) = (Vec::new(), Vec::new());
    while kept.len() > 1 {
        let mut best: Option<(usize, f64)> = None;
        for &j in &kept {
            let profile = Profile {
                layers: kept.iter().copied().filter(|&l| l != j).collect(),
                ..full.clone()
            };
            let s = normalised_mse(&reference, &model.forward_all(seqs, &profile, batch)?);
            progress.inc(1);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((j, s));
            }
        }
        let (j, s) = best.expect("kept has at least two layers here; this is a bug");
        kept.retain(|&l| l != j);
        order.push(j);
        scores.push(s);
    }
    order.extend(kept);
    Ok((order, scores))
}

/// The layers a `k`-layer profile keeps: all but the first `n − k` dropped, in model order.
pub fn kept_layers(drop_order: &[usize], k: usize) -> Vec<usize> {
    let n = drop_order.len();
    let mut kept = drop_order[n - k.min(n)..].to_vec();
    kept.sort_unstable();
    kept
}

/// Reorders every tensor of a BERT or MPNet checkpoint by `order`, in place. Tensor names
/// follow HF (`bert.`/`mpnet.` prefix optional); an unknown float tensor is an error rather
/// than left behind unpermuted, which would silently break the model.
///
/// Errors: also an MPNet `order` whose layers' head orders differ (its relative position
/// bias, one table for every layer, can follow only one).
pub fn permute_tensors(
    tensors: &mut HashMap<String, Tensor>,
    cfg: &BertConfig,
    order: &WidthOrder,
) -> Result<()> {
    let arch = cfg.architecture().ok_or_else(|| {
        TrainerError::Invalid(format!(
            "model_type {:?} cannot be permuted",
            cfg.model_type
        ))
    })?;
    let names = LayerNames::of(arch);
    let prefix = tensor_prefix(|name| tensors.contains_key(name));
    let index = |v: &[usize]| -> Result<Tensor> {
        let v: Vec<u32> = v.iter().map(|&i| i as u32).collect();
        Ok(Tensor::new(v, &candle_core::Device::Cpu)?)
    };
    let d = cfg.head_dim();
    let hidden = index(&order.hidden)?;
    let mut plan: HashMap<String, Vec<(usize, Tensor)>> = HashMap::new();
    let mut put = |name: String, dims: Vec<(usize, Tensor)>| {
        plan.insert(format!("{prefix}{name}"), dims);
    };
    for e in [
        "word_embeddings",
        "position_embeddings",
        "token_type_embeddings",
    ] {
        put(format!("embeddings.{e}.weight"), vec![(1, hidden.clone())]);
    }
    for p in ["weight", "bias"] {
        put(
            format!("embeddings.LayerNorm.{p}"),
            vec![(0, hidden.clone())],
        );
    }
    for l in 0..cfg.num_hidden_layers {
        let rows: Vec<usize> = order.heads[l]
            .iter()
            .flat_map(|&h| h * d..(h + 1) * d)
            .collect();
        let heads = index(&rows)?;
        let ffn = index(&order.ffn[l])?;
        let p = format!("encoder.layer.{l}");
        for qkv in names.qkv {
            let n = format!("{p}.{qkv}");
            put(
                format!("{n}.weight"),
                vec![(0, heads.clone()), (1, hidden.clone())],
            );
            put(format!("{n}.bias"), vec![(0, heads.clone())]);
        }
        let n = format!("{p}.{}", names.attention_out);
        put(
            format!("{n}.weight"),
            vec![(0, hidden.clone()), (1, heads.clone())],
        );
        put(format!("{n}.bias"), vec![(0, hidden.clone())]);
        let n = format!("{p}.{}", names.ffn_up);
        put(
            format!("{n}.weight"),
            vec![(0, ffn.clone()), (1, hidden.clone())],
        );
        put(format!("{n}.bias"), vec![(0, ffn.clone())]);
        let n = format!("{p}.{}", names.ffn_down);
        put(
            format!("{n}.weight"),
            vec![(0, hidden.clone()), (1, ffn.clone())],
        );
        put(format!("{n}.bias"), vec![(0, hidden.clone())]);
        for ln in [names.attention_norm, names.ffn_norm] {
            for w in ["weight", "bias"] {
                put(format!("{p}.{ln}.{w}"), vec![(0, hidden.clone())]);
            }
        }
    }
    if bias_buckets(cfg).is_some() {
        if order.heads.windows(2).any(|w| w[0] != w[1]) {
            return Err(TrainerError::Invalid(
                "MPNet's relative position bias is shared by every layer: rank its heads with \
                 one order for all layers (ActivationStats::width_order(true))"
                    .into(),
            ));
        }
        if let Some(first) = order.heads.first() {
            put(RELATIVE_BIAS.into(), vec![(1, index(first)?)]);
        }
    }
    // The pooler is not used by mean pooling but is kept consistent with the residual stream.
    put(
        "pooler.dense.weight".into(),
        vec![(0, hidden.clone()), (1, hidden.clone())],
    );
    put("pooler.dense.bias".into(), vec![(0, hidden)]);
    let position_ids = format!("{prefix}embeddings.position_ids");
    for (name, t) in tensors.iter_mut() {
        match plan.get(name) {
            Some(dims) => {
                for (dim, idx) in dims {
                    *t = t.index_select(idx, *dim)?.contiguous()?;
                }
            }
            None if *name == position_ids => {}
            None => {
                return Err(TrainerError::Invalid(format!(
                    "tensor {name} has no known place in a BERT encoder; refusing to permute"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{DType, Device};

    pub(crate) fn tiny_config() -> BertConfig {
        BertConfig {
            vocab_size: 50,
            hidden_size: 16,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            intermediate_size: 32,
            hidden_act: "gelu".into(),
            max_position_embeddings: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            position_embedding_type: "absolute".into(),
            model_type: None,
            pad_token_id: None,
            relative_attention_num_buckets: None,
        }
    }

    /// A random BERT with the given LayerNorm scale, deterministic per `seed`.
    pub(crate) fn tiny_tensors(cfg: &BertConfig, seed: u64) -> HashMap<String, Tensor> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut rand = |shape: &[usize], scale: f32| -> Tensor {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
                })
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        let mut t = HashMap::new();
        let mut put = |n: String, v: Tensor| {
            t.insert(n, v);
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            rand(&[cfg.vocab_size, h], 1.0),
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            rand(&[cfg.max_position_embeddings, h], 0.5),
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            rand(&[2, h], 0.1),
        );
        let ones = || Tensor::ones(h, DType::F32, &Device::Cpu).unwrap();
        let zeros = || Tensor::zeros(h, DType::F32, &Device::Cpu).unwrap();
        put("embeddings.LayerNorm.weight".into(), ones());
        put("embeddings.LayerNorm.bias".into(), zeros());
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for n in ["query", "key", "value"] {
                put(format!("{p}.attention.self.{n}.weight"), rand(&[h, h], 0.5));
                put(format!("{p}.attention.self.{n}.bias"), rand(&[h], 0.1));
            }
            put(
                format!("{p}.attention.output.dense.weight"),
                rand(&[h, h], 0.5),
            );
            put(format!("{p}.attention.output.dense.bias"), rand(&[h], 0.1));
            put(format!("{p}.intermediate.dense.weight"), rand(&[f, h], 0.5));
            put(format!("{p}.intermediate.dense.bias"), rand(&[f], 0.1));
            put(format!("{p}.output.dense.weight"), rand(&[h, f], 0.5));
            put(format!("{p}.output.dense.bias"), rand(&[h], 0.1));
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("{p}.{ln}.weight"), ones());
                put(format!("{p}.{ln}.bias"), zeros());
            }
        }
        t
    }

    pub(crate) fn tiny_seqs() -> Vec<Vec<u32>> {
        (0..12u32)
            .map(|i| {
                (0..3 + (i as usize * 7) % 20)
                    .map(|j| (i * 7 + j as u32 * 3) % 50)
                    .collect()
            })
            .collect()
    }

    fn set(t: &mut HashMap<String, Tensor>, name: &str, f: impl Fn(&mut Vec<f32>)) {
        let old = &t[name];
        let shape = old.dims().to_vec();
        let mut v = old.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        f(&mut v);
        t.insert(
            name.into(),
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
        );
    }

    fn random_order(n: usize, seed: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            v.swap(i, (i * 7919 + seed * 104729) % (i + 1));
        }
        v
    }

    #[test]
    fn permutation_preserves_the_function() {
        let cfg = tiny_config();
        let tensors = tiny_tensors(&cfg, 1);
        let original = BertModel::from_tensors(tensors.clone(), &cfg).unwrap();
        let order = WidthOrder {
            hidden: random_order(16, 1),
            heads: (0..4).map(|l| random_order(4, l + 2)).collect(),
            ffn: (0..4).map(|l| random_order(32, l + 7)).collect(),
        };
        assert_ne!(order.hidden, WidthOrder::identity(&cfg).hidden);
        assert_permutation_preserves(&original, tensors, &cfg, &order);
    }

    /// The model permuted by `order` gives the original's outputs, channels reordered.
    fn assert_permutation_preserves(
        original: &BertModel,
        tensors: HashMap<String, Tensor>,
        cfg: &BertConfig,
        order: &WidthOrder,
    ) {
        let mut permuted = tensors;
        permute_tensors(&mut permuted, cfg, order).unwrap();
        let permuted = BertModel::from_tensors(permuted, cfg).unwrap();
        let seqs = tiny_seqs();
        let full = Profile::full(cfg);
        let a = original.forward_all(&seqs, &full, 5).unwrap();
        let b = permuted.forward_all(&seqs, &full, 5).unwrap();
        for (a, b) in a.iter().zip(&b) {
            for (i, &o) in order.hidden.iter().enumerate() {
                assert!(
                    (b[i] - a[o]).abs() < 1e-4,
                    "channel {i}: {} vs {}",
                    b[i],
                    a[o]
                );
            }
        }
    }

    /// The tiny BERT renamed as MPNet, with a random relative position bias.
    fn tiny_mpnet(seed: u64) -> (BertConfig, HashMap<String, Tensor>) {
        let cfg = BertConfig {
            model_type: Some("mpnet".into()),
            pad_token_id: Some(1),
            relative_attention_num_buckets: Some(32),
            ..tiny_config()
        };
        let renames = [
            ("attention.self.query", "attention.attn.q"),
            ("attention.self.key", "attention.attn.k"),
            ("attention.self.value", "attention.attn.v"),
            ("attention.output.dense", "attention.attn.o"),
            ("attention.output.LayerNorm", "attention.LayerNorm"),
        ];
        let mut t: HashMap<String, Tensor> = tiny_tensors(&tiny_config(), seed)
            .into_iter()
            .filter(|(k, _)| !k.contains("token_type"))
            .map(|(k, v)| {
                let k = renames.iter().fold(k, |k, (from, to)| k.replace(from, to));
                (k, v)
            })
            .collect();
        let bias: Vec<f32> = (0..32 * 4)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        t.insert(
            mrl_encoder::arch::RELATIVE_BIAS.into(),
            Tensor::from_vec(bias, (32, 4), &Device::Cpu).unwrap(),
        );
        (cfg, t)
    }

    #[test]
    fn an_mpnet_permutation_preserves_the_function_with_one_head_order() {
        let (cfg, tensors) = tiny_mpnet(3);
        let original = BertModel::from_tensors(tensors.clone(), &cfg).unwrap();
        let heads = random_order(4, 5);
        let mut order = WidthOrder {
            hidden: random_order(16, 1),
            heads: vec![heads; 4],
            ffn: (0..4).map(|l| random_order(32, l + 7)).collect(),
        };
        assert_permutation_preserves(&original, tensors.clone(), &cfg, &order);
        // Layers with their own head orders cannot share the one bias table.
        order.heads[2] = random_order(4, 9);
        assert_ne!(order.heads[2], order.heads[0]);
        let e = permute_tensors(&mut tensors.clone(), &cfg, &order).unwrap_err();
        assert!(e.to_string().contains("shared by every layer"), "{e}");
    }

    #[test]
    fn unknown_tensors_are_refused() {
        let cfg = tiny_config();
        let mut t = tiny_tensors(&cfg, 1);
        t.insert(
            "classifier.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = permute_tensors(&mut t, &cfg, &WidthOrder::identity(&cfg)).unwrap_err();
        assert!(e.to_string().contains("classifier.weight"), "{e}");
    }

    #[test]
    fn an_identity_layer_is_dropped_first() {
        let cfg = tiny_config();
        let mut t = tiny_tensors(&cfg, 3);
        // With unit LayerNorms, zero attention and FFN outputs make layer 2 the identity.
        for n in [
            "encoder.layer.2.attention.output.dense.weight",
            "encoder.layer.2.attention.output.dense.bias",
            "encoder.layer.2.output.dense.weight",
            "encoder.layer.2.output.dense.bias",
        ] {
            set(&mut t, n, |v| v.iter_mut().for_each(|x| *x = 0.0));
        }
        let model = BertModel::from_tensors(t, &cfg).unwrap();
        let (order, scores) = depth_order(&model, &tiny_seqs(), 4, &ProgressBar::hidden()).unwrap();
        assert_eq!(order[0], 2, "{order:?} {scores:?}");
        assert!(scores[0] < 1e-8, "{scores:?}");
        assert!(scores[1] > 1e-4, "{scores:?}");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3]);
        assert_eq!(kept_layers(&order, 2), {
            let mut k = order[2..].to_vec();
            k.sort();
            k
        });
    }

    #[test]
    fn dead_units_rank_last() {
        let cfg = tiny_config();
        let mut t = tiny_tensors(&cfg, 5);
        // Head 1 of layer 0 reads zero values; neuron 9 of layer 1 is pushed far below zero,
        // where GELU is 0; hidden channel 4 is scaled down in every LayerNorm.
        set(&mut t, "encoder.layer.0.attention.self.value.weight", |v| {
            v[16 * 4..16 * 8].iter_mut().for_each(|x| *x = 0.0)
        });
        set(&mut t, "encoder.layer.0.attention.self.value.bias", |v| {
            v[4..8].iter_mut().for_each(|x| *x = 0.0)
        });
        set(&mut t, "encoder.layer.1.intermediate.dense.weight", |v| {
            v[16 * 9..16 * 10].iter_mut().for_each(|x| *x = 0.0)
        });
        set(&mut t, "encoder.layer.1.intermediate.dense.bias", |v| {
            v[9] = -30.0
        });
        let names: Vec<String> = t
            .keys()
            .filter(|k| k.contains("LayerNorm.weight"))
            .cloned()
            .collect();
        for n in names {
            set(&mut t, &n, |v| v[4] = 0.01);
        }
        let model = BertModel::from_tensors(t, &cfg).unwrap();
        let stats =
            ActivationStats::collect(&model, &tiny_seqs(), 4, &ProgressBar::hidden()).unwrap();
        let order = stats.width_order(false);
        assert_eq!(*order.heads[0].last().unwrap(), 1, "{:?}", stats.heads[0]);
        assert_eq!(*order.ffn[1].last().unwrap(), 9);
        assert_eq!(*order.hidden.last().unwrap(), 4, "{:?}", stats.hidden);
        assert!(stats.tokens > 0);
    }

    #[test]
    fn order_is_descending_and_stable() {
        assert_eq!(order_desc(&[1.0, 3.0, 3.0, 0.5]), [1, 2, 0, 3]);
    }
}

#[cfg(test)]
mod slicing_tests {
    use super::tests::{tiny_config, tiny_seqs, tiny_tensors};
    use super::*;

    /// A sliced profile must compute exactly what a physically smaller model cut from the
    /// same tensors computes.
    #[test]
    fn a_profile_is_the_model_cut_to_its_prefixes() {
        let cfg = tiny_config();
        let tensors = tiny_tensors(&cfg, 9);
        let parent = BertModel::from_tensors(tensors.clone(), &cfg).unwrap();
        let profile = Profile {
            layers: vec![1, 3],
            heads: 2,
            ffn: 16,
            hidden: 8,
        };
        let small_cfg = BertConfig {
            hidden_size: 8,
            num_attention_heads: 2,
            intermediate_size: 16,
            num_hidden_layers: 2,
            ..cfg.clone()
        };
        let mut small = HashMap::new();
        for (name, t) in &tensors {
            let mut name = name.clone();
            if let Some(rest) = name.strip_prefix("encoder.layer.") {
                let (l, tail) = rest.split_once('.').unwrap();
                let Some(new) = profile.layers.iter().position(|&x| x.to_string() == l) else {
                    continue;
                };
                name = format!("encoder.layer.{new}.{tail}");
            }
            let mut t = t.clone();
            for (dim, &size) in t.dims().to_vec().iter().enumerate() {
                let keep = match size {
                    16 => 8,
                    32 => 16,
                    _ => size,
                };
                t = t.narrow(dim, 0, keep).unwrap();
            }
            small.insert(name, t);
        }
        let small = BertModel::from_tensors(small, &small_cfg).unwrap();
        let seqs = tiny_seqs();
        let a = parent.forward_all(&seqs, &profile, 3).unwrap();
        let b = small
            .forward_all(&seqs, &Profile::full(&small_cfg), 3)
            .unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.len(), 8);
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
    }
}
