//! `pneumoscope data build`: sources → decoded, hashed, de-duplicated, patient-level split
//! manifest.

use super::sources::{self, Candidate, Rejected, SourceOutput};
use super::{Label, Manifest, NUM_LABELS, Population, Record, Split};
use anyhow::{Context, Result, bail};
use image_hasher::{HashAlg, HasherConfig, ImageHash};
use pneumoscope::model_file::sha256_hex;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Options of `data build`.
#[derive(Clone, Debug, clap::Args)]
pub struct BuildOptions {
    /// A folder in the Kermany layout (NORMAL/PNEUMONIA at any depth). Repeatable.
    #[arg(long)]
    pub kermany: Vec<PathBuf>,
    /// A COVID-19 image data collection folder (metadata.csv + images). Repeatable.
    #[arg(long)]
    pub covid: Vec<PathBuf>,
    /// An NIH ChestX-ray14 folder (`Data_Entry_2017_v2020.csv` and its PNG files in any
    /// subfolder, any subset of them): "No Finding" is normal, "Pneumonia" the partial label
    /// (pathogen unknown). Repeatable.
    #[arg(long)]
    pub nih: Vec<PathBuf>,
    /// A folder with one subfolder per class (normal, bacterial, viral, covid19). Repeatable.
    #[arg(long)]
    pub folder: Vec<PathBuf>,
    /// Also map the collection's bacterial, viral and "No Finding" rows.
    #[arg(long)]
    pub covid_all_findings: bool,
    /// Fraction of images (by patient) for validation.
    #[arg(long, default_value_t = 0.15)]
    pub val: f64,
    /// Fraction of images (by patient) for test.
    #[arg(long, default_value_t = 0.15)]
    pub test: f64,
    /// Seed of the split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Near-duplicate threshold: differing bits (of 256) of the perceptual hash.
    #[arg(long, default_value_t = DEFAULT_PHASH_THRESHOLD)]
    pub phash_threshold: u32,
    /// Output folder (manifest.csv, summary.json, rejected.csv, excluded.csv, duplicates.csv).
    #[arg(long)]
    pub out: PathBuf,
}

/// Bits of the perceptual hash (16x16 gradient hash).
pub const PHASH_BITS: u32 = 256;
/// Default near-duplicate threshold: at most this many of the 256 hash bits differ. Chosen on
/// the shared data: distinct patients' radiographs differ in 40 or more bits, resized or
/// re-encoded copies of one image in fewer than 10.
pub const DEFAULT_PHASH_THRESHOLD: u32 = 12;

struct Decoded {
    cand: Candidate,
    sha256: String,
    pixel_sha: String,
    width: u32,
    height: u32,
    phash: ImageHash,
}

/// Counts per split x population x label.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    /// Images per split, then per label.
    pub images: BTreeMap<String, BTreeMap<String, usize>>,
    /// Patients per split, then per label (a patient counts under each label it has images of).
    pub patients: BTreeMap<String, BTreeMap<String, usize>>,
    /// Distinct patients per split.
    pub patients_total: BTreeMap<String, usize>,
    /// Images per split, population and label (`"train/adult" -> {"normal": 120, ...}`).
    pub images_by_population: BTreeMap<String, BTreeMap<String, usize>>,
    /// Patients per split, population and label.
    pub patients_by_population: BTreeMap<String, BTreeMap<String, usize>>,
}

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Totals.
    pub total_images: usize,
    /// Distinct patients.
    pub total_patients: usize,
    /// Per split x class.
    pub counts: Counts,
    /// Images per source.
    pub sources: BTreeMap<String, usize>,
    /// Duplicate groups found (exact pixels or perceptual hash).
    pub duplicate_groups: usize,
    /// Images that belong to a duplicate group.
    pub duplicate_images: usize,
    /// Duplicate groups whose members carry different labels.
    pub conflicting_duplicate_groups: usize,
    /// Groups that span more than one patient id (kept together in one split).
    pub cross_patient_duplicate_groups: usize,
    /// Rejected files or rows (broken).
    pub rejected: usize,
    /// Excluded rows or files (deliberately not used), by reason.
    pub excluded: BTreeMap<String, usize>,
    /// The options used.
    pub options: serde_json::Value,
}

fn decode(c: Candidate, hasher: &image_hasher::Hasher) -> std::result::Result<Decoded, Rejected> {
    let reject = |reason: String| Rejected {
        path: c.path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(&c.path).map_err(|e| reject(format!("cannot read: {e}")))?;
    let img = pneumoscope::preprocess::decode(&bytes).map_err(|e| reject(e.to_string()))?;
    let gray = img.to_luma8();
    let mut px = Vec::with_capacity(8 + gray.as_raw().len());
    px.extend_from_slice(&gray.width().to_le_bytes());
    px.extend_from_slice(&gray.height().to_le_bytes());
    px.extend_from_slice(gray.as_raw());
    let phash = hasher.hash_image(&gray);
    Ok(Decoded {
        sha256: sha256_hex(&bytes),
        pixel_sha: sha256_hex(&px),
        width: img.width(),
        height: img.height(),
        phash,
        cand: c,
    })
}

/// Disjoint sets of indices; a set's root is its smallest member.
pub(crate) struct UnionFind(Vec<usize>);
impl UnionFind {
    /// `n` singletons.
    pub(crate) fn new(n: usize) -> Self {
        Self((0..n).collect())
    }
    /// The root of `i`'s set.
    pub(crate) fn find(&mut self, i: usize) -> usize {
        let mut r = i;
        while self.0[r] != r {
            r = self.0[r];
        }
        let mut j = i;
        while self.0[j] != r {
            let next = self.0[j];
            self.0[j] = r;
            j = next;
        }
        r
    }
    /// Joins the sets of `a` and `b`.
    pub(crate) fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb)] = ra.min(rb);
        }
    }
}

/// Runs the builder and writes its outputs into `opts.out`: gather the sources' candidates,
/// drop files listed twice, decode, group duplicates, split by unit (patients joined through
/// duplicates), write the manifest and its companions.
pub fn build(opts: &BuildOptions) -> Result<Summary> {
    check_options(opts)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create output folder {}", opts.out.display()))?;
    let mut all = gather(opts);
    let unique = drop_listed_twice(&mut all);
    let items = decode_all(unique, &mut all.rejected);
    if items.is_empty() {
        write_rejected(&opts.out, &all.rejected, &all.excluded)?;
        bail!(
            "no usable image remains ({} rejected, {} excluded; see {})",
            all.rejected.len(),
            all.excluded.len(),
            opts.out.join("rejected.csv").display()
        );
    }
    let dups = DuplicateGroups::of(&items, opts.phash_threshold);
    let strata: Vec<(Label, Population)> = items
        .iter()
        .map(|it| (it.cand.label, it.cand.population))
        .collect();
    let split_of = assign_splits(&strata, split_units(&items, &dups.groups), opts);
    let records = manifest_records(&items, &split_of, &dups.ids);
    Manifest::write(&opts.out.join("manifest.csv"), &records)?;
    write_rejected(&opts.out, &all.rejected, &all.excluded)?;
    write_duplicates(&opts.out, &records)?;
    let summary = summarise(opts, &records, &dups, &all);
    std::fs::write(
        opts.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(summary)
}

fn check_options(opts: &BuildOptions) -> Result<()> {
    if opts.kermany.is_empty()
        && opts.covid.is_empty()
        && opts.nih.is_empty()
        && opts.folder.is_empty()
    {
        bail!("no source given: use --kermany DIR, --covid DIR, --nih DIR and/or --folder DIR");
    }
    if !(0.0..=1.0).contains(&opts.val)
        || !(0.0..=1.0).contains(&opts.test)
        || opts.val + opts.test > 1.0
    {
        bail!("--val and --test must be fractions in [0, 1] with val + test <= 1");
    }
    Ok(())
}

/// Every source's candidates, rejections and exclusions.
fn gather(opts: &BuildOptions) -> SourceOutput {
    let mut all = SourceOutput::default();
    let mut absorb = |o: SourceOutput| {
        all.candidates.extend(o.candidates);
        all.rejected.extend(o.rejected);
        all.excluded.extend(o.excluded);
    };
    for d in &opts.kermany {
        absorb(sources::kermany(d));
    }
    for d in &opts.covid {
        absorb(sources::covid(d, opts.covid_all_findings));
    }
    for d in &opts.nih {
        absorb(sources::nih(d));
    }
    for d in &opts.folder {
        absorb(sources::folder(d));
    }
    all
}

/// The candidates with each file once (a file listed twice in metadata, or by two overlapping
/// sources, is excluded the second time), their paths made canonical.
fn drop_listed_twice(all: &mut SourceOutput) -> Vec<Candidate> {
    let mut seen = HashMap::new();
    let mut unique = Vec::new();
    for mut c in all.candidates.drain(..) {
        let canon = std::fs::canonicalize(&c.path).unwrap_or_else(|_| c.path.clone());
        if seen.insert(canon.clone(), ()).is_some() {
            all.excluded.push(Rejected {
                path: c.path.display().to_string(),
                reason: "the same file is listed more than once".into(),
            });
            continue;
        }
        c.path = canon;
        unique.push(c);
    }
    unique
}

/// Decodes every candidate (in parallel); those that fail join `rejected`.
fn decode_all(unique: Vec<Candidate>, rejected: &mut Vec<Rejected>) -> Vec<Decoded> {
    let hasher = HasherConfig::new()
        .hash_size(16, 16)
        .hash_alg(HashAlg::Gradient)
        .to_hasher();
    let pb = crate::machinery::progress::bar(unique.len() as u64, "decoding");
    let results: Vec<_> = unique
        .into_par_iter()
        .map(|c| {
            let r = decode(c, &hasher);
            pb.inc(1);
            r
        })
        .collect();
    pb.finish_and_clear();
    let mut items = Vec::new();
    for r in results {
        match r {
            Ok(d) => items.push(d),
            Err(rej) => rejected.push(rej),
        }
    }
    items
}

/// Duplicate groups: identical pixels, or near-identical perceptual hashes.
struct DuplicateGroups {
    /// The groups of two or more images (indices into the decoded items).
    groups: Vec<Vec<usize>>,
    /// Each item's group name (`dupNNNN`), empty when it has no duplicate.
    ids: Vec<String>,
    /// Groups whose images carry different labels.
    conflicting: usize,
    /// Groups whose images belong to different patients.
    cross_patient: usize,
}

impl DuplicateGroups {
    fn of(items: &[Decoded], phash_threshold: u32) -> Self {
        let n = items.len();
        let mut dup = UnionFind::new(n);
        let mut by_pixels: HashMap<&str, usize> = HashMap::new();
        for (i, it) in items.iter().enumerate() {
            if let Some(&j) = by_pixels.get(it.pixel_sha.as_str()) {
                dup.union(i, j);
            } else {
                by_pixels.insert(&it.pixel_sha, i);
            }
        }
        let pairs: Vec<(usize, usize)> = (0..n)
            .into_par_iter()
            .flat_map_iter(|i| {
                ((i + 1)..n)
                    .filter(move |&j| items[i].phash.dist(&items[j].phash) <= phash_threshold)
                    .map(move |j| (i, j))
            })
            .collect();
        for (i, j) in pairs {
            dup.union(i, j);
        }
        let mut sets: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..n {
            sets.entry(dup.find(i)).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = sets.into_values().filter(|g| g.len() > 1).collect();
        let mut ids = vec![String::new(); n];
        let (mut conflicting, mut cross_patient) = (0, 0);
        for (g, members) in groups.iter().enumerate() {
            for &m in members {
                ids[m] = format!("dup{g:04}");
            }
            let l0 = items[members[0]].cand.label;
            if members.iter().any(|&m| items[m].cand.label != l0) {
                conflicting += 1;
            }
            let p0 = &items[members[0]].cand.patient;
            if members.iter().any(|&m| &items[m].cand.patient != p0) {
                cross_patient += 1;
            }
        }
        DuplicateGroups {
            groups,
            ids,
            conflicting,
            cross_patient,
        }
    }
}

/// Split units: patients joined through duplicate groups (each unit's item indices).
fn split_units(items: &[Decoded], dup_groups: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut units = UnionFind::new(items.len());
    let mut by_patient: HashMap<&str, usize> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        if let Some(&j) = by_patient.get(it.cand.patient.as_str()) {
            units.union(i, j);
        } else {
            by_patient.insert(&it.cand.patient, i);
        }
    }
    for members in dup_groups {
        for w in members.windows(2) {
            units.union(w[0], w[1]);
        }
    }
    let mut unit_members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..items.len() {
        unit_members.entry(units.find(i)).or_default().push(i);
    }
    unit_members.into_values().collect()
}

/// The manifest's rows, sorted by split, label and path.
fn manifest_records(items: &[Decoded], split_of: &[Split], dup_id: &[String]) -> Vec<Record> {
    let mut records: Vec<Record> = items
        .iter()
        .enumerate()
        .map(|(i, it)| Record {
            path: it.cand.path.display().to_string(),
            label: it.cand.label,
            patient: it.cand.patient.clone(),
            source: it.cand.source.to_string(),
            split: split_of[i],
            sha256: it.sha256.clone(),
            width: it.width,
            height: it.height,
            dup_group: dup_id[i].clone(),
            age: it.cand.age.clone(),
            view: it.cand.view.clone(),
            population: Some(it.cand.population),
        })
        .collect();
    records.sort_by(|a, b| (a.split, a.label, &a.path).cmp(&(b.split, b.label, &b.path)));
    records
}

fn summarise(
    opts: &BuildOptions,
    records: &[Record],
    dups: &DuplicateGroups,
    all: &SourceOutput,
) -> Summary {
    let mut excluded = BTreeMap::new();
    for e in &all.excluded {
        let key = e.reason.split(" (").next().unwrap_or(&e.reason).to_string();
        *excluded.entry(key).or_insert(0) += 1;
    }
    let mut sources = BTreeMap::new();
    for r in records {
        *sources.entry(r.source.clone()).or_insert(0) += 1;
    }
    Summary {
        total_images: records.len(),
        total_patients: records
            .iter()
            .map(|r| &r.patient)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        counts: counts(records),
        sources,
        duplicate_groups: dups.groups.len(),
        duplicate_images: dups.groups.iter().map(Vec::len).sum(),
        conflicting_duplicate_groups: dups.conflicting,
        cross_patient_duplicate_groups: dups.cross_patient,
        rejected: all.rejected.len(),
        excluded,
        options: serde_json::json!({
            "kermany": opts.kermany, "covid": opts.covid, "nih": opts.nih, "folder": opts.folder,
            "covid_all_findings": opts.covid_all_findings, "val": opts.val, "test": opts.test,
            "seed": opts.seed, "phash_threshold": opts.phash_threshold, "phash_bits": PHASH_BITS,
        }),
    }
}

/// The stratum of a split unit (patients joined through duplicates): its most frequent label
/// and population (ties: the rarer one overall).
pub fn unit_stratum(strata: &[(Label, Population)], members: &[usize]) -> (Label, Population) {
    let mut total = [[0usize; 2]; NUM_LABELS];
    for &(l, p) in strata {
        total[l.index()][p.index()] += 1;
    }
    let mut cnt = [[0usize; 2]; NUM_LABELS];
    for &m in members {
        let (l, p) = strata[m];
        cnt[l.index()][p.index()] += 1;
    }
    let cells = (0..NUM_LABELS).flat_map(|l| (0..2).map(move |p| (l, p)));
    let (l, p) = cells
        .max_by(|&(a, pa), &(b, pb)| {
            cnt[a][pa]
                .cmp(&cnt[b][pb])
                .then(total[b][pb].cmp(&total[a][pa]))
        })
        .expect("labels and populations are not empty");
    (Label::ALL[l], Population::ALL[p])
}

/// Splits units (lists of item indices that must stay together) into train / val / test,
/// stratified by label and population: each stratum's units are shuffled and dealt so that
/// about `--test` and `--val` of its images land in test and val.
fn assign_splits(
    strata: &[(Label, Population)],
    units: Vec<Vec<usize>>,
    opts: &BuildOptions,
) -> Vec<Split> {
    let mut by_stratum: BTreeMap<(Label, Population), Vec<Vec<usize>>> = BTreeMap::new();
    for members in units {
        by_stratum
            .entry(unit_stratum(strata, &members))
            .or_default()
            .push(members);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut split_of = vec![Split::Train; strata.len()];
    for units in by_stratum.values_mut() {
        units.shuffle(&mut rng);
        let total: usize = units.iter().map(Vec::len).sum();
        let test_target = (opts.test * total as f64).round() as usize;
        let val_target = (opts.val * total as f64).round() as usize;
        let (mut n_test, mut n_val) = (0, 0);
        for u in units.iter() {
            let s = if n_test < test_target {
                n_test += u.len();
                Split::Test
            } else if n_val < val_target {
                n_val += u.len();
                Split::Val
            } else {
                Split::Train
            };
            for &m in u {
                split_of[m] = s;
            }
        }
    }
    split_of
}

/// Images and patients per split x label, and per split x population x label.
pub fn counts(records: &[Record]) -> Counts {
    let mut c = Counts::default();
    let mut pats: BTreeMap<(String, String), std::collections::HashSet<&str>> = BTreeMap::new();
    let mut pats_pop: BTreeMap<(String, String), std::collections::HashSet<&str>> = BTreeMap::new();
    for r in records {
        let pop_key = format!("{}/{}", r.split, r.population());
        *c.images
            .entry(r.split.to_string())
            .or_default()
            .entry(r.label.to_string())
            .or_insert(0) += 1;
        *c.images_by_population
            .entry(pop_key.clone())
            .or_default()
            .entry(r.label.to_string())
            .or_insert(0) += 1;
        pats.entry((r.split.to_string(), r.label.to_string()))
            .or_default()
            .insert(&r.patient);
        pats_pop
            .entry((pop_key, r.label.to_string()))
            .or_default()
            .insert(&r.patient);
    }
    let mut per_split: BTreeMap<String, std::collections::HashSet<&str>> = BTreeMap::new();
    for ((s, l), p) in pats {
        c.patients.entry(s.clone()).or_default().insert(l, p.len());
        per_split.entry(s).or_default().extend(p);
    }
    for ((k, l), p) in pats_pop {
        c.patients_by_population
            .entry(k)
            .or_default()
            .insert(l, p.len());
    }
    c.patients_total = per_split.into_iter().map(|(s, p)| (s, p.len())).collect();
    c
}

/// The printed table: images (patients) per split x population x label.
pub fn table(summary: &Summary) -> String {
    let cell = |m: &BTreeMap<String, BTreeMap<String, usize>>, k: &str, l: &str| {
        m.get(k).and_then(|m| m.get(l)).copied().unwrap_or(0)
    };
    let mut out = format!("{:<14}", "split");
    for l in Label::ALL {
        out += &format!("{:>17}", l.name());
    }
    out += &format!("{:>18}\n", "total");
    for s in Split::ALL {
        let s = s.to_string();
        for pop in Population::ALL {
            let k = format!("{s}/{pop}");
            if !summary.counts.images_by_population.contains_key(&k) {
                continue;
            }
            out += &format!("{k:<14}");
            let mut ti = 0;
            for l in Label::ALL {
                let i = cell(&summary.counts.images_by_population, &k, l.name());
                let p = cell(&summary.counts.patients_by_population, &k, l.name());
                ti += i;
                out += &format!("{:>17}", format!("{i} ({p} pat.)"));
            }
            out += &format!("{:>18}\n", format!("{ti} images"));
        }
        let tp = summary.counts.patients_total.get(&s).copied().unwrap_or(0);
        let ti: usize = Label::ALL
            .iter()
            .map(|l| cell(&summary.counts.images, &s, l.name()))
            .sum();
        out += &format!(
            "{:<14}{:>103}\n",
            format!("{s} (all)"),
            format!("{ti} ({tp} pat.)")
        );
    }
    out += &format!(
        "(pneumonia: pathogen unknown, bacterial or viral; a patient with images of two labels counts in both columns)\n{} images of {} patients; {} duplicate groups ({} images, {} across patients, {} with \
         conflicting labels); {} rejected; {} excluded\n",
        summary.total_images,
        summary.total_patients,
        summary.duplicate_groups,
        summary.duplicate_images,
        summary.cross_patient_duplicate_groups,
        summary.conflicting_duplicate_groups,
        summary.rejected,
        summary.excluded.values().sum::<usize>()
    );
    out
}

fn write_rejected(out: &Path, rejected: &[Rejected], excluded: &[Rejected]) -> Result<()> {
    for (name, rows) in [("rejected.csv", rejected), ("excluded.csv", excluded)] {
        let mut w = csv::Writer::from_path(out.join(name))?;
        w.write_record(["path", "reason"])?;
        for r in rows {
            w.write_record([&r.path, &r.reason])?;
        }
        w.flush()?;
    }
    Ok(())
}

fn write_duplicates(out: &Path, records: &[Record]) -> Result<()> {
    let mut w = csv::Writer::from_path(out.join("duplicates.csv"))?;
    w.write_record(["dup_group", "path", "patient", "label", "split"])?;
    let mut rows: Vec<&Record> = records.iter().filter(|r| !r.dup_group.is_empty()).collect();
    rows.sort_by(|a, b| (&a.dup_group, &a.path).cmp(&(&b.dup_group, &b.path)));
    for r in rows {
        w.write_record([
            &r.dup_group,
            &r.path,
            &r.patient,
            r.label.name(),
            r.split.name(),
        ])?;
    }
    w.flush()?;
    Ok(())
}
