//! The Llama/Qwen2-family decoder, generic over the burn backend.
//!
//! Follows transformers' `modeling_llama.py` / `modeling_qwen2.py` exactly: pre-norm RMSNorm
//! blocks, RoPE in the "rotate half" convention, grouped-query attention, SwiGLU MLP, optional
//! q/k/v bias (Qwen2) and optionally tied embeddings.
//!
//! # Design
//! Weights are kept in the checkpoint's own layout (`[out, in]` for projections) and under the
//! checkpoint's names (see [`Llama::named_tensors`]), so loading and saving are plain copies and a
//! saved directory loads back into transformers unchanged. The projection uses a transposed view,
//! which the CPU backend's strided GEMM consumes without a copy.
//!
//! One forward serves every caller: the sampler (prefill, then one token per step through a
//! [`KvCache`]) and the scorer (whole sequences, differentiable). Both lay a batch out the same way
//! (see [`crate::batch`]): per-row positions and a key-padding mask, so ragged batches compute
//! exactly what each sequence would compute alone.
//!
//! RMSNorm, the SwiGLU product, RoPE and the projections' backward run as fused kernels on the CPU
//! backend ([`crate::fused`]); every other backend computes the same formulas with burn's ops.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::fused;

/// Rotary tables and the attention mask for one forward call; built once, shared by all layers.
#[derive(Debug, Clone)]
pub struct ForwardCtx<B: Backend> {
    /// `cos(position * inv_freq)`, duplicated over both halves: `[batch, seq, 1, head_dim]`.
    pub cos: Tensor<B, 4>,
    /// `[-sin, sin](position * inv_freq)` (first half negated), same shape as `cos`.
    pub sin: Tensor<B, 4>,
    /// `true` where a query may not see a key, laid out for grouped-query attention:
    /// `[batch, kv_heads, rep * seq, past + seq]` with `rep = heads / kv_heads` copies of the
    /// `[seq, past + seq]` mask stacked along the query axis.
    pub mask: Tensor<B, 4, Bool>,
}

/// One decoder block.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub(crate) input_layernorm: Param<Tensor<B, 1>>,
    pub(crate) q_proj: Param<Tensor<B, 2>>,
    pub(crate) k_proj: Param<Tensor<B, 2>>,
    pub(crate) v_proj: Param<Tensor<B, 2>>,
    pub(crate) q_bias: Option<Param<Tensor<B, 1>>>,
    pub(crate) k_bias: Option<Param<Tensor<B, 1>>>,
    pub(crate) v_bias: Option<Param<Tensor<B, 1>>>,
    pub(crate) o_proj: Param<Tensor<B, 2>>,
    pub(crate) post_attention_layernorm: Param<Tensor<B, 1>>,
    pub(crate) gate_proj: Param<Tensor<B, 2>>,
    pub(crate) up_proj: Param<Tensor<B, 2>>,
    pub(crate) down_proj: Param<Tensor<B, 2>>,
}

/// The decoder: embedding, layers, final norm and (untied) output head.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub(crate) embed_tokens: Param<Tensor<B, 2>>,
    pub(crate) layers: Vec<DecoderLayer<B>>,
    pub(crate) norm: Param<Tensor<B, 1>>,
    /// `None` when the embedding is tied.
    pub(crate) lm_head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub(crate) config: ModelConfig,
}

/// `y = x W^T + b` with `W` in the checkpoint's `[out, in]` layout.
///
/// A 2-D matmul against the transposed view ([`fused::linear`]): the CPU backend's strided GEMM
/// reads `W^T` in place, where a batched matmul would first reshape (and so copy) the transposed
/// weight on every call.
fn proj<B: Backend>(
    x: Tensor<B, 3>,
    w: &Param<Tensor<B, 2>>,
    b: Option<&Param<Tensor<B, 1>>>,
) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    let w = w.val();
    let d_out = w.dims()[0];
    let y = fused::linear(x.reshape([batch * seq, d_in]), w);
    let y = match b {
        Some(b) => y + b.val().unsqueeze::<2>(),
        None => y,
    };
    y.reshape([batch, seq, d_out])
}

fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: &Param<Tensor<B, 1>>, eps: f64) -> Tensor<B, 3> {
    fused::rms_norm(x, w.val(), eps)
}

impl<B: Backend> DecoderLayer<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &ForwardCtx<B>,
        cfg: &ModelConfig,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let h = rms_norm(x.clone(), &self.input_layernorm, cfg.rms_norm_eps);
        let q = proj(h.clone(), &self.q_proj, self.q_bias.as_ref()).reshape([b, s, nh, hd]);
        let k = proj(h.clone(), &self.k_proj, self.k_bias.as_ref()).reshape([b, s, nkv, hd]);
        let v = proj(h, &self.v_proj, self.v_bias.as_ref()).reshape([b, s, nkv, hd]).swap_dims(1, 2);
        let q = fused::rope(q, &ctx.cos, &ctx.sin);
        let k = fused::rope(k, &ctx.cos, &ctx.sin);
        // Append to the cache (or start it); attention then runs over past + new keys.
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        // Grouped-query attention without copying K/V: the `rep` query heads that share a KV
        // head are stacked along the sequence axis (the mask is built to match, see ForwardCtx).
        let rep = nh / nkv;
        let q = q.reshape([b, nkv, rep * s, hd]);
        let mask = ctx.mask.clone();
        let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
        let a = attention(q, k, v, Some(mask), None, opts).reshape([b, nh, s, hd]).swap_dims(1, 2).reshape([
            b,
            s,
            nh * hd,
        ]);
        let x = x + proj(a, &self.o_proj, None);
        let h = rms_norm(x.clone(), &self.post_attention_layernorm, cfg.rms_norm_eps);
        let gate = proj(h.clone(), &self.gate_proj, None);
        let up = proj(h, &self.up_proj, None);
        x + proj(fused::swiglu(gate, up), &self.down_proj, None)
    }
}

impl<B: Backend> Llama<B> {
    /// The validated config this model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.val().device()
    }

    /// Final hidden states `[batch, seq, hidden]` for `tokens` `[batch, seq]`.
    ///
    /// With a cache, the keys/values of this call are appended to it and attention sees the past;
    /// `ctx.mask` must then cover `past + seq` keys.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<B, 2, Int>,
        ctx: &ForwardCtx<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, s] = tokens.dims();
        let hidden = self.config.hidden_size;
        let mut x = self.embed_tokens.val().select(0, tokens.reshape([b * s])).reshape([b, s, hidden]);
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, ctx, &self.config, slot);
        }
        if let Some(c) = cache {
            c.len += s;
        }
        rms_norm(x, &self.norm, self.config.rms_norm_eps)
    }

    /// Logits `[batch, seq, vocab]` from hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        proj(hidden, head, None)
    }

    /// Every tensor under its checkpoint name, in checkpoint order.
    pub fn named_tensors(&self) -> Vec<(String, NamedTensor<B>)> {
        use NamedTensor::{Matrix, Vector};
        let mut out = vec![("model.embed_tokens.weight".to_string(), Matrix(self.embed_tokens.val()))];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), Vector(layer.input_layernorm.val())));
            out.push((format!("{p}.self_attn.q_proj.weight"), Matrix(layer.q_proj.val())));
            out.push((format!("{p}.self_attn.k_proj.weight"), Matrix(layer.k_proj.val())));
            out.push((format!("{p}.self_attn.v_proj.weight"), Matrix(layer.v_proj.val())));
            for (name, bias) in [("q", &layer.q_bias), ("k", &layer.k_bias), ("v", &layer.v_bias)] {
                if let Some(bias) = bias {
                    out.push((format!("{p}.self_attn.{name}_proj.bias"), Vector(bias.val())));
                }
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), Matrix(layer.o_proj.val())));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                Vector(layer.post_attention_layernorm.val()),
            ));
            out.push((format!("{p}.mlp.gate_proj.weight"), Matrix(layer.gate_proj.val())));
            out.push((format!("{p}.mlp.up_proj.weight"), Matrix(layer.up_proj.val())));
            out.push((format!("{p}.mlp.down_proj.weight"), Matrix(layer.down_proj.val())));
        }
        out.push(("model.norm.weight".to_string(), Vector(self.norm.val())));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), Matrix(head.val())));
        }
        out
    }
}

/// A parameter as the checkpoint holds it: a vector (norms, biases) or a matrix.
#[derive(Debug, Clone)]
pub enum NamedTensor<B: Backend> {
    /// 1-D.
    Vector(Tensor<B, 1>),
    /// 2-D, `[out, in]` for projections.
    Matrix(Tensor<B, 2>),
}

impl<B: Backend> NamedTensor<B> {
    /// Copies the tensor to the host as f32, in its checkpoint shape.
    pub fn to_host(self) -> crate::host::HostTensor {
        match self {
            Self::Vector(t) => crate::host::to_host(t),
            Self::Matrix(t) => crate::host::to_host(t),
        }
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> NamedTensor<B> {
    /// The gradient of this parameter in `grads`, flattened to f32, if it has one.
    pub fn grad(&self, grads: &B::Gradients) -> Option<Vec<f32>> {
        match self {
            Self::Vector(t) => t.grad(grads).map(crate::host::to_vec_f32),
            Self::Matrix(t) => t.grad(grads).map(crate::host::to_vec_f32),
        }
    }
}
