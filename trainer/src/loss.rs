//! Training losses on candle tensors, built only from ops that have a backward pass (candle's
//! fused softmax and layer norm have none): InfoNCE on every nested prefix, distillation of
//! in-batch similarity distributions from a frozen teacher, and the router's cost loss.

use candle_core::{DType, Device, Result, Tensor, D};

/// Rows scaled to unit length; the epsilon keeps a zero row finite.
pub fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// `log softmax` over the last axis. The row maximum only shifts for stability, so it is
/// detached: the result's gradient does not depend on it.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    log_softmax(x)?.exp()
}

/// A `[rows, cols]` mask with ones on the diagonal (`i == j`).
fn diagonal_mask(rows: usize, cols: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; rows * cols];
    for i in 0..rows.min(cols) {
        m[i * cols + i] = 1.0;
    }
    Tensor::from_vec(m, (rows, cols), device)?.to_dtype(dtype)
}

/// InfoNCE with in-batch negatives: row `i` of `queries` [B, D] belongs with row `i` of
/// `docs` [B + N, D]; every other row (the other positives and `N` hard negatives appended
/// after them) is a negative. Rows are normalised inside; `temperature` scales the cosines.
pub fn info_nce(queries: &Tensor, docs: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, _) = queries.dims2()?;
    let (n, _) = docs.dims2()?;
    if n < b {
        candle_core::bail!(
            "info_nce: {n} documents for {b} queries; each query needs its positive"
        );
    }
    let q = normalize_rows(queries)?;
    let d = normalize_rows(docs)?;
    let logits = (q.matmul(&d.t()?)? / temperature)?;
    let mask = diagonal_mask(b, n, logits.dtype(), logits.device())?;
    let positive = (log_softmax(&logits)? * mask)?.sum(D::Minus1)?;
    positive.mean_all()?.neg()
}

/// InfoNCE on every nested prefix `dims[k]` of the embeddings (each prefix re-normalised),
/// averaged with `weights` (one per dim).
pub fn matryoshka_info_nce(
    queries: &Tensor,
    docs: &Tensor,
    dims: &[usize],
    weights: &[f64],
    temperature: f64,
) -> Result<Tensor> {
    if dims.is_empty() || dims.len() != weights.len() {
        candle_core::bail!(
            "matryoshka_info_nce: {} dims, {} weights",
            dims.len(),
            weights.len()
        );
    }
    let total: f64 = weights.iter().sum();
    let mut loss: Option<Tensor> = None;
    for (&dim, &w) in dims.iter().zip(weights) {
        let term = (info_nce(
            &queries.narrow(1, 0, dim)?,
            &docs.narrow(1, 0, dim)?,
            temperature,
        )? * (w / total))?;
        loss = Some(match loss {
            Some(l) => (l + term)?,
            None => term,
        });
    }
    Ok(loss.expect("dims is not empty; checked above"))
}

/// KL(teacher ‖ student) between the in-batch similarity distributions (each row a softmax of
/// cosines / `temperature`), averaged over rows. The teacher is detached: only the student
/// learns to keep the parent's geometry, so small profiles stay searchable against a
/// full-profile index.
pub fn similarity_distillation(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let sims = |x: &Tensor| -> Result<Tensor> {
        let n = normalize_rows(x)?;
        n.matmul(&n.t()?)? / temperature
    };
    kl_rows(&sims(teacher)?, &sims(student)?)
}

/// `KL(softmax(teacher) ‖ softmax(student))` of two `[n, m]` matrices of logits, row by row,
/// averaged over rows; the teacher is detached.
pub fn kl_rows(teacher: &Tensor, student: &Tensor) -> Result<Tensor> {
    let log_t = log_softmax(&teacher.detach())?;
    let log_s = log_softmax(student)?;
    let kl = (log_t.exp()? * (log_t - log_s)?)?.sum(D::Minus1)?;
    kl.mean_all()
}

/// Matryoshka-Adaptor's unsupervised losses (Yoon et al., "Matryoshka-Adaptor", EMNLP 2024,
/// §3.1) on one batch at one nested size: how far the student's similarities `student`
/// (`[n, m]`, e.g. cosines of the `k`-dim prefixes) are from the teacher's `teacher` (the
/// same shape, e.g. full-width cosines; detached). `pairwise` weighs the mean absolute
/// difference over every entry (the diagonal too: between two sets of vectors it is each
/// text's cosine to its own teacher vector), `topk` the mean over each row's `k` largest teacher entries
/// off the diagonal (its nearest neighbours, what a search returns). Zero when the student
/// reproduces the teacher; the gradient reaches `student` wherever it does not.
///
/// Errors: shapes that differ, or `k` not below the number of columns.
pub fn similarity_structure(
    student: &Tensor,
    teacher: &Tensor,
    k: usize,
    pairwise: f64,
    topk: f64,
) -> Result<Tensor> {
    let (n, m) = teacher.dims2()?;
    if student.dims2()? != (n, m) || k == 0 || k >= m {
        candle_core::bail!(
            "similarity_structure: student {:?}, teacher {:?}, k {k}",
            student.dims(),
            teacher.dims()
        );
    }
    let teacher = teacher.detach();
    let gap = (student - &teacher)?.abs()?;
    let values: Vec<Vec<f32>> = teacher.to_dtype(DType::F32)?.to_vec2()?;
    let mut mask = vec![0f32; n * m];
    for (i, row) in values.iter().enumerate() {
        let mut order: Vec<usize> = (0..m).filter(|&j| j != i).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for &j in order.iter().take(k) {
            mask[i * m + j] = 1.0;
        }
    }
    let mask = Tensor::from_vec(mask, (n, m), teacher.device())?.to_dtype(gap.dtype())?;
    let near = ((&gap * &mask)?.sum_all()? / (n * k) as f64)?;
    (gap.mean_all()? * pairwise)? + (near * topk)?
}

/// |cost − target|, the router's pull toward its budget.
pub fn cost_loss(cost: &Tensor, target: f64) -> Result<Tensor> {
    (cost - target)?.abs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The same InfoNCE written with plain f64 arithmetic, for hand checks.
    fn reference(q: &[[f64; 3]], d: &[[f64; 3]], t: f64) -> f64 {
        let norm = |v: &[f64; 3]| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            [v[0] / n, v[1] / n, v[2] / n]
        };
        let mut total = 0.0;
        for (i, qi) in q.iter().enumerate() {
            let qi = norm(qi);
            let logits: Vec<f64> = d
                .iter()
                .map(|dj| {
                    let dj = norm(dj);
                    (qi[0] * dj[0] + qi[1] * dj[1] + qi[2] * dj[2]) / t
                })
                .collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            total += lse - logits[i];
        }
        total / q.len() as f64
    }

    #[test]
    fn info_nce_value_and_gradient_match_a_hand_computation() {
        let q = [[1.0, 0.2, -0.3], [0.1, 0.9, 0.4]];
        let d = [[0.8, 0.1, -0.1], [0.3, 1.0, 0.2], [-0.5, 0.2, 0.9]];
        let t = 0.1;
        let dev = Device::Cpu;
        let flat = |m: &[[f64; 3]]| m.iter().flatten().copied().collect::<Vec<f64>>();
        let qv = Var::from_vec(flat(&q), (2, 3), &dev).unwrap();
        let dt = Tensor::from_vec(flat(&d), (3, 3), &dev).unwrap();
        let loss = info_nce(qv.as_tensor(), &dt, t).unwrap();
        let value = loss.to_scalar::<f64>().unwrap();
        assert!((value - reference(&q, &d, t)).abs() < 1e-10, "{value}");

        let grads = loss.backward().unwrap();
        let g = grads.get(&qv).unwrap().to_vec2::<f64>().unwrap();
        let h = 1e-6;
        for i in 0..2 {
            for j in 0..3 {
                let (mut up, mut down) = (q, q);
                up[i][j] += h;
                down[i][j] -= h;
                let fd = (reference(&up, &d, t) - reference(&down, &d, t)) / (2.0 * h);
                assert!(
                    (g[i][j] - fd).abs() < 1e-6,
                    "({i},{j}): {} vs {fd}",
                    g[i][j]
                );
            }
        }
    }

    #[test]
    fn matryoshka_loss_weights_each_prefix() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f64, 1.0, (4, 8), &dev).unwrap();
        let d = Tensor::randn(0f64, 1.0, (4, 8), &dev).unwrap();
        let at = |dim: usize| {
            info_nce(
                &q.narrow(1, 0, dim).unwrap(),
                &d.narrow(1, 0, dim).unwrap(),
                0.05,
            )
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
        };
        let both = matryoshka_info_nce(&q, &d, &[2, 8], &[1.0, 3.0], 0.05)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((both - (at(2) + 3.0 * at(8)) / 4.0).abs() < 1e-10);
        assert!(matryoshka_info_nce(&q, &d, &[2], &[], 0.05).is_err());
        assert!(info_nce(&q, &d.narrow(0, 0, 3).unwrap(), 0.05).is_err());
    }

    #[test]
    fn similarity_structure_is_zero_for_the_teacher_and_has_a_gradient_otherwise() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (6, 8), &dev).unwrap();
        let n = normalize_rows(&x).unwrap();
        let teacher = n.matmul(&n.t().unwrap()).unwrap();
        let same = similarity_structure(&teacher, &teacher, 2, 1.0, 1.0).unwrap();
        assert_eq!(same.to_scalar::<f64>().unwrap(), 0.0);
        // A student that sees only a 3-dim prefix of the same rows.
        let s = Var::from_tensor(&x.narrow(1, 0, 3).unwrap()).unwrap();
        let sn = normalize_rows(s.as_tensor()).unwrap();
        let student = sn.matmul(&sn.t().unwrap()).unwrap();
        let loss = similarity_structure(&student, &teacher, 2, 1.0, 1.0).unwrap();
        assert!(loss.to_scalar::<f64>().unwrap() > 0.0);
        let g = loss.backward().unwrap();
        let norm = g.get(&s).unwrap().sqr().unwrap().sum_all().unwrap();
        assert!(norm.to_scalar::<f64>().unwrap() > 0.0);
        // The top-k term alone is the mean gap over each row's two nearest: checked by hand.
        let (t, st): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
            (teacher.to_vec2().unwrap(), student.to_vec2().unwrap());
        let mut want = 0.0;
        for i in 0..6 {
            let mut order: Vec<usize> = (0..6).filter(|&j| j != i).collect();
            order.sort_by(|&a, &b| t[i][b].total_cmp(&t[i][a]));
            want += order[..2]
                .iter()
                .map(|&j| (st[i][j] - t[i][j]).abs())
                .sum::<f64>();
        }
        let near = similarity_structure(&student, &teacher, 2, 0.0, 1.0).unwrap();
        assert!((near.to_scalar::<f64>().unwrap() - want / 12.0).abs() < 1e-9);
        assert!(similarity_structure(&student, &teacher, 6, 1.0, 1.0).is_err());
    }

    #[test]
    fn distillation_is_zero_for_the_teacher_and_pulls_the_student() {
        let dev = Device::Cpu;
        let t = Tensor::randn(0f64, 1.0, (5, 6), &dev).unwrap();
        let same = similarity_distillation(&t, &t, 0.05).unwrap();
        assert!(same.to_scalar::<f64>().unwrap().abs() < 1e-12);
        let s = Var::from_tensor(&Tensor::randn(0f64, 1.0, (5, 6), &dev).unwrap()).unwrap();
        let kl = similarity_distillation(s.as_tensor(), &t, 0.05).unwrap();
        assert!(kl.to_scalar::<f64>().unwrap() > 0.0);
        let g = kl.backward().unwrap();
        let norm = g.get(&s).unwrap().sqr().unwrap().sum_all().unwrap();
        assert!(norm.to_scalar::<f64>().unwrap() > 0.0);
    }
}
