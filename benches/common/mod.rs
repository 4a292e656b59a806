//! What the benches share: synthetic Matryoshka-like vectors.

pub mod synthetic;
