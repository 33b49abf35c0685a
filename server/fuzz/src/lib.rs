//! The fuzz targets' harness (see `harness`).

mod harness;
pub use harness::*;
