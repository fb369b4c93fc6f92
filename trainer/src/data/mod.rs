//! The 4-class dataset: sources, the manifest, patient-level splits, duplicate detection and
//! the preprocessing cache.
//!
//! A manifest row carries a [`Label`]: one of the four classes, or the partial label
//! "pneumonia, pathogen unknown" (bacterial or viral, never COVID-19) of collections such as
//! NIH ChestX-ray14 that do not name the pathogen. Every row also has its [`Population`].

pub mod augment;
pub mod build;
pub mod cache;
pub mod folds;
pub mod sources;

use anyhow::{Context, Result, bail};
use pneumoscope::{Class, NUM_CLASSES};
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

/// Label index of the partial label "pneumonia, pathogen unknown" (after the four classes).
pub const PNEUMONIA_UNKNOWN: usize = NUM_CLASSES;
/// Number of label kinds: the four classes and the partial label.
pub const NUM_LABELS: usize = NUM_CLASSES + 1;

/// What a manifest row says of its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Label {
    /// One of the four classes.
    Known(Class),
    /// Pneumonia whose pathogen the source does not give: bacterial or viral, not COVID-19.
    Pneumonia,
}

impl Label {
    /// All label kinds, in index order.
    pub const ALL: [Label; NUM_LABELS] = [
        Label::Known(Class::Normal),
        Label::Known(Class::Bacterial),
        Label::Known(Class::Viral),
        Label::Known(Class::Covid19),
        Label::Pneumonia,
    ];

    /// Name in the manifest: a class name, or `pneumonia`.
    pub fn name(self) -> &'static str {
        match self {
            Label::Known(c) => c.name(),
            Label::Pneumonia => "pneumonia",
        }
    }

    /// Index: the class index, or [`PNEUMONIA_UNKNOWN`].
    pub fn index(self) -> usize {
        match self {
            Label::Known(c) => c.index(),
            Label::Pneumonia => PNEUMONIA_UNKNOWN,
        }
    }

    /// The class, when the label names one.
    pub fn class(self) -> Option<Class> {
        match self {
            Label::Known(c) => Some(c),
            Label::Pneumonia => None,
        }
    }

    /// Which of the four classes the label allows (the training target of a partial label).
    pub fn allowed(self) -> [bool; NUM_CLASSES] {
        match self {
            Label::Known(c) => std::array::from_fn(|k| k == c.index()),
            Label::Pneumonia => [false, true, true, false],
        }
    }

    /// Allowed classes of a label index (see [`Label::index`]).
    pub fn allowed_of_index(i: usize) -> [bool; NUM_CLASSES] {
        Label::ALL[i].allowed()
    }
}

impl From<Class> for Label {
    fn from(c: Class) -> Self {
        Label::Known(c)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Label {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("pneumonia") {
            return Ok(Label::Pneumonia);
        }
        s.parse::<Class>()
            .map(Label::Known)
            .map_err(|e| format!("{e}; or 'pneumonia' for pneumonia of unknown pathogen"))
    }
}

impl TryFrom<String> for Label {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.name().to_string()
    }
}

/// Whose X-ray: a child's or an adult's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Population {
    /// Under 18.
    Child,
    /// 18 or older.
    Adult,
}

impl Population {
    /// Both populations.
    pub const ALL: [Population; 2] = [Population::Child, Population::Adult];

    /// Name in the manifest and reports.
    pub fn name(self) -> &'static str {
        match self {
            Population::Child => "child",
            Population::Adult => "adult",
        }
    }

    /// Index (child 0, adult 1).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The population of an image of `source` whose age field reads `age` (empty when the
    /// source does not say): an age decides when it parses; otherwise Kermany's images are
    /// children's (aged 1–5) and every other source's adults'.
    pub fn of(source: &str, age: &str) -> Population {
        match age.trim().parse::<f64>() {
            Ok(a) if a.is_finite() && a < 18.0 => Population::Child,
            Ok(a) if a.is_finite() => Population::Adult,
            _ if source == "kermany" => Population::Child,
            _ => Population::Adult,
        }
    }
}

impl fmt::Display for Population {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of `manifest.csv`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Path of the image (absolute, or relative to the manifest's folder).
    pub path: String,
    /// Class, or `pneumonia` for pneumonia of unknown pathogen.
    pub label: Label,
    /// Patient id, prefixed by its source (`kermany:person12`, `cohen:45`, `nih:61`).
    pub patient: String,
    /// Source collection (`kermany`, `cohen`, `nih`, `folder`).
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
    /// Child or adult (a manifest written before this column existed: inferred from the
    /// source and age when read, see [`Population::of`]).
    #[serde(default)]
    pub population: Option<Population>,
}

impl Record {
    /// The row's population.
    pub fn population(&self) -> Population {
        self.population
            .unwrap_or_else(|| Population::of(&self.source, &self.age))
    }
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
            let mut rec: Record = row.with_context(|| {
                format!(
                    "{}: malformed row {} (header is line 1)",
                    path.display(),
                    i + 2
                )
            })?;
            rec.population = Some(rec.population());
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

    /// Label indices of the given rows (a class index, or [`PNEUMONIA_UNKNOWN`]).
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

    /// Populations of the given rows.
    pub fn populations(&self, rows: &[usize]) -> Vec<Population> {
        rows.iter().map(|&i| self.records[i].population()).collect()
    }

    /// Indices of the rows of one split.
    pub fn split_indices(&self, split: Split) -> Vec<usize> {
        (0..self.records.len())
            .filter(|&i| self.records[i].split == split)
            .collect()
    }
}
