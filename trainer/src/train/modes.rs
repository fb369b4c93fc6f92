//! The three modes of a run: `frozen` (cached features, head trained), `partial` (the last
//! blocks trained on cached inputs) and `finetune` (every layer), each handing its module to
//! the epoch loop.

use super::batches::*;
use super::config::*;
use super::features::*;
use super::run::*;
use super::tuning::{self, *};
use crate::data::augment::Augment;
use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use pneumoscope::arch::{self, ArchSpec};
use pneumoscope::model::{Classifier, Head};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;

/// A fresh head, with the given dropout probability instead of the paper's.
pub(super) fn new_head(spec: &ArchSpec, dropout: Option<f64>, device: &Device) -> Head {
    let mut head = Head::new(spec, device);
    if let Some(p) = dropout {
        head.dropout = burn::nn::DropoutConfig::new(p).init();
    }
    head
}

/// A classifier of `backbone` and its head on the main training device, with autodiff: a new
/// head, or under LP-FT (`--init-head`) the frozen run's trained head; the backbone's batch
/// norms frozen under `--bn frozen`.
pub(super) fn trainable(
    backbone: arch::Backbone,
    spec: &ArchSpec,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<Classifier> {
    let head = match &cfg.tuning.init_head {
        Some(from) => {
            let model = tuning::head_source(from, &cfg.arch, cfg.fold)?;
            let mut head = tuning::load_head(&model, spec, device)?;
            if let Some(p) = cfg.dropout {
                head.dropout = burn::nn::DropoutConfig::new(p).init();
            }
            eprintln!("LP-FT: the head starts from {}", model.display());
            head
        }
        None => new_head(spec, cfg.dropout, device),
    };
    let model = Classifier::from_parts(backbone, head).fork(device).train();
    Ok(match cfg.tuning.bn {
        BatchNorm::Train => model,
        BatchNorm::Frozen => {
            let (backbone, _) = tuning::freeze_batch_norms(model.backbone);
            Classifier { backbone, ..model }
        }
    })
}

impl Run<'_> {
    /// The frozen part's output for the run: `cfg.views` views of each training image (view 0
    /// the evaluation transform, the others augmentations drawn once) and view 0 of the
    /// validation images. Each view is computed once for every row of train + val (the
    /// *pool*, the same for every fold of a cross-validation) and kept in the feature cache
    /// (`cfg.feature_cache`, else `RUN/features/`) as `{tag}v{v}.f32`. Records the extraction
    /// time in `timing`.
    pub(super) fn cached_inputs(
        &self,
        what: Extract,
        tag: &str,
        backbone: &arch::Backbone,
        timing: &mut Timing,
    ) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        let (cfg, spec, device) = (self.cfg, &self.spec, &self.device);
        let dim = extract_dim(what, backbone, spec, device);
        let dir = cfg
            .feature_cache
            .clone()
            .unwrap_or_else(|| self.dir.join("features"));
        let mut pool: Vec<usize> = self
            .train_rows
            .iter()
            .chain(&self.val_rows)
            .copied()
            .collect();
        pool.sort_unstable();
        pool.dedup();
        let at: std::collections::HashMap<usize, usize> =
            pool.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        let gather = |f: &[f32], rows: &[usize]| -> Vec<f32> {
            rows.iter()
                .flat_map(|i| f[at[i] * dim..(at[i] + 1) * dim].iter().copied())
                .collect()
        };
        let src = FeatureSource {
            backbone,
            spec,
            squares: &self.squares,
            device,
        };
        let t0 = Instant::now();
        let mut fresh = 0.0;
        let mut train_views = Vec::new();
        let mut val = Vec::new();
        for v in 0..cfg.views.max(1) {
            let aug = cfg
                .augment
                .as_ref()
                .filter(|_| v > 0)
                .map(|a| (a, cfg.optimisation.seed.wrapping_add(v as u64)));
            let t = Instant::now();
            let label = format!("{tag}view {v}").replace('-', " ");
            let (f, hit) = features_cached(&dir, &format!("{tag}v{v}"), pool.len(), dim, || {
                extract_features(what, &src, &pool, aug, &label)
            })?;
            if !hit {
                fresh += t.elapsed().as_secs_f64();
            }
            if v == 0 {
                val = gather(&f, &self.val_rows);
            }
            train_views.push(gather(&f, &self.train_rows));
        }
        timing.insert("feature_extraction_seconds".into(), fresh.into());
        timing.insert(
            "feature_extraction_wall_seconds".into(),
            t0.elapsed().as_secs_f64().into(),
        );
        Ok((train_views, val))
    }
}

impl<'a> Run<'a> {
    /// The paper's protocol: the backbone's head inputs cached, only the head trained.
    pub(super) fn frozen(&self, backbone: arch::Backbone, timing: &mut Timing) -> Result<Trained> {
        let (spec, device) = (&self.spec, &self.device);
        let dim = spec.head_dim();
        let shape = spec.head_shape;
        let (train_views, val_feats) =
            self.cached_inputs(Extract::HeadInput, "", &backbone, timing)?;
        let head = new_head(spec, self.cfg.dropout, self.replicas.main());
        let val_x = Tensor::<2>::from_data(
            TensorData::new(val_feats, [self.val_rows.len(), dim]),
            device,
        );
        let groups = LrGroups::new(&FineTuning::default(), spec, None)?;
        let head = self.train_loop(
            head,
            &groups,
            timing,
            |m: &Head, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                let x = pick_views(&train_views, batch, dim, rng);
                let x = Tensor::<2>::from_data(TensorData::new(x, [batch.len(), dim]), d);
                self.batch_loss(m.forward_rows(x, shape), batch, d)
            },
            |m: &Head| {
                probs_rows(to_vec(softmax(
                    m.valid().forward_rows(val_x.clone(), shape),
                    1,
                )))
            },
        )?;
        // The validation probabilities from the cached features: the backbone is not run
        // again.
        let val_probs = probs_rows(to_vec(softmax(
            head.valid().fork(device).forward_rows(val_x, shape),
            1,
        )));
        let model = Classifier::from_parts(backbone, head.valid().fork(device));
        Ok((model, Some(val_probs)))
    }

    /// Partial fine-tuning: the input of the first trained block cached, the last blocks, the
    /// head convolution and the head trained.
    pub(super) fn partial(&self, backbone: arch::Backbone, timing: &mut Timing) -> Result<Trained> {
        let (spec, device) = (&self.spec, &self.device);
        let blocks = backbone
            .block_count()
            .expect("checked by prepare: an architecture with blocks");
        let tune = self.cfg.tune_blocks.unwrap_or(DEFAULT_TUNE_BLOCKS);
        if tune == 0 || tune > blocks {
            bail!(
                "--tune-blocks {tune}: {} has {blocks} blocks; choose 1 to {blocks}",
                spec.name
            );
        }
        let cut = blocks - tune;
        let what = Extract::InputOfBlock(cut);
        let shape = extract_shape(what, &backbone, spec, device);
        let dim: usize = shape.iter().product();
        let (train_views, val_feats) =
            self.cached_inputs(what, &format!("block{cut}-"), &backbone, timing)?;
        let model = trainable(backbone, spec, self.cfg, self.replicas.main())?;
        let groups = LrGroups::new(&self.cfg.tuning, spec, Some(blocks))?;
        let rows4 = |x: Vec<f32>, n: usize, d: &Device| {
            Tensor::<4>::from_data(TensorData::new(x, [n, shape[0], shape[1], shape[2]]), d)
        };
        let model = self.train_loop(
            model,
            &groups,
            timing,
            |m: &Classifier, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                let x = pick_views(&train_views, batch, dim, rng);
                let map = m
                    .backbone
                    .feature_map_from(rows4(x, batch.len(), d), cut, m.operations)
                    .expect("a backbone with blocks");
                self.batch_loss(m.logits_from_map(map), batch, d)
            },
            |m: &Classifier| {
                let v = m.valid().fork(device);
                let mut out = Vec::new();
                for chunk in val_feats.chunks(64 * dim) {
                    let x = rows4(chunk.to_vec(), chunk.len() / dim, device);
                    let map = v
                        .backbone
                        .feature_map_from(x, cut, v.operations)
                        .expect("blocks");
                    out.extend(probs_rows(to_vec(softmax(v.logits_from_map(map), 1))));
                }
                out
            },
        )?;
        Ok((model.valid().fork(device), None))
    }

    /// Full fine-tuning: every layer trained on augmented images.
    pub(super) fn finetune(
        &self,
        backbone: arch::Backbone,
        timing: &mut Timing,
    ) -> Result<Trained> {
        let (spec, device) = (&self.spec, &self.device);
        let blocks = backbone.block_count();
        let model = trainable(backbone, spec, self.cfg, self.replicas.main())?;
        let groups = LrGroups::new(&self.cfg.tuning, spec, blocks)?;
        let aug = self.cfg.augment.unwrap_or_else(Augment::none);
        let val_imgs: Vec<Vec<f32>> = self
            .val_rows
            .par_iter()
            .map(|&i| pneumoscope::preprocess::normalize_gray(&self.squares.image(i), &spec.input))
            .collect();
        let model = self.train_loop(
            model,
            &groups,
            timing,
            |m: &Classifier, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                let seeds: Vec<u64> = batch.iter().map(|_| rng.random()).collect();
                let imgs: Vec<Vec<f32>> = batch
                    .par_iter()
                    .zip(seeds)
                    .map(|(&i, s)| {
                        aug.apply(
                            &self.squares.image(self.train_rows[i]),
                            &spec.input,
                            &mut ChaCha8Rng::seed_from_u64(s),
                        )
                    })
                    .collect();
                let x = stack(&imgs, spec.input.crop, d);
                self.batch_loss(m.forward(x), batch, d)
            },
            |m: &Classifier| {
                let v = m.valid().fork(device);
                let mut out = Vec::new();
                for chunk in val_imgs.chunks(32) {
                    out.extend(probs_rows(to_vec(softmax(
                        v.forward(stack(chunk, spec.input.crop, device)),
                        1,
                    ))));
                }
                out
            },
        )?;
        Ok((model.valid().fork(device), None))
    }
}
