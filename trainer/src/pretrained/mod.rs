//! Published ImageNet weights: downloading them into the cache ([`fetch`]) and loading them
//! into a backbone ([`weights`]).

pub mod fetch;
pub mod weights;
