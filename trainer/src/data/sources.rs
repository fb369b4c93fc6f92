//! Reading the source collections into candidate images: the Kermany layout, the COVID-19 image
//! data collection (`metadata.csv`, old and new finding schemas), NIH ChestX-ray14 (its
//! `Data_Entry_2017*.csv` and image folders) and plain class folders.

use super::{Label, Population};
use pneumoscope::Class;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// An image a source proposes, before it is decoded.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Image file.
    pub path: PathBuf,
    /// Class, or the partial label.
    pub label: Label,
    /// Source-prefixed patient id.
    pub patient: String,
    /// Source name.
    pub source: &'static str,
    /// Age, when known.
    pub age: String,
    /// View, when known.
    pub view: String,
    /// Child or adult.
    pub population: Population,
}

/// A file or row left out, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rejected {
    /// File (or `metadata.csv:LINE`).
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What a source yielded.
#[derive(Default)]
pub struct SourceOutput {
    /// Usable candidates.
    pub candidates: Vec<Candidate>,
    /// Files or rows that are broken (unreadable, missing, malformed).
    pub rejected: Vec<Rejected>,
    /// Rows or files deliberately not used (not a frontal X-ray, finding not selected, ...).
    pub excluded: Vec<Rejected>,
}

const IMAGE_EXTS: [&str; 4] = ["png", "jpg", "jpeg", "dcm"];

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The file name of a listed file worth looking at: `None` for hidden files (skipped) and for
/// files that are not images (recorded as rejected).
fn screen(path: &Path, out: &mut SourceOutput) -> Option<String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if name.starts_with('.') {
        return None;
    }
    if !is_image_name(path) {
        out.rejected.push(Rejected {
            path: path.display().to_string(),
            reason: "unsupported file type (expected .png, .jpg, .jpeg or .dcm)".into(),
        });
        return None;
    }
    Some(name)
}

/// Patient id of a Kermany file name: `personNNN_...`, `NORMAL2-IM-NNNN-...`, `IM-NNNN-...`.
pub fn kermany_patient(file_name: &str) -> Option<String> {
    let stem = file_name.split('.').next().unwrap_or(file_name);
    if let Some(rest) = stem.strip_prefix("person") {
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        return (!digits.is_empty()).then(|| format!("person{digits}"));
    }
    for prefix in ["NORMAL2-IM-", "IM-"] {
        if let Some(rest) = stem.strip_prefix(prefix) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            return (!digits.is_empty()).then(|| format!("{prefix}{digits}"));
        }
    }
    None
}

/// The Kermany layout at any depth: files under a `NORMAL` or `PNEUMONIA` folder; bacterial vs
/// viral from the file name.
pub fn kermany(dir: &Path) -> SourceOutput {
    let mut out = SourceOutput::default();
    if !dir.is_dir() {
        out.rejected.push(Rejected {
            path: dir.display().to_string(),
            reason: "Kermany folder not found".into(),
        });
        return out;
    }
    let mut entries: Vec<PathBuf> = Vec::new();
    for e in WalkDir::new(dir).follow_links(true) {
        match e {
            Ok(e) if e.file_type().is_file() => entries.push(e.into_path()),
            Ok(_) => {}
            Err(err) => out.rejected.push(Rejected {
                path: err
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason: format!("cannot list: {err}"),
            }),
        }
    }
    entries.sort();
    for path in entries {
        let parent = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_ascii_uppercase())
            .unwrap_or_default();
        if parent != "NORMAL" && parent != "PNEUMONIA" {
            continue;
        }
        let Some(name) = screen(&path, &mut out) else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        let label = if parent == "NORMAL" {
            Class::Normal
        } else if lower.contains("bacteria") {
            Class::Bacterial
        } else if lower.contains("virus") {
            Class::Viral
        } else {
            out.rejected.push(Rejected {
                path: path.display().to_string(),
                reason: "pneumonia file name says neither 'bacteria' nor 'virus'".into(),
            });
            continue;
        };
        let patient = match kermany_patient(&name) {
            Some(p) => p,
            None => {
                out.rejected.push(Rejected {
                    path: path.display().to_string(),
                    reason: "no patient id in the file name (expected personNNN, IM-NNNN or \
                             NORMAL2-IM-NNNN)"
                        .into(),
                });
                continue;
            }
        };
        out.candidates.push(Candidate {
            path,
            label: label.into(),
            patient: format!("kermany:{patient}"),
            source: "kermany",
            age: String::new(),
            view: String::new(),
            population: Population::Child,
        });
    }
    out
}

/// Frontal X-ray views accepted from the COVID-19 collection.
pub const FRONTAL_VIEWS: [&str; 4] = ["PA", "AP", "AP Supine", "AP Erect"];

/// Maps a finding of the COVID-19 collection (old or new schema) to a class, or says why not.
pub fn covid_finding(finding: &str, all_findings: bool) -> Result<Class, String> {
    let f = finding.trim();
    let lower = f.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').map(str::trim).collect();
    let is_covid =
        lower.split(',').map(str::trim).any(|p| p == "covid-19") || parts.contains(&"covid-19");
    if is_covid {
        return Ok(Class::Covid19);
    }
    if !all_findings {
        return Err(format!(
            "finding '{f}' not selected (only COVID-19 without --covid-all-findings)"
        ));
    }
    if lower == "no finding" {
        return Ok(Class::Normal);
    }
    // New schema: Pneumonia/Bacterial/..., Pneumonia/Viral/...
    if parts.len() >= 2 && parts[0] == "pneumonia" {
        return match parts[1] {
            "bacterial" => Ok(Class::Bacterial),
            "viral" => Ok(Class::Viral),
            _ => Err(format!("finding '{f}' is neither bacterial nor viral")),
        };
    }
    // Old schema: the organism.
    const BACTERIAL: [&str; 11] = [
        "streptococcus",
        "klebsiella",
        "mycoplasma bacterial pneumonia",
        "legionella",
        "e.coli",
        "bacterial",
        "staphylococcus",
        "chlamydophila",
        "nocardia",
        "mycoplasma",
        "pseudomonas",
    ];
    const VIRAL: [&str; 6] = [
        "sars",
        "mers",
        "mers-cov",
        "influenza",
        "varicella",
        "herpes",
    ];
    let first = lower.split(',').next().unwrap_or("").trim();
    if BACTERIAL.contains(&first) {
        Ok(Class::Bacterial)
    } else if VIRAL.contains(&first) {
        Ok(Class::Viral)
    } else {
        Err(format!("finding '{f}' is not one of the four classes"))
    }
}

/// What one metadata row gives: a candidate, a broken row or file, or a row not used.
enum Row {
    Use(Candidate),
    Rejected(Rejected),
    Excluded(Rejected),
}

impl Row {
    fn rejected(path: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Self::Rejected(Rejected {
            path: path.to_string(),
            reason: reason.into(),
        })
    }

    fn excluded(path: &Path, reason: impl Into<String>) -> Self {
        Self::Excluded(Rejected {
            path: path.display().to_string(),
            reason: reason.into(),
        })
    }
}

impl SourceOutput {
    fn take(&mut self, row: Row) {
        match row {
            Row::Use(c) => self.candidates.push(c),
            Row::Rejected(r) => self.rejected.push(r),
            Row::Excluded(r) => self.excluded.push(r),
        }
    }

    /// Reads every row of `rdr` with `read_row(line, row)`; a row the CSV reader cannot read is
    /// rejected at `meta:LINE`.
    fn read_rows(
        &mut self,
        meta: &Path,
        rdr: &mut csv::Reader<std::io::Cursor<Vec<u8>>>,
        mut read_row: impl FnMut(usize, &csv::ByteRecord) -> Row,
    ) {
        for (i, row) in rdr.byte_records().enumerate() {
            let line = i + 2;
            self.take(match row {
                Ok(row) => read_row(line, &row),
                Err(e) => Row::rejected(
                    format_args!("{}:{line}", meta.display()),
                    format!("malformed row: {e}"),
                ),
            });
        }
    }
}

/// The columns of the COVID-19 collection's `metadata.csv`, and what a row is read against.
struct CovidTable<'a> {
    dir: &'a Path,
    meta: &'a Path,
    /// Number of columns in the header.
    width: usize,
    patient: usize,
    finding: usize,
    view: usize,
    file: usize,
    modality: Option<usize>,
    folder: Option<usize>,
    age: Option<usize>,
    all_findings: bool,
}

impl CovidTable<'_> {
    fn row(&self, line: usize, row: &csv::ByteRecord) -> Row {
        let loc = format!("{}:{line}", self.meta.display());
        let get = |c: Option<usize>| {
            c.and_then(|c| row.get(c))
                .map(|f| String::from_utf8_lossy(f).trim().to_string())
        };
        if row.len() < self.width.saturating_sub(1) && get(Some(self.file)).is_none() {
            return Row::rejected(
                loc,
                format!(
                    "malformed row: {} fields where the header has {}, no filename",
                    row.len(),
                    self.width
                ),
            );
        }
        let file = get(Some(self.file)).unwrap_or_default();
        let pid = get(Some(self.patient)).unwrap_or_default();
        if file.is_empty() || pid.is_empty() {
            return Row::rejected(loc, "row without filename or patientid");
        }
        let folder = get(self.folder)
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "images".into());
        let path = self.dir.join(&folder).join(&file);
        let modality = get(self.modality).unwrap_or_default();
        let view = get(Some(self.view)).unwrap_or_default();
        if !modality.is_empty() && !modality.eq_ignore_ascii_case("x-ray") {
            return Row::excluded(&path, format!("modality {modality} is not X-ray"));
        }
        if !FRONTAL_VIEWS.iter().any(|v| v.eq_ignore_ascii_case(&view)) {
            return Row::excluded(
                &path,
                format!("view '{view}' is not frontal (PA, AP, AP Supine, AP Erect)"),
            );
        }
        let finding = get(Some(self.finding)).unwrap_or_default();
        let label = match covid_finding(&finding, self.all_findings) {
            Ok(l) => l,
            Err(reason) => return Row::excluded(&path, reason),
        };
        if !path.is_file() {
            return Row::rejected(
                path.display(),
                format!("file listed in metadata.csv line {line} is missing"),
            );
        }
        let age = get(self.age).unwrap_or_default();
        Row::Use(Candidate {
            path,
            label: label.into(),
            patient: format!("cohen:{pid}"),
            source: "cohen",
            population: Population::of("cohen", &age),
            age,
            view,
        })
    }
}

/// The COVID-19 image data collection: `metadata.csv` and its image folders.
pub fn covid(dir: &Path, all_findings: bool) -> SourceOutput {
    let mut out = SourceOutput::default();
    let meta = dir.join("metadata.csv");
    let (mut rdr, headers, [patient, finding, view, file]) =
        match open_metadata(&meta, ["patientid", "finding", "view", "filename"]) {
            Ok(m) => m,
            Err(r) => {
                out.rejected.push(r);
                return out;
            }
        };
    let col = |name: &str| headers.iter().position(|h| h == name);
    let table = CovidTable {
        dir,
        meta: &meta,
        width: headers.len(),
        patient,
        finding,
        view,
        file,
        modality: col("modality"),
        folder: col("folder"),
        age: col("age"),
        all_findings,
    };
    out.read_rows(&meta, &mut rdr, |line, row| table.row(line, row));
    out
}

/// Plain class folders: `DIR/{normal,bacterial,viral,covid19}/*`. Each file is its own patient
/// unless its name starts with `PATIENT__` (two underscores), which groups files by patient.
pub fn folder(dir: &Path) -> SourceOutput {
    let mut out = SourceOutput::default();
    let mut found = false;
    for class in Class::ALL {
        let sub = dir.join(class.name());
        if !sub.is_dir() {
            continue;
        }
        found = true;
        let mut files: BTreeMap<PathBuf, ()> = BTreeMap::new();
        for e in WalkDir::new(&sub).follow_links(true).into_iter().flatten() {
            if e.file_type().is_file() {
                files.insert(e.into_path(), ());
            }
        }
        for path in files.into_keys() {
            let Some(_) = screen(&path, &mut out) else {
                continue;
            };
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let patient = stem
                .split_once("__")
                .map(|(p, _)| p.to_string())
                .unwrap_or(stem);
            out.candidates.push(Candidate {
                path,
                label: class.into(),
                patient: format!("folder:{}:{patient}", dir.display()),
                source: "folder",
                age: String::new(),
                view: String::new(),
                population: Population::Adult,
            });
        }
    }
    if !found {
        out.rejected.push(Rejected {
            path: dir.display().to_string(),
            reason: "no class folder (normal, bacterial, viral, covid19) found".into(),
        });
    }
    out
}

/// An opened metadata CSV: its reader, its column names, the indices of the columns asked for.
type Metadata<const N: usize> = (
    csv::Reader<std::io::Cursor<Vec<u8>>>,
    Vec<String>,
    [usize; N],
);

/// A metadata CSV read whole (a flexible reader: rows may be short), its trimmed column names
/// and the indices of the `N` columns a source needs; or the reason it cannot be used.
fn open_metadata<const N: usize>(
    meta: &Path,
    required: [&str; N],
) -> Result<Metadata<N>, Rejected> {
    let reject = |reason: String| Rejected {
        path: meta.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(meta).map_err(|e| reject(format!("cannot read metadata: {e}")))?;
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::Cursor::new(bytes));
    let headers: Vec<String> = rdr
        .byte_headers()
        .map_err(|e| reject(format!("unreadable header: {e}")))?
        .iter()
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    let mut idx = [0usize; N];
    for (slot, name) in idx.iter_mut().zip(required) {
        *slot = headers.iter().position(|h| h == name).ok_or_else(|| {
            reject(format!(
                "{} lacks one of the columns {}",
                meta.file_name().unwrap_or_default().to_string_lossy(),
                required.join(", ")
            ))
        })?;
    }
    Ok((rdr, headers, idx))
}

/// Frontal views of NIH ChestX-ray14's `View Position` column.
pub const NIH_FRONTAL_VIEWS: [&str; 2] = ["PA", "AP"];

/// Maps NIH ChestX-ray14's `Finding Labels` (`|`-joined) to a label, or says why not:
/// "No Finding" is normal, any list that includes "Pneumonia" the partial label (the pathogen is
/// not given, and the collection predates COVID-19), anything else is not used.
pub fn nih_finding(labels: &str) -> Result<Label, String> {
    let parts: Vec<&str> = labels.split('|').map(str::trim).collect();
    if parts.iter().any(|p| p.eq_ignore_ascii_case("pneumonia")) {
        Ok(Label::Pneumonia)
    } else if parts.len() == 1 && parts[0].eq_ignore_ascii_case("no finding") {
        Ok(Label::Known(Class::Normal))
    } else {
        Err("NIH finding without pneumonia, not 'No Finding'".into())
    }
}

/// The metadata file of an NIH ChestX-ray14 folder: `Data_Entry_2017_v2020.csv`, else the
/// original `Data_Entry_2017.csv`.
fn nih_metadata(dir: &Path) -> Option<PathBuf> {
    ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The PNG files anywhere below `dir`, by file name (the first found of a name).
fn files_by_name(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = BTreeMap::new();
    for e in WalkDir::new(dir).follow_links(true).into_iter().flatten() {
        if e.file_type().is_file() && is_image_name(e.path()) {
            let name = e.file_name().to_string_lossy().to_string();
            files.entry(name).or_insert_with(|| e.into_path());
        }
    }
    files
}

/// The columns of NIH ChestX-ray14's metadata CSV, and the files a row can name.
struct NihTable<'a> {
    dir: &'a Path,
    meta: &'a Path,
    files: BTreeMap<String, PathBuf>,
    /// Number of columns in the header.
    width: usize,
    file: usize,
    finding: usize,
    patient: usize,
    age: usize,
    view: usize,
}

impl NihTable<'_> {
    fn row(&self, line: usize, row: &csv::ByteRecord) -> Row {
        let loc = format!("{}:{line}", self.meta.display());
        let needed = [self.file, self.finding, self.patient, self.age, self.view]
            .into_iter()
            .max()
            .unwrap_or(0);
        if row.len() <= needed {
            return Row::rejected(
                loc,
                format!(
                    "malformed row: {} fields where the header has {}",
                    row.len(),
                    self.width
                ),
            );
        }
        let get = |c: usize| {
            String::from_utf8_lossy(row.get(c).unwrap_or(b""))
                .trim()
                .to_string()
        };
        let (file, pid, age, view) = (
            get(self.file),
            get(self.patient),
            get(self.age),
            get(self.view),
        );
        if file.is_empty() || pid.is_empty() {
            return Row::rejected(loc, "malformed row: no Image Index or Patient ID");
        }
        let age_ok = age.parse::<f64>().is_ok_and(|a| (0.0..150.0).contains(&a));
        if !age_ok {
            return Row::rejected(
                loc,
                format!("malformed row: Patient Age '{age}' is not an age in years"),
            );
        }
        let shown = self
            .files
            .get(&file)
            .cloned()
            .unwrap_or_else(|| self.dir.join("images").join(&file));
        if !NIH_FRONTAL_VIEWS
            .iter()
            .any(|v| v.eq_ignore_ascii_case(&view))
        {
            return Row::excluded(&shown, format!("view '{view}' is not frontal (PA, AP)"));
        }
        let label = match nih_finding(&get(self.finding)) {
            Ok(l) => l,
            Err(reason) => return Row::excluded(&shown, reason),
        };
        let Some(path) = self.files.get(&file).cloned() else {
            return Row::rejected(
                shown.display(),
                format!(
                    "file listed in {} line {line} is missing",
                    self.meta.display()
                ),
            );
        };
        Row::Use(Candidate {
            path,
            label,
            patient: format!("nih:{pid}"),
            source: "nih",
            population: Population::of("nih", &age),
            age,
            view,
        })
    }
}

/// NIH ChestX-ray14 as published: the metadata CSV at the top of `dir` and the PNG files in any
/// folder below it (`images/`, or the release's `images_001/images/` ... `images_012/images/`),
/// any subset of them. Patient ids are `nih:ID`. A row whose file is absent is reported as
/// rejected (most copies hold a subset); a malformed row too.
pub fn nih(dir: &Path) -> SourceOutput {
    let mut out = SourceOutput::default();
    let Some(meta) = nih_metadata(dir) else {
        out.rejected.push(Rejected {
            path: dir.display().to_string(),
            reason: "NIH folder has no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv".into(),
        });
        return out;
    };
    let files = files_by_name(dir);
    let (mut rdr, headers, [file, finding, patient, age, view]) = match open_metadata(
        &meta,
        [
            "Image Index",
            "Finding Labels",
            "Patient ID",
            "Patient Age",
            "View Position",
        ],
    ) {
        Ok(m) => m,
        Err(r) => {
            out.rejected.push(r);
            return out;
        }
    };
    let table = NihTable {
        dir,
        meta: &meta,
        files,
        width: headers.len(),
        file,
        finding,
        patient,
        age,
        view,
    };
    out.read_rows(&meta, &mut rdr, |line, row| table.row(line, row));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kermany_patient_ids() {
        assert_eq!(
            kermany_patient("person1000_bacteria_2931.jpeg").unwrap(),
            "person1000"
        );
        assert_eq!(kermany_patient("IM-0115-0001.jpeg").unwrap(), "IM-0115");
        assert_eq!(
            kermany_patient("NORMAL2-IM-0393-0001.jpeg").unwrap(),
            "NORMAL2-IM-0393"
        );
        assert_eq!(kermany_patient("scan.jpeg"), None);
    }

    #[test]
    fn covid_findings_both_schemas() {
        assert_eq!(covid_finding("COVID-19", false), Ok(Class::Covid19));
        assert_eq!(covid_finding("COVID-19, ARDS", false), Ok(Class::Covid19));
        assert_eq!(
            covid_finding("Pneumonia/Viral/COVID-19", false),
            Ok(Class::Covid19)
        );
        assert!(covid_finding("Streptococcus", false).is_err());
        assert_eq!(covid_finding("Streptococcus", true), Ok(Class::Bacterial));
        assert_eq!(
            covid_finding("Pneumonia/Bacterial/Streptococcus", true),
            Ok(Class::Bacterial)
        );
        assert_eq!(
            covid_finding("Pneumonia/Viral/SARS", true),
            Ok(Class::Viral)
        );
        assert_eq!(covid_finding("SARS", true), Ok(Class::Viral));
        assert_eq!(covid_finding("No Finding", true), Ok(Class::Normal));
        assert!(covid_finding("Pneumocystis", true).is_err());
        assert!(covid_finding("Pneumonia/Fungal/Pneumocystis", true).is_err());
    }

    #[test]
    fn nih_findings() {
        assert_eq!(nih_finding("No Finding"), Ok(Label::Known(Class::Normal)));
        assert_eq!(nih_finding("Pneumonia"), Ok(Label::Pneumonia));
        assert_eq!(
            nih_finding("Edema|Infiltration|Pneumonia"),
            Ok(Label::Pneumonia)
        );
        assert!(nih_finding("Effusion|Infiltration").is_err());
        assert!(nih_finding("No Finding|Effusion").is_err());
    }

    #[test]
    fn populations() {
        assert_eq!(Population::of("kermany", ""), Population::Child);
        assert_eq!(Population::of("cohen", ""), Population::Adult);
        assert_eq!(Population::of("cohen", "12"), Population::Child);
        assert_eq!(Population::of("nih", "17"), Population::Child);
        assert_eq!(Population::of("nih", "18"), Population::Adult);
        assert_eq!(Population::of("folder", "n/a"), Population::Adult);
    }
}
