//! The 4-class dataset: sources, the manifest, patient-level splits, duplicate detection and
//! the preprocessing cache.

pub mod build;
pub mod cache;
pub mod sources;

use anyhow::{Context, Result, bail};
use pneumoscope::Class;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Used to fit the weights.
    Train,
    /// Used to pick the best epoch.
    Val,
    /// Held out for the final report.
    Test,
}

impl Split {
    /// All splits.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    /// Name used in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            o => Err(format!("unknown split '{o}' (expected train, val or test)")),
        }
    }
}

/// One row of `manifest.csv`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Path of the image (absolute, or relative to the manifest's folder).
    pub path: String,
    /// Class.
    pub label: Class,
    /// Patient id, prefixed by its source (`kermany:person12`, `cohen:45`).
    pub patient: String,
    /// Source collection (`kermany`, `cohen`, `folder`).
    pub source: String,
    /// Split.
    pub split: Split,
    /// SHA-256 of the file bytes.
    pub sha256: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Id of the duplicate group the image belongs to (empty when it has no duplicate).
    #[serde(default)]
    pub dup_group: String,
    /// Patient age in years when the source says it (Kermany: paediatric, empty).
    #[serde(default)]
    pub age: String,
    /// Radiographic view when the source says it.
    #[serde(default)]
    pub view: String,
}

/// A manifest: its rows and the folder relative paths are resolved against.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Rows in file order.
    pub records: Vec<Record>,
    /// Folder of the manifest file.
    pub root: PathBuf,
}

impl Manifest {
    /// Reads a manifest; a malformed row is an error naming the line and the reason.
    pub fn read(path: &Path) -> Result<Self> {
        let mut rdr = csv::Reader::from_path(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let mut records = Vec::new();
        for (i, row) in rdr.deserialize::<Record>().enumerate() {
            let rec = row.with_context(|| {
                format!(
                    "{}: malformed row {} (header is line 1)",
                    path.display(),
                    i + 2
                )
            })?;
            records.push(rec);
        }
        if records.is_empty() {
            bail!("{}: the manifest has no rows", path.display());
        }
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self { records, root })
    }

    /// Writes rows to a manifest file.
    pub fn write(path: &Path, records: &[Record]) -> Result<()> {
        let mut w = csv::Writer::from_path(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        for r in records {
            w.serialize(r)?;
        }
        w.flush()?;
        Ok(())
    }

    /// Absolute path of a row's image.
    pub fn resolve(&self, r: &Record) -> PathBuf {
        let p = Path::new(&r.path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// Class indices of the given rows.
    pub fn labels(&self, rows: &[usize]) -> Vec<usize> {
        rows.iter()
            .map(|&i| self.records[i].label.index())
            .collect()
    }

    /// Patient ids of the given rows.
    pub fn patients(&self, rows: &[usize]) -> Vec<String> {
        rows.iter()
            .map(|&i| self.records[i].patient.clone())
            .collect()
    }

    /// Indices of the rows of one split.
    pub fn split_indices(&self, split: Split) -> Vec<usize> {
        (0..self.records.len())
            .filter(|&i| self.records[i].split == split)
            .collect()
    }
}
