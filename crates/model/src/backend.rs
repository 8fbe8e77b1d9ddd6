//! The backends sluice runs on, by name: the CPU always, CUDA with the `cuda` feature.

/// The CPU backend (burn's Flex: pure Rust, SIMD, multi-threaded GEMM).
pub type Cpu = burn::backend::Flex;
/// The CPU backend with autodiff, for training.
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;
/// The CUDA backend (NVRTC at run time), with the `cuda` feature.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;
