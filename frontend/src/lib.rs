//! Dockerfile text -> [`BuildGraph`], in three layers as BuildKit's frontend:
//!
//! 1. [`parser`]: text -> syntax tree ([`parser::Dockerfile`]): directives, continuations,
//!    heredocs, JSON/shell form, flags, line numbers.
//! 2. [`instructions`]: syntax tree -> typed instructions with flag validation; word expansion
//!    lives in [`shell`].
//! 3. [`convert()`]: typed stages -> [`BuildGraph`] (ARG scopes, stage references, target,
//!    image config and history).
//!
//! The frontend does no I/O: base image configs come through [`ImageResolver`].
pub mod convert;
pub mod error;
pub mod graph;
pub mod instructions;
pub mod parser;
pub mod shell;
#[cfg(test)]
mod test_data;

pub use convert::convert;
pub use error::Error;
pub use graph::*;
pub use parser::parse;
