//! Dockerfile text -> [`BuildGraph`].
pub mod graph;
pub use graph::*;
