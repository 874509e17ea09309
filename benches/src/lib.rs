//! Benchmarks live in `benches/`: criterion benchmarks of hot paths (`cargo bench -p
//! boomerang-benches`) and, as the stages land, harnesses for end-to-end runs.
