//! Patient-grouped folds of train + val for cross-validation (`train --folds K`).

use super::build::{UnionFind, unit_stratum};
use super::{Label, Manifest, Population, Split};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};

/// The fold of each manifest row: `Some(k)` for train and val rows, `None` for test rows. All
/// images of a patient, and of patients joined by a duplicate group, share a fold; within each
/// stratum (label x population, as in `data build`) units are shuffled and each goes to the
/// fold that holds the fewest images of that stratum so far.
pub fn folds(manifest: &Manifest, k: usize, seed: u64) -> Vec<Option<usize>> {
    let recs = &manifest.records;
    let pool: Vec<usize> = (0..recs.len())
        .filter(|&i| recs[i].split != Split::Test)
        .collect();
    // Units: union of patient and duplicate group.
    let mut sets = UnionFind::new(recs.len());
    let mut first: HashMap<String, usize> = HashMap::new();
    for &i in &pool {
        let r = &recs[i];
        let mut keys = vec![format!("p:{}", r.patient)];
        if !r.dup_group.is_empty() {
            keys.push(format!("d:{}", r.dup_group));
        }
        for key in keys {
            match first.get(&key) {
                Some(&j) => sets.union(i, j),
                None => {
                    first.insert(key, i);
                }
            }
        }
    }
    let mut units: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &pool {
        units.entry(sets.find(i)).or_default().push(i);
    }
    let strata: Vec<(Label, Population)> = recs.iter().map(|r| (r.label, r.population())).collect();
    let mut by_stratum: BTreeMap<(Label, Population), Vec<Vec<usize>>> = BTreeMap::new();
    for members in units.into_values() {
        by_stratum
            .entry(unit_stratum(&strata, &members))
            .or_default()
            .push(members);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![None; recs.len()];
    for units in by_stratum.values_mut() {
        units.shuffle(&mut rng);
        let mut load = vec![0usize; k];
        for u in units.iter() {
            let f = (0..k).min_by_key(|&f| (load[f], f)).expect("k >= 1");
            load[f] += u.len();
            for &m in u {
                out[m] = Some(f);
            }
        }
    }
    out
}
