//! CPU paths: the f64 reference (the oracle every test compares against).

pub mod reference;
