//! Fine-tuning options (`train --init-head`, `--backbone-lr-scale`, `--layer-decay`,
//! `--warmup-epochs`, `--weight-decay`, `--patience`, `--bn`): what a run needs to fine-tune an
//! ImageNet backbone on radiographs without wrecking its features in the first steps.
//!
//! - **LP-FT** (Kumar et al., ICLR 2022): the head starts from a frozen run's trained head, not
//!   a random one ([`load_head`]).
//! - **Learning rates per parameter group** ([`LrGroups`]): the head at the run's rate, the
//!   backbone at a fraction of it, and optionally each earlier block at a further fraction
//!   (layer-wise decay), through Burn's per-parameter learning rates
//!   ([`ModuleLearningRate`]).
//! - **Warm-up**, then the run's schedule ([`lr_at`]); **decoupled weight decay** (AdamW, in
//!   [`crate::machinery::adam`]); **early stopping** on validation macro-F1.
//! - **Batch norm** trained, or frozen: its statistics fixed at ImageNet's and its scale and
//!   shift not trained ([`freeze_batch_norms`]).

use super::config::*;
use anyhow::{Context, Result, bail};
use burn::module::{Flag, Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use pneumoscope::arch::ArchSpec;
use pneumoscope::model::{Classifier, Head};
use std::path::{Path, PathBuf};

/// The learning rate at `step` (0-based) of `total`: a linear warm-up over the first `warmup`
/// steps (from `base/warmup` to `base`), then `schedule` over the rest.
pub fn lr_at(schedule: Schedule, base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        base * (step + 1) as f64 / warmup as f64
    } else {
        schedule.lr(base, step - warmup, total.saturating_sub(warmup))
    }
}

/// Learning-rate multipliers per parameter group, by the parameter's path in the
/// [`Classifier`]: the last group a parameter matches gives its multiplier (Burn's rule).
#[derive(Clone)]
pub struct LrGroups {
    groups: Vec<(ParamGroup, f64)>,
}

impl LrGroups {
    /// The groups of `cfg` for a classifier of `spec` whose backbone has `blocks` blocks
    /// (`None`: not split into blocks). One group of multiplier 1 when nothing is set.
    pub fn new(cfg: &FineTuning, spec: &ArchSpec, blocks: Option<usize>) -> Result<Self> {
        // Burn's `ParamGroupError` is not a `std::error::Error`: its message is taken out.
        let regex = |r: String| {
            ParamGroup::from_regex(&r).map_err(|e| match e {
                burn::module::ParamGroupError::InvalidPatternError(m) => {
                    anyhow::anyhow!("parameter group {r}: {m}")
                }
            })
        };
        let scale = cfg.backbone_lr_scale;
        let mut groups = vec![(ParamGroup::all(), 1.0)];
        if scale != 1.0 || cfg.layer_decay != 1.0 {
            groups.push((regex(r"^backbone(\.|$)".into())?, scale));
        }
        if cfg.layer_decay != 1.0 {
            let Some(n) = blocks else {
                bail!(
                    "--layer-decay: {} is not split into blocks here; layer-wise decay supports \
                     the EfficientNet-Lite architectures",
                    spec.name
                );
            };
            let d = cfg.layer_decay;
            groups.push((
                regex(r"^backbone\.[A-Za-z]+\.(conv_stem|bn0)(\.|$)".into())?,
                scale * d.powi(n as i32),
            ));
            for i in 0..n {
                groups.push((
                    regex(format!(r"^backbone\.[A-Za-z]+\.blocks\.{i}(\.|$)"))?,
                    scale * d.powi((n - 1 - i) as i32),
                ));
            }
        }
        Ok(Self { groups })
    }

    /// Each parameter's rate when the run's rate is `lr`.
    pub fn at(&self, lr: f64) -> ModuleLearningRate {
        let mut groups = self.groups.iter();
        let (_, m) = groups
            .next()
            .expect("the first group takes every parameter");
        let mut s = ModuleLrScheduler::new(lr * m);
        for (g, m) in groups {
            s = s.with_group(g.clone(), lr * m);
        }
        s.step()
    }
}

/// Collects the ids of every parameter and training flag inside a batch-norm layer.
#[derive(Default)]
struct BatchNormIds {
    depth: usize,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for BatchNormIds {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if self.depth > 0 || container_type == "Struct:BatchNorm" {
            self.depth += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.depth > 0 {
            self.ids.push(param.id);
        }
    }

    fn visit_flag(&mut self, flag: &Param<Flag>) {
        if self.depth > 0 {
            self.ids.push(flag.id);
        }
    }
}

/// `module` with every batch-norm layer frozen (Burn's `freeze_group`): running statistics
/// used and never updated, scale and shift without gradients. Returns it and how many
/// parameters and flags were frozen.
pub fn freeze_batch_norms<M: Module>(module: M) -> (M, usize) {
    let mut v = BatchNormIds::default();
    module.visit(&mut v);
    let n = v.ids.len();
    (module.freeze_group(ParamGroup::from_ids(v.ids)), n)
}

/// The `model.bpk` a run's `--init-head` names for `fold` (see [`FineTuning::init_head`]),
/// checked against the run: same architecture, and for a fold the same fold, else its head
/// saw this fold's validation patients.
pub fn head_source(from: &Path, arch: &str, fold: Option<Fold>) -> Result<PathBuf> {
    let run = if from.is_file() {
        return Ok(from.to_path_buf());
    } else if let Some(f) = fold
        && from.join(format!("fold-{}", f.index)).is_dir()
    {
        from.join(format!("fold-{}", f.index))
    } else {
        from.to_path_buf()
    };
    let model = run.join("model.bpk");
    if !model.is_file() {
        bail!(
            "--init-head {}: no finished run there ({} is missing); train the frozen run first",
            from.display(),
            model.display()
        );
    }
    let cfg_path = run.join("config.json");
    let theirs: TrainConfig = crate::machinery::fsutil::read_json(&cfg_path)
        .context("--init-head: its run's configuration")?;
    if theirs.arch != arch {
        bail!(
            "--init-head {}: that run trained {}, this one trains {arch}",
            run.display(),
            theirs.arch
        );
    }
    if theirs.fold != fold {
        bail!(
            "--init-head {}: that run was validated on {}, this one on {}; a head trained on \
             other folds has seen this run's validation patients",
            run.display(),
            describe(theirs.fold),
            describe(fold)
        );
    }
    Ok(model)
}

fn describe(f: Option<Fold>) -> String {
    match f {
        None => "the manifest's val split".into(),
        Some(f) => format!("fold {} of {} (seed {})", f.index, f.of, f.seed),
    }
}

/// The head of the classifier saved in `model` (a run's `model.bpk` of architecture `spec`).
pub fn load_head(model: &Path, spec: &ArchSpec, device: &Device) -> Result<Head> {
    let bytes = std::fs::read(model).with_context(|| format!("cannot read {}", model.display()))?;
    let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .with_context(|| format!("{}: unreadable model record", model.display()))?;
    let c = Classifier::new(spec, device)
        .try_load_record(rec)
        .with_context(|| format!("{}: not a {} classifier", model.display(), spec.name))?;
    Ok(c.head)
}

/// Peak resident memory of this process so far, in bytes (Linux; `None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;
    use pneumoscope::arch;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Every parameter of a classifier with its path.
    #[derive(Default)]
    struct Paths {
        path: Vec<String>,
        out: Vec<(String, ParamId)>,
    }

    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.out.push((self.path.join("."), p.id));
        }
    }

    /// The groups give the head the run's rate, the backbone its fraction and, with layer
    /// decay, each block its own, by the parameters' real paths in a Lite0 classifier.
    #[test]
    fn groups_follow_the_parameter_paths() {
        let spec = arch::find("efficientnet_lite0").unwrap();
        let device = Device::flex();
        let c = Classifier::new(&spec, &device);
        let n = c.backbone.block_count().unwrap();
        let cfg = FineTuning {
            backbone_lr_scale: 0.1,
            layer_decay: 0.5,
            ..FineTuning::default()
        };
        let lrs = LrGroups::new(&cfg, &spec, Some(n)).unwrap().at(1e-3);
        let mut v = Paths::default();
        c.visit(&mut v);
        let mut seen = [0usize; 4];
        for (path, id) in &v.out {
            let lr = lrs.lr_from_param(*id, Some(path));
            let want = if path.starts_with("head") {
                seen[0] += 1;
                1e-3
            } else if path.contains(".blocks.") {
                seen[1] += 1;
                let i: i32 = path
                    .split(".blocks.")
                    .nth(1)
                    .unwrap()
                    .split('.')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                1e-4 * 0.5f64.powi(n as i32 - 1 - i)
            } else if path.contains("conv_stem") || path.contains(".bn0") {
                seen[2] += 1;
                1e-4 * 0.5f64.powi(n as i32)
            } else {
                seen[3] += 1;
                1e-4
            };
            assert!((lr - want).abs() < 1e-15, "{path}: {lr} vs {want}");
        }
        assert!(
            seen.iter().all(|&k| k > 0),
            "every kind of group met: {seen:?}"
        );
        // Nothing set: one rate for all.
        let one = LrGroups::new(&FineTuning::default(), &spec, Some(n))
            .unwrap()
            .at(0.5);
        assert!(
            v.out
                .iter()
                .all(|(p, id)| one.lr_from_param(*id, Some(p)) == 0.5)
        );
        // Layer decay needs blocks.
        let resnet = arch::find("resnet50").unwrap();
        let err = LrGroups::new(&cfg, &resnet, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--layer-decay") && err.contains("resnet50"),
            "{err}"
        );
    }

    /// One optimizer step with the backbone's rate at 0 and its batch norms frozen: every
    /// backbone value, running statistics included, stays bit for bit the same, while the
    /// head moves (weight decay on, which must not touch a parameter of rate 0 either).
    #[test]
    fn a_group_at_rate_zero_stays_bit_identical() {
        let spec = arch::find("efficientnet_lite0").unwrap();
        let device = Device::flex().autodiff();
        let model = Classifier::new(&spec, &device).train();
        let (model, frozen) = freeze_batch_norms(model);
        assert!(frozen > 0);
        let blocks = model.backbone.block_count();
        let cfg = FineTuning {
            backbone_lr_scale: 0.0,
            weight_decay: 0.05,
            bn: BatchNorm::Frozen,
            ..FineTuning::default()
        };
        let groups = LrGroups::new(&cfg, &spec, blocks).unwrap();
        let before = model.clone().valid();
        let mut optim =
            crate::machinery::adam::optimizer(cfg.weight_decay, pneumoscope::arch::Operations::Own);
        let x = Tensor::<4>::random(
            [2, 3, 224, 224],
            burn::tensor::Distribution::Default,
            &device,
        );
        let mut m = model;
        for _ in 0..2 {
            let loss = m.forward(x.clone()).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            m = optim.step(groups.at(1e-2), m, grads);
        }
        let after = m.valid();
        let bytes = |c: &Classifier| c.backbone.clone().into_record().into_bytes().unwrap();
        assert_eq!(bytes(&before), bytes(&after), "the backbone moved");
        let head = |c: &Classifier| values(c.head.fc2.as_ref().unwrap().weight.val());
        assert_ne!(head(&before), head(&after), "the head did not move");
    }

    #[test]
    fn warm_up_then_the_schedule() {
        let lr = |s| lr_at(Schedule::Cosine, 1.0, s, 10, 2);
        assert_eq!(lr(0), 0.5);
        assert_eq!(lr(1), 1.0);
        assert_eq!(lr(2), 1.0);
        assert!((lr(6) - 0.5).abs() < 1e-12);
        assert_eq!(lr_at(Schedule::Constant, 0.3, 5, 10, 0), 0.3);
    }
}
