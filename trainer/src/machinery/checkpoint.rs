//! Checkpoints of a training run: one layout, one save that cannot be torn, one resume and one
//! checksum check for every loop that trains (`train`, `train --folds`, `lungs train`).
//!
//! A run keeps its checkpoints in `RUN/checkpoints/`:
//!
//! - `epoch-NNNN/`: the files of the checkpoint saved after epoch `NNNN` (the module, the
//!   optimizer, ...) and `checkpoint.json`: the epoch, the run's progress (any JSON the loop
//!   keeps) and the SHA-256 of every file;
//! - `current`: the name of the newest complete checkpoint folder.
//!
//! A save writes a new folder, reads every file back against its checksum, and only then makes
//! it current by rewriting `current` (a temporary file renamed over it: one rename). The folders
//! older than the last `keep` are deleted after that. A process killed at any moment therefore
//! leaves `current` naming a complete, verified checkpoint (or no checkpoint at all), and a half
//! written folder that the next save replaces. Resuming reads the current checkpoint and
//! verifies it; when it does not verify (a disk fault), the older ones are tried, newest first.

use anyhow::{Context, Result, bail};
use pneumoscope::model_file::sha256_hex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::machinery::fsutil::{read_json, write_atomic};

/// The folder of a run's checkpoints.
pub const DIR: &str = "checkpoints";

/// What `checkpoint.json` holds.
#[derive(Serialize, Deserialize)]
struct Index<S> {
    epoch: usize,
    /// SHA-256 of each file of the checkpoint, by name.
    files: BTreeMap<String, String>,
    state: S,
}

/// A checkpoint read back and verified.
pub struct Saved<S> {
    /// The epoch after which it was saved.
    pub epoch: usize,
    /// The run's progress at that point.
    pub state: S,
    /// Its files, by name.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl<S> Saved<S> {
    /// The file `name` (an error naming the checkpoint when it has none).
    pub fn take(&mut self, name: &str) -> Result<Vec<u8>> {
        self.files
            .remove(name)
            .with_context(|| format!("checkpoint of epoch {} has no {name}", self.epoch))
    }
}

/// The checkpoints of one run.
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

/// The message every loop gives when a run cannot be resumed.
pub fn unresumable(run: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: no checkpoint of this run verifies (corrupt or missing); delete the run folder to \
         start again",
        run.display()
    )
}

impl Checkpoints {
    /// The checkpoints of the run in `run`, keeping the last `keep` (at least one).
    pub fn new(run: &Path, keep: usize) -> Self {
        Self {
            dir: run.join(DIR),
            keep: keep.max(1),
        }
    }

    fn folder(epoch: usize) -> String {
        format!("epoch-{epoch:04}")
    }

    /// The complete checkpoint folders, newest first: the current one, then the older ones
    /// still kept.
    fn candidates(&self) -> Vec<String> {
        let current = std::fs::read_to_string(self.dir.join("current"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let mut older: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("epoch-") && !n.contains(".tmp"))
                    .collect()
            })
            .unwrap_or_default();
        older.sort();
        older.reverse();
        let mut out = Vec::new();
        if let Some(c) = current {
            // Only folders no newer than the current one: a newer one is a save that did not
            // finish.
            older.retain(|n| *n < c);
            out.push(c);
        } else {
            older.clear();
        }
        out.extend(older);
        out
    }

    /// Reads and verifies one checkpoint folder.
    fn read<S: DeserializeOwned>(&self, name: &str) -> Result<Saved<S>> {
        let folder = self.dir.join(name);
        let index_path = folder.join("checkpoint.json");
        let index: Index<S> = read_json(&index_path)?;
        let mut files = BTreeMap::new();
        for (file, sha) in &index.files {
            let p = folder.join(file);
            let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            if &sha256_hex(&b) != sha {
                bail!(
                    "{}: checksum mismatch (corrupt or half-written)",
                    p.display()
                );
            }
            files.insert(file.clone(), b);
        }
        Ok(Saved {
            epoch: index.epoch,
            state: index.state,
            files,
        })
    }

    /// The newest checkpoint that verifies (`None` when the run has none yet); a corrupt one
    /// is reported and the one before it tried. An error when none verifies.
    pub fn latest<S: DeserializeOwned>(&self) -> Result<Option<Saved<S>>> {
        let candidates = self.candidates();
        if candidates.is_empty() {
            return Ok(None);
        }
        for name in candidates {
            match self.read(&name) {
                Ok(s) => return Ok(Some(s)),
                Err(e) => eprintln!("warning: {e:#}; trying the previous checkpoint"),
            }
        }
        Err(unresumable(self.dir.parent().unwrap_or(&self.dir)))
    }

    /// Saves the checkpoint of `epoch`: `files` and `state` in a new folder, verified, then
    /// made current; older checkpoints beyond the last `keep` are deleted.
    pub fn save<S: Serialize>(
        &self,
        epoch: usize,
        state: &S,
        files: &[(&str, &[u8])],
    ) -> Result<()> {
        let name = Self::folder(epoch);
        let folder = self.dir.join(&name);
        if folder.exists() {
            // A save of this epoch that did not finish (it never became current), or one a
            // resumed run repeats: written again from scratch.
            std::fs::remove_dir_all(&folder)
                .with_context(|| format!("cannot remove {}", folder.display()))?;
        }
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        let mut sums = BTreeMap::new();
        for (file, bytes) in files {
            write_atomic(&folder.join(file), bytes)?;
            sums.insert(file.to_string(), sha256_hex(bytes));
            kill_point(epoch, "file");
        }
        let index = Index {
            epoch,
            files: sums,
            state,
        };
        write_atomic(
            &folder.join("checkpoint.json"),
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
        // Read back before it becomes current.
        self.read::<serde_json::Value>(&name).with_context(|| {
            format!(
                "the checkpoint just written in {} does not verify",
                folder.display()
            )
        })?;
        kill_point(epoch, "index");
        write_atomic(&self.dir.join("current"), name.as_bytes())?;
        kill_point(epoch, "current");
        let mut all: Vec<String> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("epoch-"))
            .collect();
        all.sort();
        let keep_from = all.iter().position(|n| *n == name).unwrap_or(all.len());
        for old in &all[..keep_from.saturating_sub(self.keep - 1)] {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
        // Folders after the current one are saves of a run that was killed and resumed from an
        // earlier checkpoint: they no longer belong to it.
        for newer in &all[keep_from + 1..] {
            let _ = std::fs::remove_dir_all(self.dir.join(newer));
        }
        Ok(())
    }
}

/// The environment variable of the test hook [`kill_point`].
pub const KILL_AT: &str = "PNEUMOSCOPE_KILL_AT";

/// Test hook: with `PNEUMOSCOPE_KILL_AT=EPOCH:POINT`, the process kills itself (SIGKILL, as
/// `kill -9` would) at POINT of the save of EPOCH: `file`, after its first file is written;
/// `index`, after its index is written and verified but before it is made current;
/// `current`, after it is made current but before older checkpoints are removed. Lets tests
/// kill a run between the writes of one save. Unset, it does nothing.
fn kill_point(epoch: usize, point: &str) {
    let Ok(at) = std::env::var(KILL_AT) else {
        return;
    };
    if at == format!("{epoch}:{point}") {
        #[cfg(unix)]
        // SAFETY: kill(2) on this process's own id; no memory is touched.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Progress {
        losses: Vec<f64>,
    }

    fn save(c: &Checkpoints, epoch: usize) {
        let state = Progress {
            losses: (0..epoch).map(|e| e as f64).collect(),
        };
        let model = vec![epoch as u8; 1000];
        c.save(
            epoch,
            &state,
            &[("model.bpk", &model), ("optimizer.bpk", b"adam")],
        )
        .unwrap();
    }

    /// Saved, read back, the last two kept; a corrupt current checkpoint falls back to the one
    /// before; all corrupt: the one message.
    #[test]
    fn save_resume_and_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path(), 2);
        assert!(c.latest::<Progress>().unwrap().is_none());
        for e in 1..=4 {
            save(&c, e);
        }
        let mut s = c.latest::<Progress>().unwrap().unwrap();
        assert_eq!(s.epoch, 4);
        assert_eq!(s.state.losses.len(), 4);
        assert_eq!(s.take("model.bpk").unwrap(), vec![4u8; 1000]);
        let kept: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("epoch-"))
            .collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        std::fs::write(dir.path().join(DIR).join("epoch-0004/model.bpk"), b"torn").unwrap();
        assert_eq!(c.latest::<Progress>().unwrap().unwrap().epoch, 3);
        std::fs::write(
            dir.path().join(DIR).join("epoch-0003/checkpoint.json"),
            b"{",
        )
        .unwrap();
        let e = c.latest::<Progress>().err().unwrap().to_string();
        assert!(e.contains("no checkpoint of this run verifies"), "{e}");
    }

    /// A save killed before its folder became current is not read: the run resumes from the
    /// current one, and the next save of that epoch replaces the half-written folder.
    #[test]
    fn a_save_that_did_not_finish_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path(), 2);
        save(&c, 1);
        save(&c, 2);
        // Epoch 3's folder half written: files, no index, not current.
        let torn = dir.path().join(DIR).join("epoch-0003");
        std::fs::create_dir_all(&torn).unwrap();
        std::fs::write(torn.join("model.bpk"), b"half").unwrap();
        assert_eq!(c.latest::<Progress>().unwrap().unwrap().epoch, 2);
        save(&c, 3);
        assert_eq!(c.latest::<Progress>().unwrap().unwrap().epoch, 3);
        // A resumed run that goes back to epoch 2 drops the folders after it.
        save(&c, 2);
        assert_eq!(c.latest::<Progress>().unwrap().unwrap().epoch, 2);
        assert!(!dir.path().join(DIR).join("epoch-0003").exists());
    }
}
