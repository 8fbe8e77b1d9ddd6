//! Tensors on the host: a model's parameters and outputs as plain `f32` vectors with their shape,
//! the form checkpoints, weight sync and metrics take them in. Its own module so that the model
//! ([`crate::llama`]) and the checkpoint reader ([`crate::weights`]) both use it without using each
//! other.

use burn::prelude::*;

/// A tensor read from a checkpoint, widened to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape in the checkpoint's (PyTorch) order.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f32>,
}

/// Copies a tensor to the host as f32.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    HostTensor { shape, data: to_vec_f32(t) }
}

/// A float tensor's elements as f32, row-major.
pub fn to_vec_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    match t.into_data().convert::<f32>().into_vec::<f32>() {
        Ok(v) => v,
        Err(e) => unreachable!("data converted to f32 reads back as f32: {e:?}"),
    }
}
