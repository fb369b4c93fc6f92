//! The epoch loop every mode shares: batches, loss, optimiser steps with per-group learning
//! rates, validation, early stopping and a checkpoint after every epoch.

use super::batches::*;
use super::progress::*;
use super::run::*;
use super::tuning::{self, *};
use crate::metrics;
use anyhow::Result;
use burn::module::Module;
use burn::prelude::*;
use pneumoscope::NUM_CLASSES;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// A progress line every 20 steps where no progress bar is drawn (logs, CI): the step, its
/// loss, images per second and the time left.
pub(super) fn log_step(
    pb: &indicatif::ProgressBar,
    t_train: Instant,
    (epoch, step, steps): (usize, usize, usize),
    loss: f32,
    img_s: f64,
) {
    let done = pb.position().max(1) as f64;
    let left = pb.length().unwrap_or(0).saturating_sub(pb.position()) as f64;
    let eta = t_train.elapsed().as_secs_f64() / done * left;
    eprintln!(
        "epoch {epoch} step {step}/{steps}: loss {loss:.4} ({img_s:.1} img/s, ETA {:.0} min)",
        eta / 60.0
    );
}

impl<'a> Run<'a> {
    /// [`batch_loss`] of a batch of training rows.
    pub(super) fn batch_loss(&self, logits: Tensor<2>, batch: &[usize], d: &Device) -> Tensor<1> {
        batch_loss(logits, batch, &self.train_labels, &self.row_w, d)
    }

    /// The epoch loop every mode shares. `loss` runs one training batch (indices into the
    /// training rows) on a device; a step spreads the batch over the replicas' devices (see
    /// [`crate::machinery::parallel`]); `val_probs` gives validation probabilities; `groups` gives each
    /// parameter's share of the step's learning rate. A checkpoint is saved after every epoch;
    /// a resumed run starts after its newest one that verifies. Stops early after
    /// `--patience` epochs without a better validation macro-F1. Returns the best module (by
    /// validation macro-F1).
    pub(super) fn train_loop<M: Module>(
        &self,
        module: M,
        groups: &LrGroups,
        timing: &mut Timing,
        loss: impl Fn(&M, &[usize], &mut ChaCha8Rng, &Device) -> Tensor<1> + Sync,
        val_probs: impl Fn(&M) -> Vec<[f32; NUM_CLASSES]>,
    ) -> Result<M> {
        let cfg = self.cfg;
        let opt = &cfg.optimisation;
        let mut optim = crate::machinery::adam::optimizer(
            cfg.tuning.weight_decay,
            pneumoscope::arch::Operations::Own,
        );
        let (mut progress, mut module) = Progress::resume(self.dir, module, &mut optim)?;
        // A shard's share of a batch's loss: the sum of its rows' weights (the loss's
        // normaliser is the sum of the batch's weights).
        let row_w = &self.row_w;
        let shard_weight = |rows: &[usize]| -> f64 { rows.iter().map(|&i| row_w[i] as f64).sum() };
        let n = self.train_labels.len();
        let steps_per_epoch = n.div_ceil(opt.batch_size);
        let total_steps = opt.epochs * steps_per_epoch;
        let warmup = (cfg.tuning.warmup_epochs * steps_per_epoch as f64).round() as usize;
        let remaining = opt.epochs.saturating_sub(progress.state.epochs_done);
        let pb = crate::machinery::progress::bar((remaining * steps_per_epoch) as u64, "training");
        let t_train = Instant::now();
        for epoch in progress.state.epochs_done + 1..=opt.epochs {
            let state = &progress.state;
            if let Some(p) = cfg.tuning.patience
                && state.epochs_done >= state.best_epoch + p
            {
                crate::machinery::progress::println(
                    &pb,
                    format!(
                        "early stop: no better validation macro-F1 in the {p} epochs after epoch {}",
                        state.best_epoch
                    ),
                );
                timing.insert("stopped_early_after_epoch".into(), state.epochs_done.into());
                break;
            }
            let t0 = Instant::now();
            let epoch_seed = opt.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
            let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
            // The backend's generator (dropout masks) restarts each epoch too, so a resumed
            // run draws exactly what an uninterrupted one would.
            self.replicas.seed(epoch_seed);
            let order = epoch_order(&self.train_labels, cfg.imbalance, &mut rng);
            let mut total = 0.0;
            for (b, batch) in order.chunks(opt.batch_size).enumerate() {
                let step = (epoch - 1) * steps_per_epoch + b;
                let lr = tuning::lr_at(cfg.schedule, opt.lr, step, total_steps, warmup);
                let (lv, grads) =
                    self.replicas
                        .step(&module, batch, &mut rng, &loss, &shard_weight);
                total += lv as f64 * batch.len() as f64;
                module = optim.step(groups.at(lr), module, grads);
                pb.inc(1);
                if pb.is_hidden() && (b + 1) % 20 == 0 {
                    let rate = ((b + 1) * opt.batch_size) as f64 / t0.elapsed().as_secs_f64();
                    log_step(&pb, t_train, (epoch, b + 1, steps_per_epoch), lv, rate);
                }
            }
            let probs = val_probs(&module);
            let (acc, f1) = metrics::acc_f1(&metrics::confusion(&probs, &self.val_labels));
            let log = EpochLog {
                epoch,
                train_loss: total / n as f64,
                val_accuracy: acc,
                val_macro_f1: f1,
                seconds: t0.elapsed().as_secs_f64(),
            };
            crate::machinery::progress::println(
                &pb,
                format!(
                    "epoch {epoch:>3}/{}: loss {:.4}  val acc {:.4}  val macro-F1 {:.4}  ({:.1}s)",
                    opt.epochs, log.train_loss, acc, f1, log.seconds
                ),
            );
            progress.save(log, &module, &optim)?;
        }
        pb.finish_and_clear();
        timing.insert(
            "training_seconds_this_session".into(),
            t_train.elapsed().as_secs_f64().into(),
        );
        let state = &progress.state;
        timing.insert(
            "epoch_seconds".into(),
            serde_json::to_value(state.history.iter().map(|h| h.seconds).collect::<Vec<_>>())?,
        );
        timing.insert("best_epoch".into(), state.best_epoch.into());
        if let Some(b) = tuning::peak_rss_bytes() {
            timing.insert("peak_rss_bytes_this_session".into(), b.into());
        }
        progress.best(module)
    }
}
