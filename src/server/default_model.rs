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
