//! The study: what judges and compares trained models. Cross-validation of a setting
//! ([`cv`]), several settings side by side ([`screening`]), model files averaged into an
//! ensemble and judged ([`ensemble`]), the paper's comparison of
//! architectures ([`comparison`]), evaluation of a model file ([`evaluate`]) with its figures
//! per population and source ([`breakdown`]), its ROC curves ([`roc`]) and its reports
//! ([`report`], [`table`]).
//!
//! Calls go down: into [`crate::train`], [`crate::model_file`], [`crate::data`] and the
//! machinery; nothing below imports this room.

pub mod breakdown;
pub mod comparison;
pub mod cv;
pub mod ensemble;
pub mod evaluate;
pub mod report;
pub mod roc;
pub mod screening;
pub mod table;
