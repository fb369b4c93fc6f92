//! `pneumoscope train`: the paper's transfer-learning protocol (`frozen`: backbone frozen, its
//! features computed once and cached, only the head trained) and full fine-tuning
//! (`finetune`), with class-imbalance handling, best epoch by validation macro-F1, a verified
//! checkpoint every epoch and `--resume`.
//!
//! The rooms of a run, calls going down: [`run`] prepares it, [`modes`] trains the module of its
//! mode through the [`epoch`] loop, which feeds [`batches`] and saves [`progress`];
//! [`features`] caches backbone outputs; [`config`] and [`tuning`] hold the settings and the
//! fine-tuning machinery.

mod batches;
pub mod config;
mod epoch;
mod features;
mod modes;
mod progress;
mod run;
pub mod tuning;

use crate::machinery::fsutil::{read_json, write_atomic};
use anyhow::{Context, Result, bail};
pub use batches::run_rows;
pub use config::*;
pub use features::{Extract, FeatureSource, extract_features, predict_rows};
pub use progress::EpochLog;
use run::{Run, Timing};
use std::path::Path;

/// Runs (or resumes) a training run in `run`.
pub fn train(cfg: TrainConfig, run: &Path, resume: bool) -> Result<()> {
    let cfg = settle_config(cfg, run, resume)?;
    let (ctx, loaded) = Run::prepare(&cfg, run)?;
    let mut timing = Timing::new();
    let (model, val_probs) = match cfg.mode {
        Mode::Frozen => ctx.frozen(loaded.backbone, &mut timing)?,
        Mode::Partial => ctx.partial(loaded.backbone, &mut timing)?,
        Mode::Finetune => ctx.finetune(loaded.backbone, &mut timing)?,
    };
    ctx.finish(model, val_probs, timing, &loaded.source)
}

/// The run's settings, written to `RUN/config.json`: the given ones for a new run; for a
/// resumed one those it was started with, where only the number of epochs may change.
fn settle_config(cfg: TrainConfig, run: &Path, resume: bool) -> Result<TrainConfig> {
    let cfg_path = run.join("config.json");
    let cfg = if resume {
        let saved: TrainConfig = read_json(&cfg_path)
            .with_context(|| format!("--resume: {} is not a run folder", run.display()))?;
        let epochs = cfg.optimisation.epochs;
        if saved.optimisation.epochs != epochs {
            eprintln!(
                "resuming with {epochs} epochs (was {})",
                saved.optimisation.epochs
            );
        }
        TrainConfig {
            optimisation: Optimisation {
                epochs,
                ..saved.optimisation
            },
            ..saved
        }
    } else {
        if run.join("state.json").exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                run.display()
            );
        }
        cfg
    };
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    write_atomic(&cfg_path, serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    Ok(cfg)
}
