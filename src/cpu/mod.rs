//! CPU paths: the f64 reference (the oracle every test compares against) and
//! the fast SIMD path (the CPU backend and the GPU's fallback).

pub mod fast;
pub mod reference;
