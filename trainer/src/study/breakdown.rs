//! The figures that show the adult/child shortcut: per population and source, what the model
//! calls adult normals, pneumonia of unknown pathogen and COVID-19, each with a 95 % interval
//! from resampling patients; and the four-class metrics on the paper's population (children and
//! COVID-19) beside those on every image with a class.

use crate::data::{Label, PNEUMONIA_UNKNOWN, Population};
use crate::metrics::{self, Interval, Metrics, argmax, percentile};
use crate::study::table::Table;
use pneumoscope::{Class, NUM_CLASSES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;

/// Bootstrap resamples of every interval.
const RESAMPLES: usize = 1000;

/// One evaluated image, as the breakdown sees it.
#[derive(Clone, Debug)]
pub struct Row {
    /// Label index (a class, or [`PNEUMONIA_UNKNOWN`]).
    pub label: usize,
    /// Population.
    pub population: Population,
    /// Source collection.
    pub source: String,
    /// Patient id.
    pub patient: String,
    /// Probabilities.
    pub probs: [f32; NUM_CLASSES],
}

/// A share of images with its interval (patients resampled).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rate {
    /// Images counted.
    pub hits: usize,
    /// Images in the group.
    pub n: usize,
    /// `hits / n`.
    pub value: f64,
    /// 95 % interval.
    pub ci: Interval,
}

impl Rate {
    /// `hits/n = value [low, high]`.
    pub fn show(&self) -> String {
        format!(
            "{}/{} = {:.3} [{:.3}, {:.3}]",
            self.hits, self.n, self.value, self.ci.low, self.ci.high
        )
    }
}

/// The share of `rows` for which `hit` holds, with a patient-bootstrap interval; `None` for no
/// rows.
pub fn rate(rows: &[&Row], hit: impl Fn(&Row) -> bool) -> Option<Rate> {
    if rows.is_empty() {
        return None;
    }
    let mut by_patient: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in rows {
        let e = by_patient.entry(r.patient.as_str()).or_default();
        e.0 += usize::from(hit(r));
        e.1 += 1;
    }
    let cells: Vec<(usize, usize)> = by_patient.into_values().collect();
    let hits: usize = cells.iter().map(|c| c.0).sum();
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    let mut values: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let (mut h, mut n) = (0, 0);
            for _ in 0..cells.len() {
                let c = cells[rng.random_range(0..cells.len())];
                h += c.0;
                n += c.1;
            }
            h as f64 / n as f64
        })
        .collect();
    values.sort_by(f64::total_cmp);
    Some(Rate {
        hits,
        n: rows.len(),
        value: hits as f64 / rows.len() as f64,
        ci: Interval {
            low: percentile(&values, 0.025),
            high: percentile(&values, 0.975),
        },
    })
}

/// What one group of images (a population, or a population within one source) was called.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// `child` or `adult`.
    pub population: String,
    /// The source, or `all` for every source of the population.
    pub source: String,
    /// Images.
    pub n: usize,
    /// Patients.
    pub patients: usize,
    /// Rows: true label (the four classes, then `pneumonia` of unknown pathogen); columns:
    /// predicted class. Labels absent from the group are left out.
    pub confusion: BTreeMap<String, [usize; NUM_CLASSES]>,
    /// Normals called COVID-19.
    pub normal_called_covid19: Option<Rate>,
    /// Normals called pneumonia (bacterial or viral).
    pub normal_called_pneumonia: Option<Rate>,
    /// Pneumonia of unknown pathogen called normal.
    pub pneumonia_called_normal: Option<Rate>,
    /// Pneumonia of unknown pathogen called COVID-19.
    pub pneumonia_called_covid19: Option<Rate>,
    /// COVID-19 images called COVID-19.
    pub covid19_recall: Option<Rate>,
    /// Non-COVID-19 images (any label but COVID-19) called COVID-19.
    pub non_covid_called_covid19: Option<Rate>,
}

fn group(population: Population, source: &str, rows: &[&Row]) -> Group {
    let mut confusion: BTreeMap<String, [usize; NUM_CLASSES]> = BTreeMap::new();
    for r in rows {
        confusion
            .entry(Label::ALL[r.label].name().to_string())
            .or_default()[argmax(&r.probs)] += 1;
    }
    let of = |l: usize| {
        rows.iter()
            .copied()
            .filter(|r| r.label == l)
            .collect::<Vec<_>>()
    };
    let normal = of(Class::Normal.index());
    let pneumonia = of(PNEUMONIA_UNKNOWN);
    let covid = of(Class::Covid19.index());
    let non_covid: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.label != Class::Covid19.index())
        .collect();
    let called = |c: Class| move |r: &Row| argmax(&r.probs) == c.index();
    let called_pneumonia = |r: &Row| {
        let k = argmax(&r.probs);
        k == Class::Bacterial.index() || k == Class::Viral.index()
    };
    let patients = rows
        .iter()
        .map(|r| r.patient.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    Group {
        population: population.to_string(),
        source: source.to_string(),
        n: rows.len(),
        patients,
        confusion,
        normal_called_covid19: rate(&normal, called(Class::Covid19)),
        normal_called_pneumonia: rate(&normal, called_pneumonia),
        pneumonia_called_normal: rate(&pneumonia, called(Class::Normal)),
        pneumonia_called_covid19: rate(&pneumonia, called(Class::Covid19)),
        covid19_recall: rate(&covid, called(Class::Covid19)),
        non_covid_called_covid19: rate(&non_covid, called(Class::Covid19)),
    }
}

/// Everything [`of`] reports.
#[derive(Clone, Debug, Serialize)]
pub struct Breakdown {
    /// Four-class metrics on the paper's population: children's images and COVID-19 images
    /// (`None` when there is none).
    pub children_and_covid19: Option<Metrics>,
    /// Four-class metrics on every image with a class (children and adults).
    pub all_with_a_class: Option<Metrics>,
    /// Per population (source `all`), then per population and source.
    pub groups: Vec<Group>,
}

fn metrics_of(rows: &[&Row]) -> Option<Metrics> {
    let rows: Vec<&&Row> = rows.iter().filter(|r| r.label < NUM_CLASSES).collect();
    if rows.is_empty() {
        return None;
    }
    let probs: Vec<_> = rows.iter().map(|r| r.probs).collect();
    let labels: Vec<_> = rows.iter().map(|r| r.label).collect();
    let pats: Vec<_> = rows.iter().map(|r| r.patient.clone()).collect();
    Some(metrics::compute(&probs, &labels, &pats))
}

/// The breakdown of evaluated rows.
pub fn of(rows: &[Row]) -> Breakdown {
    let all: Vec<&Row> = rows.iter().collect();
    let paper: Vec<&Row> = rows
        .iter()
        .filter(|r| r.population == Population::Child || r.label == Class::Covid19.index())
        .collect();
    let mut groups = Vec::new();
    for pop in Population::ALL {
        let in_pop: Vec<&Row> = rows.iter().filter(|r| r.population == pop).collect();
        if in_pop.is_empty() {
            continue;
        }
        groups.push(group(pop, "all", &in_pop));
        let mut sources: Vec<&str> = in_pop.iter().map(|r| r.source.as_str()).collect();
        sources.sort();
        sources.dedup();
        if sources.len() > 1 {
            for s in sources {
                let sub: Vec<&Row> = in_pop.iter().copied().filter(|r| r.source == s).collect();
                groups.push(group(pop, s, &sub));
            }
        }
    }
    Breakdown {
        children_and_covid19: metrics_of(&paper),
        all_with_a_class: metrics_of(&all),
        groups,
    }
}

fn cell(r: &Option<Rate>) -> String {
    r.as_ref().map_or("–".into(), Rate::show)
}

fn f1(m: &Option<Metrics>) -> String {
    m.as_ref().map_or("–".into(), |m| {
        format!(
            "{:.3} [{:.3}, {:.3}] (n = {})",
            m.macro_f1, m.macro_f1_ci.low, m.macro_f1_ci.high, m.n
        )
    })
}

/// The per-group columns both renderings show, in order.
fn group_cells(g: &Group) -> [String; 7] {
    [
        format!("{} ({})", g.n, g.patients),
        cell(&g.normal_called_covid19),
        cell(&g.normal_called_pneumonia),
        cell(&g.pneumonia_called_normal),
        cell(&g.pneumonia_called_covid19),
        cell(&g.covid19_recall),
        cell(&g.non_covid_called_covid19),
    ]
}

/// The breakdown as Markdown: the headline metrics, then one line per group.
pub fn markdown(b: &Breakdown) -> String {
    let mut out = String::new();
    out += &format!(
        "Four-class macro-F1, children + COVID-19: {}\n\nFour-class macro-F1, every image with a class: {}\n\n",
        f1(&b.children_and_covid19),
        f1(&b.all_with_a_class)
    );
    out += &groups_table(b).markdown();
    out += "\nShares as hits/images = share [95 % interval, patients resampled]. Confusion per group:\n\n";
    out += &group_confusion_table(b).markdown();
    out
}

/// One row per population and source: images and patients, and the shares of the mistakes
/// the shortcut would make.
fn groups_table(b: &Breakdown) -> Table {
    let mut t = Table::new(&[
        "population",
        "source",
        "images (patients)",
        "normal → COVID-19",
        "normal → pneumonia",
        "pneumonia (pathogen unknown) → normal",
        "pneumonia (pathogen unknown) → COVID-19",
        "COVID-19 recall",
        "not COVID-19 → COVID-19",
    ]);
    for g in &b.groups {
        let mut row = vec![g.population.clone(), g.source.clone()];
        row.extend(group_cells(g));
        t.rows.push(row);
    }
    t
}

/// Per population, source and true label: how many images were called each class.
fn group_confusion_table(b: &Breakdown) -> Table {
    let mut t = Table::new(&[
        "population",
        "source",
        "true label",
        "normal",
        "bacterial",
        "viral",
        "covid19",
    ]);
    for g in &b.groups {
        for (l, c) in &g.confusion {
            let mut row = vec![g.population.clone(), g.source.clone(), l.clone()];
            row.extend(c.iter().map(|v| v.to_string()));
            t.rows.push(row);
        }
    }
    t
}

/// The breakdown as HTML tables (the same content as [`markdown`]).
pub fn html(b: &Breakdown) -> String {
    let mut out = format!(
        "<table><tr><th>four-class macro-F1</th><th>value [95 % interval]</th></tr><tr><td>children + COVID-19</td><td>{}</td></tr><tr><td>every image with a class</td><td>{}</td></tr></table>",
        f1(&b.children_and_covid19),
        f1(&b.all_with_a_class)
    );
    out += &groups_table(b).html();
    out += "<p>Shares as hits/images = share [95 % interval, patients resampled]. Confusion per group:</p>";
    out += &group_confusion_table(b).html();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: usize, pop: Population, source: &str, patient: &str, top: usize) -> Row {
        let mut probs = [0.1f32; NUM_CLASSES];
        probs[top] = 0.7;
        Row {
            label,
            population: pop,
            source: source.into(),
            patient: patient.into(),
            probs,
        }
    }

    #[test]
    fn shares_per_population_and_source() {
        use Population::*;
        let rows = vec![
            row(0, Adult, "nih", "a", 3),
            row(0, Adult, "nih", "a", 0),
            row(0, Adult, "folder", "b", 3),
            row(0, Adult, "folder", "c", 1),
            row(PNEUMONIA_UNKNOWN, Adult, "nih", "d", 2),
            row(PNEUMONIA_UNKNOWN, Adult, "nih", "e", 0),
            row(3, Adult, "cohen", "f", 3),
            row(3, Adult, "cohen", "g", 1),
            row(1, Child, "kermany", "h", 1),
            row(0, Child, "kermany", "i", 0),
        ];
        let b = of(&rows);
        let adult = b
            .groups
            .iter()
            .find(|g| g.population == "adult" && g.source == "all");
        let adult = adult.unwrap();
        assert_eq!(adult.n, 8);
        assert_eq!(adult.patients, 7);
        let r = adult.normal_called_covid19.as_ref().unwrap();
        assert_eq!((r.hits, r.n), (2, 4));
        assert!(r.ci.low <= 0.5 && 0.5 <= r.ci.high);
        assert_eq!(adult.normal_called_pneumonia.as_ref().unwrap().hits, 1);
        assert_eq!(adult.pneumonia_called_normal.as_ref().unwrap().hits, 1);
        assert_eq!(adult.pneumonia_called_covid19.as_ref().unwrap().hits, 0);
        assert_eq!(adult.covid19_recall.as_ref().unwrap().value, 0.5);
        assert_eq!(adult.confusion["pneumonia"], [1, 0, 1, 0]);
        // Per source only where a population has more than one; children have one.
        assert!(b.groups.iter().any(|g| g.source == "nih"));
        assert!(!b.groups.iter().any(|g| g.source == "kermany"));
        // The paper's population: the children and the two COVID-19 images.
        assert_eq!(b.children_and_covid19.as_ref().unwrap().n, 4);
        // Every image with a class: all but the two of unknown pathogen.
        assert_eq!(b.all_with_a_class.as_ref().unwrap().n, 8);
        let md = markdown(&b);
        assert!(md.contains("| adult | nih | 4 (3) |"), "{md}");
    }
}
