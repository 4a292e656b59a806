//! The trained checkpoint a run ends with: the student's weights beside the parent's files,
//! and an `mrl.json` naming the router's profile per budget.

use mrl_encoder::manifest::{BudgetChoice, Manifest};
use mrl_encoder::Profile;

use super::recipe::TrainConfig;
use crate::optim::Params;
use crate::{Result, TrainerError};

/// A budget's profile name in the output manifest: 0.5 → `b50`.
pub(super) fn budget_name(budget: f64) -> String {
    format!("b{}", (budget * 100.0).round())
}

/// The trained checkpoint: the parent's files, the student's weights, and an `mrl.json`
/// listing the router's profile per budget, the nested dims and the recipe.
pub(super) fn write_output(
    cfg: &TrainConfig,
    parent: &Manifest,
    bert: &mrl_encoder::BertConfig,
    params: &Params,
    profiles: &[(f64, Profile)],
) -> Result<()> {
    let tensors = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let mut named = vec![crate::calibrate::named(
        "full".into(),
        Profile::full(bert),
        bert,
        None,
    )];
    let mut budgets = Vec::new();
    for (budget, p) in profiles {
        let name = budget_name(*budget);
        budgets.push(BudgetChoice {
            budget: *budget,
            profile: name.clone(),
        });
        named.push(crate::calibrate::named(name, p.clone(), bert, None));
    }
    let manifest = Manifest {
        nested_dims: cfg.loss.nested_dims.clone(),
        profiles: named,
        budgets,
        provenance: serde_json::json!({
            "trained_from": cfg.parent,
            "recipe": cfg,
            "parent_provenance": parent.provenance,
        }),
        ..parent.clone()
    };
    let model_dir = cfg.out.join("model");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(|e| TrainerError::io(&model_dir, e))?;
    }
    crate::calibrate::write_checkpoint(&cfg.parent, &model_dir, &tensors, &manifest)
}
