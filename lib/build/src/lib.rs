//! The build farm's shared vocabulary.
//!
//! `leengine-core` writes configs, runs and tasks; `leengine-build-agent`
//! reads tasks and advances runs. Both agree on the records here and on the
//! placement function, which must give the same answer in every process.

pub mod log;
pub mod model;
pub mod placement;
pub mod validate;

pub use log::{redact_credentials, BoundedLog};
pub use model::*;
pub use placement::{rank, redispatch_target, score};
pub use validate::ValidationError;
