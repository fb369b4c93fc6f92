//! Reading the source collections into candidate images: the Kermany layout, the COVID-19 image
//! data collection (`metadata.csv`, old and new finding schemas) and plain class folders.

use pneumoscope::Class;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

/// An image a source proposes, before it is decoded.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Image file.
    pub path: PathBuf,
    /// Class.
    pub label: Class,
    /// Source-prefixed patient id.
    pub patient: String,
    /// Source name.
    pub source: &'static str,
    /// Age, when known.
    pub age: String,
    /// View, when known.
    pub view: String,
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
            label,
            patient: format!("kermany:{patient}"),
            source: "kermany",
            age: String::new(),
            view: String::new(),
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

/// The COVID-19 image data collection: `metadata.csv` and its image folders.
pub fn covid(dir: &Path, all_findings: bool) -> SourceOutput {
    let mut out = SourceOutput::default();
    let meta = dir.join("metadata.csv");
    let bytes = match std::fs::read(&meta) {
        Ok(b) => b,
        Err(e) => {
            out.rejected.push(Rejected {
                path: meta.display().to_string(),
                reason: format!("cannot read metadata: {e}"),
            });
            return out;
        }
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(&bytes[..]);
    let headers: Vec<String> = match rdr.byte_headers() {
        Ok(h) => h
            .iter()
            .map(|f| String::from_utf8_lossy(f).trim().to_string())
            .collect(),
        Err(e) => {
            out.rejected.push(Rejected {
                path: meta.display().to_string(),
                reason: format!("unreadable header: {e}"),
            });
            return out;
        }
    };
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(c_pid), Some(c_find), Some(c_view), Some(c_file)) = (
        col("patientid"),
        col("finding"),
        col("view"),
        col("filename"),
    ) else {
        out.rejected.push(Rejected {
            path: meta.display().to_string(),
            reason: "metadata.csv lacks one of the columns patientid, finding, view, filename"
                .into(),
        });
        return out;
    };
    let c_mod = col("modality");
    let c_folder = col("folder");
    let c_age = col("age");
    for (i, row) in rdr.byte_records().enumerate() {
        let line = i + 2;
        let loc = format!("{}:{line}", meta.display());
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                out.rejected.push(Rejected {
                    path: loc,
                    reason: format!("malformed row: {e}"),
                });
                continue;
            }
        };
        let get = |c: Option<usize>| {
            c.and_then(|c| row.get(c))
                .map(|f| String::from_utf8_lossy(f).trim().to_string())
        };
        if row.len() < headers.len().saturating_sub(1) && get(Some(c_file)).is_none() {
            out.rejected.push(Rejected {
                path: loc,
                reason: format!(
                    "malformed row: {} fields where the header has {}, no filename",
                    row.len(),
                    headers.len()
                ),
            });
            continue;
        }
        let file = get(Some(c_file)).unwrap_or_default();
        let pid = get(Some(c_pid)).unwrap_or_default();
        if file.is_empty() || pid.is_empty() {
            out.rejected.push(Rejected {
                path: loc,
                reason: "row without filename or patientid".into(),
            });
            continue;
        }
        let folder = get(c_folder)
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "images".into());
        let path = dir.join(&folder).join(&file);
        let modality = get(c_mod).unwrap_or_default();
        let view = get(Some(c_view)).unwrap_or_default();
        if !modality.is_empty() && !modality.eq_ignore_ascii_case("x-ray") {
            out.excluded.push(Rejected {
                path: path.display().to_string(),
                reason: format!("modality {modality} is not X-ray"),
            });
            continue;
        }
        if !FRONTAL_VIEWS.iter().any(|v| v.eq_ignore_ascii_case(&view)) {
            out.excluded.push(Rejected {
                path: path.display().to_string(),
                reason: format!("view '{view}' is not frontal (PA, AP, AP Supine, AP Erect)"),
            });
            continue;
        }
        let finding = get(Some(c_find)).unwrap_or_default();
        let label = match covid_finding(&finding, all_findings) {
            Ok(l) => l,
            Err(reason) => {
                out.excluded.push(Rejected {
                    path: path.display().to_string(),
                    reason,
                });
                continue;
            }
        };
        if !path.is_file() {
            out.rejected.push(Rejected {
                path: path.display().to_string(),
                reason: format!("file listed in metadata.csv line {line} is missing"),
            });
            continue;
        }
        out.candidates.push(Candidate {
            path,
            label,
            patient: format!("cohen:{pid}"),
            source: "cohen",
            age: get(c_age).unwrap_or_default(),
            view,
        });
    }
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
                label: class,
                patient: format!("folder:{}:{patient}", dir.display()),
                source: "folder",
                age: String::new(),
                view: String::new(),
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
}
