//! Loading a model folder together with its catalog, checked to belong
//! together (used by `genrec eval`, the benchmarks and the server's start).

use std::path::Path;
use std::sync::Arc;

use super::EngineError;
use crate::catalog::Catalog;
use crate::model::Model;

/// A model with the catalog it generates over.
pub struct Pair {
    pub model: Arc<Model>,
    pub catalog: Arc<Catalog>,
}

/// Checks that a model's sidecar matches a catalog.
pub fn check_pair(model: &Model, catalog: &Catalog) -> Result<(), EngineError> {
    model.sidecar.validate(model.config.vocab_size, catalog.manifest()).map_err(EngineError::Mismatch)
}

impl Pair {
    /// Pairs a model with a catalog after checking that they belong together.
    pub fn new(model: Model, catalog: Catalog) -> Result<Self, EngineError> {
        check_pair(&model, &catalog)?;
        Ok(Pair { model: Arc::new(model), catalog: Arc::new(catalog) })
    }

    /// Loads a model folder and its catalog: `catalog_dir` when given, else the
    /// folder its `genrec.json` names.
    pub fn load(model_dir: &Path, catalog_dir: Option<&Path>, dev: &candle_core::Device) -> Result<Self, EngineError> {
        let (model, catalog) = load_pair(model_dir, catalog_dir, dev, candle_core::DType::F32)?;
        Self::new(model, catalog)
    }
}

/// Loads a model folder (onto `dev`, in `dtype`) and the catalog it names (or
/// `catalog_dir`), unchecked; an ensemble's folder is refused (the callers
/// run one model).
pub fn load_pair(
    model_dir: &Path,
    catalog_dir: Option<&Path>,
    dev: &candle_core::Device,
    dtype: impl Into<crate::device::DTypeChoice>,
) -> Result<(Model, Catalog), EngineError> {
    let model = Model::load_as(model_dir, dev, dtype)?;
    if !model.sidecar.members.is_empty() {
        return Err(EngineError::Mismatch(crate::model::ModelError::Sidecar(format!(
            "{} is an ensemble of {} models and this command runs one: pass one member's folder (`genrec serve` and `genrec eval` take the ensemble)",
            model_dir.display(),
            model.sidecar.members.len() + 1
        ))));
    }
    let dir = catalog_dir.map(Path::to_path_buf).or_else(|| model.catalog_dir()).ok_or_else(|| {
        EngineError::Mismatch(crate::model::ModelError::Sidecar("the model names no catalog: pass --catalog".into()))
    })?;
    ensure_item_map_catalog(&model, &dir)?;
    let catalog = Catalog::load(&dir)?;
    Ok((model, catalog))
}

/// For an LLM-layout model ([`crate::model::llm`]): writes the catalog its
/// item map makes to `dir` when nothing is there yet (the first start of a
/// trainer's folder), so that the folder serves as its trainer wrote it.
/// Returns whether it wrote one.
pub fn ensure_item_map_catalog(model: &Model, dir: &Path) -> Result<bool, EngineError> {
    let Some(layout) = model.vocab.text_layout() else {
        return Ok(false);
    };
    if dir.exists() {
        return Ok(false);
    }
    let catalog = layout.catalog(&model.sidecar.name)?;
    catalog.save(dir)?;
    tracing::info!(
        items = catalog.len(),
        aliases_dropped = layout.aliases_dropped,
        catalog = %dir.display(),
        "wrote the catalog of the model's item map"
    );
    Ok(true)
}
