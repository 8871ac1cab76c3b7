//! The decoder's weights, dense or quantized. The generative model trains and
//! serves dense tensors; the intent LLM (a GGUF file, e.g. SmolLM2 in Q4_1)
//! keeps its weights in their quantized blocks and multiplies them as stored
//! with candle's quantized matrix product (activations quantized to 8 bits per
//! block, as llama.cpp does), at a quarter of the f32 memory or less.
//!
//! [`Weights`] is where [`super::Transformer::build`] takes tensors from:
//! a `VarBuilder` (safetensors, training) or [`QuantWeights`] (GGUF).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::ops::serve_linear;
use super::q4_1::Q41Matrix;
use super::ModelError;

/// A quantized matrix (`[out, in]`), multiplied as stored: Q4_1 blocks by
/// genrec's own kernel, other block types by candle's.
#[derive(Clone)]
pub enum QMat {
    Q41(Q41Matrix),
    Candle(QMatMul),
}

impl QMat {
    pub fn new(q: Arc<QTensor>) -> Result<Self, ModelError> {
        Ok(match q.dtype() {
            GgmlDType::Q4_1 => QMat::Q41(Q41Matrix::new(q)?),
            _ => QMat::Candle(QMatMul::from_arc(q)?),
        })
    }

    /// `x · wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            QMat::Q41(q) => q.forward(x),
            QMat::Candle(q) => Ok(q.forward(&x.contiguous()?)?),
        }
    }
}

/// One projection's weight (`[out, in]`, applied as `x · wᵀ`).
#[derive(Clone)]
pub enum Proj {
    Dense(Linear),
    /// Quantized blocks, multiplied as stored.
    Quant(QMat),
}

impl Proj {
    /// `x · wᵀ (+ b)`, differentiable when dense.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Proj::Dense(l) => Ok(l.forward(x)?),
            Proj::Quant(q) => q.forward(x),
        }
    }

    /// The serving product: few dense rows go through the small-product kernel.
    pub fn serve(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Proj::Dense(l) => serve_linear(l, x),
            Proj::Quant(_) => self.forward(x),
        }
    }

    pub fn dense(&self) -> Option<&Linear> {
        match self {
            Proj::Dense(l) => Some(l),
            Proj::Quant(_) => None,
        }
    }
}

/// The token embedding table `[vocab, hidden]`.
#[derive(Clone)]
pub enum Embed {
    Dense(Tensor),
    /// Quantized rows, dequantized as tokens are looked up.
    Quant(Arc<QTensor>),
}

impl Embed {
    /// Rows of the token ids `ids` (`u32`, `[n]`): `[n, hidden]`.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Embed::Dense(t) => Ok(t.index_select(ids, 0)?),
            Embed::Quant(q) => {
                // the rows' blocks gathered into one tensor, dequantised at once
                let (vocab, h) = q.shape().dims2()?;
                let data = q.data()?;
                let row_bytes = data.len() / vocab.max(1);
                let ids = ids.to_vec1::<u32>()?;
                let mut bytes = Vec::with_capacity(ids.len() * row_bytes);
                for &id in &ids {
                    let id = id as usize;
                    if id >= vocab {
                        return Err(ModelError::Input(format!("token {id} outside the vocabulary of {vocab}")));
                    }
                    bytes.extend_from_slice(&data[id * row_bytes..(id + 1) * row_bytes]);
                }
                let dev = q.device();
                Ok(qtensor_from_ggml(q.dtype(), &bytes, vec![ids.len(), h], &dev)?.dequantize(&dev)?)
            }
        }
    }

    /// Dtype of the looked-up rows (and so of the activations).
    pub fn dtype(&self) -> DType {
        match self {
            Embed::Dense(t) => t.dtype(),
            Embed::Quant(_) => DType::F32,
        }
    }

    /// The output layer tied to this table.
    pub fn tied_head(&self) -> Result<Head, ModelError> {
        Ok(match self {
            Embed::Dense(t) => Head::Dense(t.clone()),
            Embed::Quant(q) => Head::Quant(QMat::new(q.clone())?),
        })
    }
}

/// The output layer `[vocab, hidden]`.
#[derive(Clone)]
pub enum Head {
    Dense(Tensor),
    /// Quantized blocks (a tied one shares the embedding table's).
    Quant(QMat),
}

/// Where the decoder's tensors come from, by transformers' names.
pub trait Weights {
    /// A vector (norm weights), dense.
    fn vector(&self, name: &str, len: usize) -> Result<Tensor, ModelError>;
    /// The projection `name` (`name.weight` `[out, inp]`, `name.bias`).
    fn proj(&self, name: &str, inp: usize, out: usize, bias: bool) -> Result<Proj, ModelError>;
    fn embed(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embed, ModelError>;
    fn head(&self, name: &str, vocab: usize, hidden: usize) -> Result<Head, ModelError>;
    fn dtype(&self) -> DType;
    fn device(&self) -> Device;
}

impl Weights for VarBuilder<'_> {
    fn vector(&self, name: &str, len: usize) -> Result<Tensor, ModelError> {
        Ok(self.get(len, name)?)
    }

    fn proj(&self, name: &str, inp: usize, out: usize, bias: bool) -> Result<Proj, ModelError> {
        let w = self.get((out, inp), &format!("{name}.weight"))?;
        let b = if bias { Some(self.get(out, &format!("{name}.bias"))?) } else { None };
        Ok(Proj::Dense(Linear::new(w, b)))
    }

    fn embed(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embed, ModelError> {
        Ok(Embed::Dense(self.get((vocab, hidden), name)?))
    }

    fn head(&self, name: &str, vocab: usize, hidden: usize) -> Result<Head, ModelError> {
        Ok(Head::Dense(self.get((vocab, hidden), name)?))
    }

    fn dtype(&self) -> DType {
        VarBuilder::dtype(self)
    }

    fn device(&self) -> Device {
        VarBuilder::device(self).clone()
    }
}

/// Quantized matrices and dense vectors (a GGUF file's), by transformers' names.
pub struct QuantWeights {
    pub quant: HashMap<String, Arc<QTensor>>,
    pub dense: HashMap<String, Tensor>,
    pub device: Device,
}

impl QuantWeights {
    fn take(&self, name: &str, shape: (usize, usize)) -> Result<Arc<QTensor>, ModelError> {
        let q = self.quant.get(name).ok_or_else(|| ModelError::Weights(format!("tensor {name} is missing")))?;
        if q.shape().dims2()? != shape {
            return Err(ModelError::Weights(format!("tensor {name} has shape {:?}, expected {shape:?}", q.shape())));
        }
        Ok(q.clone())
    }
}

impl Weights for QuantWeights {
    fn vector(&self, name: &str, len: usize) -> Result<Tensor, ModelError> {
        let t = self.dense.get(name).ok_or_else(|| ModelError::Weights(format!("tensor {name} is missing")))?;
        if t.dims() != [len] {
            return Err(ModelError::Weights(format!("tensor {name} has shape {:?}, expected [{len}]", t.dims())));
        }
        Ok(t.clone())
    }

    fn proj(&self, name: &str, inp: usize, out: usize, bias: bool) -> Result<Proj, ModelError> {
        if bias {
            return Err(ModelError::Weights(format!("{name}: quantized projections with a bias are not read")));
        }
        let q = self.take(&format!("{name}.weight"), (out, inp))?;
        Ok(Proj::Quant(QMat::new(q)?))
    }

    fn embed(&self, name: &str, vocab: usize, hidden: usize) -> Result<Embed, ModelError> {
        Ok(Embed::Quant(self.take(name, (vocab, hidden))?))
    }

    fn head(&self, name: &str, vocab: usize, hidden: usize) -> Result<Head, ModelError> {
        Ok(Head::Quant(QMat::new(self.take(name, (vocab, hidden))?)?))
    }

    fn dtype(&self) -> DType {
        DType::F32
    }

    fn device(&self) -> Device {
        self.device.clone()
    }
}
