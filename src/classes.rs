//! The four diagnostic classes, in the fixed order every model file and report uses.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of the four classes Pneumoscope tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// No pneumonia.
    Normal,
    /// Bacterial pneumonia.
    Bacterial,
    /// Viral (non-COVID-19) pneumonia.
    Viral,
    /// COVID-19 pneumonia.
    #[serde(rename = "covid19")]
    Covid19,
}

/// Number of classes.
pub const NUM_CLASSES: usize = 4;

impl Class {
    /// All classes, in model-output order.
    pub const ALL: [Class; NUM_CLASSES] = [
        Class::Normal,
        Class::Bacterial,
        Class::Viral,
        Class::Covid19,
    ];

    /// The class name used in manifests, model files and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Class::Normal => "normal",
            Class::Bacterial => "bacterial",
            Class::Viral => "viral",
            Class::Covid19 => "covid19",
        }
    }

    /// The class as a reader names it ("Bacterial pneumonia"): what the page shows.
    pub fn label(self) -> &'static str {
        match self {
            Class::Normal => "Normal",
            Class::Bacterial => "Bacterial pneumonia",
            Class::Viral => "Viral pneumonia",
            Class::Covid19 => "COVID-19",
        }
    }

    /// Index of the class in model outputs.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class at a model-output index.
    pub fn from_index(i: usize) -> Option<Class> {
        Class::ALL.get(i).copied()
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(Class::Normal),
            "bacterial" => Ok(Class::Bacterial),
            "viral" => Ok(Class::Viral),
            "covid19" | "covid-19" | "covid" => Ok(Class::Covid19),
            other => Err(format!(
                "unknown class '{other}' (expected normal, bacterial, viral or covid19)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_order() {
        for (i, c) in Class::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(c.name().parse::<Class>().unwrap(), *c);
            assert_eq!(Class::from_index(i), Some(*c));
        }
        assert!("pneumonia".parse::<Class>().is_err());
        assert_eq!(
            serde_json::to_string(&Class::Covid19).unwrap(),
            "\"covid19\""
        );
    }
}
