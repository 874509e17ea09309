//! Benchmarks live in `benches/`: criterion benchmarks of hot paths (`cargo bench -p
//! boomerang-benches`) and harnesses for end-to-end runs. This library holds the data they
//! share.

pub mod harness;
pub mod pipeline;
pub mod reference_world;
