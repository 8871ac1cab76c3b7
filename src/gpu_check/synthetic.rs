//! The world of `gpu-check --synthetic`: a catalog of random semantic IDs in
//! one of the benchmarks' layouts, and a random-weight model of a
//! production shape over it ([`crate::model::synthetic`]), both built on the
//! machine that runs the check, so nothing large travels to the device.

use std::collections::HashSet;

use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::CheckError;
use crate::catalog::{catalog_fingerprint, Catalog, Manifest};
use crate::model::synthetic::{build, Layout, Shape};
use crate::model::Model;

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct Synthetic {
    pub shape: Shape,
    pub layout: Layout,
    pub items: usize,
}

/// `n` distinct semantic IDs drawn uniformly from the code space of
/// `sizes`, flat (`sids[i * levels + l]`), in drawing order.
pub fn random_sids(n: usize, sizes: &[u32], seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut sids = Vec::with_capacity(n * sizes.len());
    while seen.len() < n {
        let sid: Vec<u32> = sizes.iter().map(|&s| rng.random_range(0..s)).collect();
        if seen.insert(sid.clone()) {
            sids.extend(sid);
        }
    }
    sids
}

impl Synthetic {
    /// `items` distinct random semantic IDs, uniform over the layout's code
    /// space (item ids `"0"`, `"1"`, ...; a one-dimensional zero embedding).
    pub fn catalog(&self, seed: u64) -> Result<Catalog, CheckError> {
        let sizes = self.layout.codebook_sizes();
        let space: f64 = sizes.iter().map(|&s| s as f64).product();
        if self.items == 0 || self.items as f64 > space / 2.0 {
            return Err(CheckError::Other(format!("{} items do not fit half of a {sizes:?} code space", self.items)));
        }
        let sids = random_sids(self.items, &sizes, seed);
        let ids: Vec<String> = (0..self.items).map(|i| i.to_string()).collect();
        let manifest = Manifest::new("synthetic", self.items, sizes, 1, "none", seed, catalog_fingerprint(&ids, &sids));
        Ok(Catalog::new(manifest, ids.clone(), ids, sids, vec![0.0; self.items], Vec::new())?)
    }

    /// The model over `catalog`, reading up to `history_items` items.
    pub fn model(
        &self,
        catalog: &Catalog,
        history_items: usize,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Model, CheckError> {
        build(self.shape, catalog.manifest(), history_items, seed, device, dtype)
            .map_err(|e| CheckError::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_distinct_ids_in_the_layout_and_the_model_fits_it() {
        let s = Synthetic { shape: Shape::Tiny, layout: Layout::Tiger, items: 3_000 };
        let c = s.catalog(5).unwrap();
        assert_eq!(c.len(), 3_000);
        assert_eq!(c.trie().base().num_items(), 3_000);
        assert!((0..3_000u32).all(|i| c.sid(i).len() == 4 && c.sid(i).iter().all(|&x| x < 256)));
        let m = s.model(&c, 50, 1, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(m.config.vocab_size, 3 + 4 * 256);
        assert_eq!(m.sidecar.catalog_fingerprint, c.manifest().fingerprint);
        crate::engine::pair::check_pair(&m, &c).unwrap();
        assert!(Synthetic { items: 0, ..s }.catalog(5).is_err());
    }
}
