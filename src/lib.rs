//! revattn: Reversed Attention (Katz & Wolf, NAACL 2025) for GPT-2, with the forward pass and a
//! hand-written backward pass in WGSL compute shaders through wgpu.
//!
//! One straight walk: prompt → tokens (`tokenizer`, `loss::Sequence`) → forward (`engine`, one
//! WGSL shader per layer under `layers`) → loss (`layers::cross_entropy`) → backward (the same
//! layer files) → RA (`ra`) → files (`maps`, `render`). `reference` is the same math in plain
//! float64 Rust, used by the tests and by `--backend cpu`.

pub mod bench;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod init;
pub mod layers;
pub mod loss;
pub mod maps;
pub mod model;
pub mod optim;
pub mod output;
pub mod pass;
pub mod ra;
pub mod reference;
pub mod render;
pub mod tasks;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
