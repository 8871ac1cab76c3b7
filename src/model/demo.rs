//! The embedded default: a small model trained on the synthetic demo world
//! (`models/demo`, see `models/README.md`), compiled into the binary so that
//! `genrec serve` works with no arguments from any folder.

use candle_core::Device;

use crate::catalog::{Catalog, CatalogError};
use crate::model::{Model, ModelError};

#[derive(Debug, thiserror::Error)]
pub enum DefaultModelError {
    #[error("embedded catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("embedded model: {0}")]
    Model(#[from] ModelError),
}

impl From<candle_core::Error> for DefaultModelError {
    fn from(e: candle_core::Error) -> Self {
        DefaultModelError::Model(ModelError::Tensor(e))
    }
}

/// Loads the embedded demo model and its catalog.
pub fn load(dev: &Device) -> Result<(Model, Catalog), DefaultModelError> {
    load_as(dev, candle_core::DType::F32)
}

/// [`load`] with the model in `dtype`.
pub fn load_as(dev: &Device, dtype: candle_core::DType) -> Result<(Model, Catalog), DefaultModelError> {
    let catalog = Catalog::from_bytes(
        include_bytes!("../../models/demo/catalog/catalog.json"),
        include_bytes!("../../models/demo/catalog/items.json"),
        include_bytes!("../../models/demo/catalog/catalog.safetensors"),
    )?;
    let model = Model::from_bytes_as(
        include_bytes!("../../models/demo/model/config.json"),
        include_bytes!("../../models/demo/model/model.safetensors"),
        include_bytes!("../../models/demo/model/genrec.json"),
        dev,
        dtype,
    )?;
    Ok((model, catalog))
}

/// A second model of the demo's layout: the demo weights, each moved by a
/// fixed pattern of relative size `scale` (a stand-in for another seed where
/// an ensemble is checked: its answers differ from the demo model's).
pub fn variant_as(dev: &Device, dtype: candle_core::DType, scale: f32) -> Result<Model, DefaultModelError> {
    Ok(Model::from_bytes_as(
        include_bytes!("../../models/demo/model/config.json"),
        &variant_weights(scale)?,
        include_bytes!("../../models/demo/model/genrec.json"),
        dev,
        dtype,
    )?)
}

/// The weights file (`model.safetensors` bytes) of [`variant_as`].
pub fn variant_weights(scale: f32) -> Result<Vec<u8>, DefaultModelError> {
    let cpu = Device::Cpu;
    let mut tensors =
        candle_core::safetensors::load_buffer(include_bytes!("../../models/demo/model/model.safetensors"), &cpu)
            .map_err(ModelError::from)?;
    for t in tensors.values_mut() {
        let n = t.elem_count() as u32;
        let pattern = (candle_core::Tensor::arange(0u32, n, &cpu)?.to_dtype(candle_core::DType::F32)? * 0.7)?
            .sin()?
            .reshape(t.shape())?;
        *t = (&*t + (t.mul(&pattern)? * scale as f64)?)?;
    }
    Ok(safetensors::serialize(&tensors, None).map_err(|e| ModelError::Weights(e.to_string()))?)
}
