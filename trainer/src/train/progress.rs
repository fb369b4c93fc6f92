//! A run's progress: its epoch log, its state and its checkpoints ([`crate::machinery::checkpoint`]),
//! saved after every epoch and resumed from; the layout of earlier versions is still read.

use crate::machinery::checkpoint::Checkpoints;
use crate::machinery::fsutil::{read_json, write_atomic};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use pneumoscope::model_file::sha256_hex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One line of `epochs.csv`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Validation macro-F1.
    pub val_macro_f1: f64,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
}

/// Progress saved after each epoch (`RUN/state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) epochs_done: usize,
    pub(super) best_epoch: usize,
    pub(super) best_val_macro_f1: f64,
    pub(super) history: Vec<EpochLog>,
    /// Earlier versions: the last two checkpoints, oldest first (files beside `state.json`;
    /// the current layout keeps them in [`crate::machinery::checkpoint`]'s folders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) checkpoints: Vec<CheckpointRef>,
    /// Single-checkpoint layout of earlier runs (`checkpoint.bpk`, `optimizer.bpk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) checkpoint_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) optimizer_sha256: Option<String>,
}

/// Earlier versions: the files of the checkpoint written after one epoch, and their checksums.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CheckpointRef {
    pub(super) epoch: usize,
    pub(super) model: String,
    pub(super) model_sha256: String,
    pub(super) optimizer: String,
    pub(super) optimizer_sha256: String,
}

impl CheckpointRef {
    /// Reads and verifies both files.
    pub(super) fn read(&self, run: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, sha) in [
            (&self.model, &self.model_sha256),
            (&self.optimizer, &self.optimizer_sha256),
        ] {
            let p = run.join(name);
            let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            if &sha256_hex(&b) != sha {
                bail!(
                    "{}: checksum mismatch (corrupt or half-written)",
                    p.display()
                );
            }
            out.push(b);
        }
        let o = out.pop().unwrap();
        Ok((out.pop().unwrap(), o))
    }
}

/// A run's progress and its checkpoints ([`crate::machinery::checkpoint`]): resumed from, saved after
/// every epoch (the module, the optimizer and the best module so far), the last two kept;
/// `RUN/state.json` and `RUN/epochs.csv` are copies for people and scripts.
pub(super) struct Progress {
    pub(super) dir: PathBuf,
    pub(super) state: State,
    /// The best module so far, as a record.
    pub(super) best: Vec<u8>,
    pub(super) store: Checkpoints,
}

/// A checkpoint read back: the progress and the records of the module, the optimizer and the
/// best module.
pub(super) struct Resumed {
    pub(super) state: State,
    pub(super) model: Vec<u8>,
    pub(super) optimizer: Vec<u8>,
    pub(super) best: Vec<u8>,
}

/// Files of a training checkpoint.
pub(super) const MODEL: &str = "model.bpk";
pub(super) const OPTIMIZER: &str = "optimizer.bpk";
pub(super) const BEST: &str = "best.bpk";

impl Progress {
    /// A new run's progress, or a resumed run's: `module` and `optim` loaded from the newest
    /// checkpoint that verifies (a corrupt one falls back to the one before). Runs of earlier
    /// versions (checkpoint files beside `state.json`) resume too, and go on in the current
    /// layout.
    pub(super) fn resume<M: Module>(
        dir: &Path,
        module: M,
        optim: &mut burn::optim::ModuleOptimizer,
    ) -> Result<(Self, M)> {
        let store = Checkpoints::new(dir, 2);
        let Resumed {
            state,
            model: m,
            optimizer: o,
            best,
        } = match store.latest::<State>()? {
            Some(mut saved) => Resumed {
                model: saved.take(MODEL)?,
                optimizer: saved.take(OPTIMIZER)?,
                best: saved.take(BEST)?,
                state: saved.state,
            },
            None => match Self::legacy(dir)? {
                Some(loaded) => loaded,
                None => {
                    let fresh = State {
                        epochs_done: 0,
                        best_epoch: 0,
                        best_val_macro_f1: -1.0,
                        history: Vec::new(),
                        checkpoints: Vec::new(),
                        checkpoint_sha256: None,
                        optimizer_sha256: None,
                    };
                    let progress = Progress {
                        dir: dir.to_path_buf(),
                        state: fresh,
                        best: Vec::new(),
                        store,
                    };
                    return Ok((progress, module));
                }
            },
        };
        let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(m)).with_context(|| {
            format!(
                "checkpoint of epoch {}: unreadable model",
                state.epochs_done
            )
        })?;
        let module = module
            .try_load_record(rec)
            .with_context(|| format!("checkpoint of epoch {}", state.epochs_done))?;
        *optim = std::mem::replace(
            optim,
            crate::machinery::adam::optimizer(0.0, pneumoscope::arch::Operations::Own),
        )
        .from_bytes(Bytes::from_bytes_vec(o))
        .with_context(|| format!("checkpoint of epoch {}: optimizer", state.epochs_done))?;
        eprintln!(
            "resuming after epoch {} (best so far: epoch {}, val macro-F1 {:.4})",
            state.epochs_done, state.best_epoch, state.best_val_macro_f1
        );
        let progress = Progress {
            dir: dir.to_path_buf(),
            state,
            best,
            store,
        };
        Ok((progress, module))
    }

    /// A run saved by an earlier version: `state.json` naming checkpoint files beside it (the
    /// last two, `checkpoint-NNNN.bpk` and `optimizer-NNNN.bpk`, or one `checkpoint.bpk` and
    /// `optimizer.bpk`) and `best-module.bpk`. `None` when the run has no state yet.
    pub(super) fn legacy(dir: &Path) -> Result<Option<Resumed>> {
        let Ok(mut saved) = read_json::<State>(&dir.join("state.json")) else {
            return Ok(None);
        };
        saved.upgrade_single_checkpoint();
        for r in saved.checkpoints.clone().iter().rev() {
            match r.read(dir) {
                Ok((m, o)) => {
                    let best_path = dir.join("best-module.bpk");
                    let best = std::fs::read(&best_path)
                        .with_context(|| format!("cannot read {}", best_path.display()))?;
                    saved.epochs_done = r.epoch;
                    saved.history.truncate(r.epoch);
                    saved.checkpoints.clear();
                    return Ok(Some(Resumed {
                        state: saved,
                        model: m,
                        optimizer: o,
                        best,
                    }));
                }
                Err(e) => eprintln!("warning: {e:#}; trying the previous checkpoint"),
            }
        }
        Err(crate::machinery::checkpoint::unresumable(dir))
    }

    /// Records a finished epoch: the best module when it is the best so far, then a checkpoint
    /// of the module, the optimizer and the best module, `epochs.csv` and `state.json`. Files of
    /// an earlier version's layout go once the first checkpoint of this one is current.
    pub(super) fn save<M: Module>(
        &mut self,
        log: EpochLog,
        module: &M,
        optim: &burn::optim::ModuleOptimizer,
    ) -> Result<()> {
        let state = &mut self.state;
        let epoch = log.epoch;
        let f1 = log.val_macro_f1;
        state.history.push(log);
        let m = module
            .clone()
            .into_record()
            .into_bytes()
            .with_context(|| format!("epoch {epoch}: the module's record"))?;
        if f1 > state.best_val_macro_f1 {
            state.best_val_macro_f1 = f1;
            state.best_epoch = epoch;
            self.best = m.to_vec();
        }
        let o = optim
            .into_bytes()
            .with_context(|| format!("epoch {epoch}: the optimizer's record"))?;
        state.epochs_done = epoch;
        self.store.save(
            epoch,
            &*state,
            &[(MODEL, &m), (OPTIMIZER, &o), (BEST, &self.best)],
        )?;
        write_epochs_csv(&self.dir.join("epochs.csv"), &state.history)?;
        write_atomic(
            &self.dir.join("state.json"),
            serde_json::to_string_pretty(&state)?.as_bytes(),
        )?;
        for e in std::fs::read_dir(&self.dir)?.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().into_owned();
            let legacy = (n.starts_with("checkpoint") || n.starts_with("optimizer"))
                && n.ends_with(".bpk")
                || n == "best-module.bpk";
            if legacy {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// The best module of the run, loaded into `module`.
    pub(super) fn best<M: Module>(&self, module: M) -> Result<M> {
        let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.best.clone()))
            .with_context(|| format!("{}: the best module", self.dir.display()))?;
        module
            .try_load_record(rec)
            .with_context(|| format!("{}: the best module", self.dir.display()))
    }
}

impl State {
    /// Runs of an earlier layout kept one checkpoint (`checkpoint.bpk`, `optimizer.bpk`),
    /// named by two checksums; it becomes the run's one checkpoint entry.
    pub(super) fn upgrade_single_checkpoint(&mut self) {
        if self.checkpoints.is_empty()
            && let (Some(m), Some(o)) =
                (self.checkpoint_sha256.take(), self.optimizer_sha256.take())
        {
            self.checkpoints.push(CheckpointRef {
                epoch: self.epochs_done,
                model: "checkpoint.bpk".into(),
                model_sha256: m,
                optimizer: "optimizer.bpk".into(),
                optimizer_sha256: o,
            });
        }
    }
}

pub(super) fn write_epochs_csv(path: &Path, history: &[EpochLog]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for h in history {
        w.serialize(h)?;
    }
    write_atomic(path, &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)
}
