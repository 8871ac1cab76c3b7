//! A synthetic catalog of any size for the scale benchmark
//! (`genrec synth`): item embeddings from a Gaussian mixture whose components
//! have Zipf-distributed sizes (a few huge categories, a long tail), and user
//! histories that stay mostly inside a few components, so a tiny model has
//! something to learn.
//!
//! Files, streamed (10^7 items never sit in memory):
//! - `NAME.jsonl`: one `{"id": "s<i>", "title": ...}` per line;
//! - `NAME.safetensors`: one tensor `embeddings` `[items, dim]` (F32 or F16);
//! - `NAME.inter.json`: `{"user": [item id, ...]}` in time order.
//!
//! Every item is drawn from its own seeded generator, so the output is the
//! same for a seed whatever the thread count.

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::DataError;
use crate::progress::Progress;

/// Options of `genrec synth`.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub items: usize,
    pub dim: usize,
    /// Mixture components (0: one per 1,000 items, between 16 and 65,536).
    pub components: usize,
    /// Zipf exponent of the component sizes.
    pub zipf: f64,
    /// Spread of an item around its component's centre (relative to the
    /// distance between centres).
    pub spread: f32,
    pub users: usize,
    /// Mean history length (at least 5 per user).
    pub mean_length: usize,
    /// Store embeddings as F16 (half the file).
    pub f16: bool,
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            items: 100_000,
            dim: 64,
            components: 0,
            zipf: 1.05,
            spread: 0.6,
            users: 20_000,
            mean_length: 12,
            f16: false,
            seed: 7,
        }
    }
}

/// The mixture: component centres and cumulative weights.
pub struct Mixture {
    centres: Vec<f32>,
    cumulative: Vec<f64>,
    dim: usize,
}

impl Mixture {
    pub fn new(o: &SynthOptions) -> Self {
        let k = if o.components > 0 { o.components } else { (o.items / 1000).clamp(16, 65_536) };
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let mut centres = vec![0f32; k * o.dim];
        for c in centres.chunks_mut(o.dim) {
            c.iter_mut().for_each(|x| *x = rng.sample(StandardNormal));
            let n = c.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            c.iter_mut().for_each(|x| *x /= n);
        }
        let w: Vec<f64> = (0..k).map(|r| 1.0 / ((r + 1) as f64).powf(o.zipf)).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let cumulative = w
            .iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect();
        Mixture { centres, cumulative, dim: o.dim }
    }

    fn components(&self) -> usize {
        self.cumulative.len()
    }

    fn pick(&self, u: f64) -> usize {
        self.cumulative.partition_point(|&c| c < u).min(self.components() - 1)
    }

    /// Item `i`: its component and unit embedding (items past the catalog's
    /// count are new items from the same mixture).
    pub fn item(&self, i: usize, o: &SynthOptions, out: &mut [f32]) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let c = self.pick(rng.random::<f64>());
        let centre = &self.centres[c * self.dim..(c + 1) * self.dim];
        let scale = o.spread / (self.dim as f32).sqrt();
        for (x, m) in out.iter_mut().zip(centre) {
            let z: f32 = rng.sample(StandardNormal);
            *x = m + scale * z;
        }
        let n = out.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        out.iter_mut().for_each(|x| *x /= n);
        c
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |e| DataError::Io { path: path.into(), source: e }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthReport {
    pub items: usize,
    pub components: usize,
    /// Items in the largest component.
    pub largest_component: usize,
    pub users: usize,
    pub seconds: f64,
}

/// Writes `NAME.jsonl`, `NAME.safetensors` and `NAME.inter.json` into `dir`.
pub fn write(dir: &Path, name: &str, o: &SynthOptions) -> Result<SynthReport, DataError> {
    let t0 = std::time::Instant::now();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mix = Mixture::new(o);
    let (n, dim) = (o.items, o.dim);
    let items_path = dir.join(format!("{name}.jsonl"));
    let emb_path = dir.join(format!("{name}.safetensors"));
    let mut items = BufWriter::with_capacity(1 << 20, std::fs::File::create(&items_path).map_err(io(&items_path))?);
    let mut emb = BufWriter::with_capacity(1 << 22, std::fs::File::create(&emb_path).map_err(io(&emb_path))?);
    // safetensors: u64 header length, JSON header padded to 8 bytes, then the data
    let width = if o.f16 { 2 } else { 4 };
    let dtype = if o.f16 { "F16" } else { "F32" };
    let mut header =
        format!(r#"{{"embeddings":{{"dtype":"{dtype}","shape":[{n},{dim}],"data_offsets":[0,{}]}}}}"#, n * dim * width);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    emb.write_all(&(header.len() as u64).to_le_bytes()).map_err(io(&emb_path))?;
    emb.write_all(header.as_bytes()).map_err(io(&emb_path))?;
    let mut component = vec![0u32; n];
    let p = Progress::new("synthetic items", n as u64);
    const BLOCK: usize = 1 << 16;
    for start in (0..n).step_by(BLOCK) {
        let end = (start + BLOCK).min(n);
        let mut rows = vec![0f32; (end - start) * dim];
        let comps: Vec<usize> =
            rows.par_chunks_mut(dim).enumerate().map(|(j, out)| mix.item(start + j, o, out)).collect();
        for (j, &c) in comps.iter().enumerate() {
            let i = start + j;
            component[i] = c as u32;
            writeln!(items, r#"{{"id":"s{i}","title":"synthetic item {i} of group {c}","categories":["group {c}"]}}"#)
                .map_err(io(&items_path))?;
        }
        let mut bytes = Vec::with_capacity(rows.len() * width);
        if o.f16 {
            rows.iter().for_each(|x| bytes.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes()));
        } else {
            rows.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        }
        emb.write_all(&bytes).map_err(io(&emb_path))?;
        p.set(end as u64);
    }
    items.flush().map_err(io(&items_path))?;
    emb.flush().map_err(io(&emb_path))?;
    p.finish();

    // users: each follows one to three components, items within a component
    // by a Zipf-skewed rank (its popular items)
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); mix.components()];
    for (i, &c) in component.iter().enumerate() {
        members[c as usize].push(i as u32);
    }
    let largest_component = members.iter().map(Vec::len).max().unwrap_or(0);
    drop(component);
    let inter_path = dir.join(format!("{name}.inter.json"));
    let mut inter = BufWriter::new(std::fs::File::create(&inter_path).map_err(io(&inter_path))?);
    inter.write_all(b"{").map_err(io(&inter_path))?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed ^ 0x5eed);
    let mut first = true;
    for u in 0..o.users {
        let interests: Vec<usize> = (0..rng.random_range(1..=3))
            .map(|_| mix.pick(rng.random::<f64>()))
            .filter(|&c| !members[c].is_empty())
            .collect();
        if interests.is_empty() {
            continue;
        }
        let len = 5 + rng.random_range(0..(2 * o.mean_length.saturating_sub(5)).max(1));
        let seq: Vec<String> = (0..len)
            .map(|_| {
                let m = &members[interests[rng.random_range(0..interests.len())]];
                let rank = ((m.len() as f64).powf(rng.random::<f64>()) - 1.0) as usize;
                format!("\"s{}\"", m[rank.min(m.len() - 1)])
            })
            .collect();
        if !first {
            inter.write_all(b",").map_err(io(&inter_path))?;
        }
        first = false;
        write!(inter, "\"u{u}\":[{}]", seq.join(",")).map_err(io(&inter_path))?;
    }
    inter.write_all(b"}").map_err(io(&inter_path))?;
    inter.flush().map_err(io(&inter_path))?;
    Ok(SynthReport {
        items: n,
        components: mix.components(),
        largest_component,
        users: o.users,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_readable_files_with_zipf_components() {
        let dir = std::env::temp_dir().join(format!("genrec-synth-{}", std::process::id()));
        let o = SynthOptions { items: 3000, dim: 8, components: 20, users: 50, ..Default::default() };
        let r = write(&dir, "s", &o).unwrap();
        assert_eq!(r.items, 3000);
        assert!(r.largest_component > 3000 / 20 * 2, "Zipf: the first component is large ({})", r.largest_component);
        let mut n = 0;
        super::super::for_each_item(&dir.join("s.jsonl"), |line, it| {
            assert_eq!(it.id, format!("s{}", line - 1));
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 3000);
        let rows = crate::catalog::build::MappedRows::open(&dir.join("s.safetensors"), 3000).unwrap();
        use crate::catalog::rqkmeans::Rows;
        let mut v = vec![0f32; 8];
        rows.row_into(5, &mut v);
        assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        let inter = super::super::load_interactions(&dir.join("s.inter.json")).unwrap();
        assert_eq!(inter.users.len(), 50);
        assert!(inter.sequences.iter().all(|s| s.len() >= 5));
        // the same seed gives the same bytes
        let a = std::fs::read(dir.join("s.safetensors")).unwrap();
        write(&dir, "s", &o).unwrap();
        assert_eq!(a, std::fs::read(dir.join("s.safetensors")).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
