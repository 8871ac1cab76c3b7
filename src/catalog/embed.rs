//! Item text embeddings with all-MiniLM-L6-v2 (Sentence-BERT, Reimers & Gurevych
//! 2019): the BERT encoder of [`super::bert`], mean pooling over real tokens,
//! L2 normalisation.
//! `scripts/fetch-models.sh` puts the model in `.models/all-minilm-l6-v2`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{Tokenizer, TruncationParams};

use super::bert::{mean_pool_normalized, Bert, BertConfig};
use super::CatalogError;

/// Where `scripts/fetch-models.sh` puts the encoder, relative to the repo root.
pub const DEFAULT_ENCODER_DIR: &str = ".models/all-minilm-l6-v2";
/// Longest input in tokens (the model was trained on 128; longer text is cut).
const MAX_TOKENS: usize = 128;

/// A sentence encoder: text in, unit-length vectors out.
pub struct TextEncoder {
    model: Bert,
    tokenizer: Tokenizer,
    dim: usize,
    name: String,
}

impl TextEncoder {
    /// Loads a BERT sentence encoder folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`).
    pub fn load(dir: &Path) -> Result<Self, CatalogError> {
        let file = |f: &str| -> Result<PathBuf, CatalogError> {
            let p = dir.join(f);
            if p.exists() {
                Ok(p)
            } else {
                Err(CatalogError::Format(format!(
                    "{} not found: run scripts/fetch-models.sh to fetch the text encoder",
                    p.display()
                )))
            }
        };
        let cfg_path = file("config.json")?;
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| CatalogError::io(&cfg_path, e))?;
        let cfg: BertConfig =
            serde_json::from_str(&cfg_text).map_err(|e| CatalogError::Json { path: cfg_path, source: e })?;
        let mut tokenizer =
            Tokenizer::from_file(file("tokenizer.json")?).map_err(|e| CatalogError::Tokenizer(e.to_string()))?;
        // The shipped tokenizer pads every input to 128: pad ourselves per batch.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| CatalogError::Tokenizer(e.to_string()))?;
        // SAFETY: the file is memory-mapped read-only and not modified while mapped.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[file("model.safetensors")?], DType::F32, &Device::Cpu)? };
        let model = Bert::load(vb, &cfg)?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(TextEncoder { model, tokenizer, dim: cfg.hidden_size, name })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Embeds texts in batches; `progress(done, total)` is called after each batch.
    /// Returns `texts.len() × dim` values, each row of unit length.
    pub fn embed(
        &self,
        texts: &[String],
        batch: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<f32>, CatalogError> {
        let enc =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| CatalogError::Tokenizer(e.to_string()))?;
        // sort by length so that batches carry little padding
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| enc[i].get_ids().len());
        let mut out = vec![0f32; texts.len() * self.dim];
        let mut done = 0;
        for chunk in order.chunks(batch.max(1)) {
            let len = chunk.iter().map(|&i| enc[i].get_ids().len()).max().unwrap_or(1).max(1);
            let mut ids = vec![0u32; chunk.len() * len];
            let mut mask = vec![0u32; chunk.len() * len];
            for (r, &i) in chunk.iter().enumerate() {
                for (j, &t) in enc[i].get_ids().iter().enumerate() {
                    ids[r * len + j] = t;
                    mask[r * len + j] = 1;
                }
            }
            let dev = Device::Cpu;
            let ids = Tensor::from_vec(ids, (chunk.len(), len), &dev)?;
            let mask = Tensor::from_vec(mask, (chunk.len(), len), &dev)?;
            let hidden = self.model.forward(&ids, &mask)?; // [b, t, d]
            let rows = mean_pool_normalized(&hidden, &mask)?.to_vec2::<f32>()?;
            for (r, &i) in chunk.iter().enumerate() {
                out[i * self.dim..(i + 1) * self.dim].copy_from_slice(&rows[r]);
            }
            done += chunk.len();
            progress(done, texts.len());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minilm_embeds_similar_texts_closer() {
        let Some(dir) = crate::fetched_model(DEFAULT_ENCODER_DIR) else { return };
        let enc = TextEncoder::load(&dir).unwrap();
        assert_eq!(enc.dim(), 384);
        let texts: Vec<String> = ["red nail polish", "crimson nail lacquer", "stainless steel pipe wrench", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // batch 1 and batch 4 must agree (padding is masked out)
        let a = enc.embed(&texts, 4, |_, _| {}).unwrap();
        let b = enc.embed(&texts, 1, |_, _| {}).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4);
        }
        let row = |i: usize| &a[i * 384..(i + 1) * 384];
        let dot = |i: usize, j: usize| row(i).iter().zip(row(j)).map(|(x, y)| x * y).sum::<f32>();
        for i in 0..4 {
            assert!((dot(i, i) - 1.0).abs() < 1e-4, "unit length");
        }
        assert!(dot(0, 1) > dot(0, 2) + 0.2, "{} vs {}", dot(0, 1), dot(0, 2));
    }

    /// Texts of every kind the catalog meets: short, accented, CJK, emoji,
    /// longer than the 128 tokens the encoder reads, a real product title.
    fn reference_texts() -> Vec<String> {
        let long = "long-lasting matte liquid lipstick ".repeat(40);
        [
            "red nail polish",
            "crimson nail lacquer",
            "stainless steel pipe wrench",
            "a",
            "Crème brûlée — café au lait, naïve résumé 日本語のテキスト 🙂",
            &long,
            "Maybelline New York Color Sensational Creamy Matte Lip Color, Touch of Spice, 0.15 Ounce",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// genrec's BERT gives the embeddings candle-transformers' BertModel gave
    /// for the same texts (recorded in `testdata/minilm_reference.json`
    /// before that dependency was dropped), batched and one by one.
    #[test]
    fn minilm_matches_the_reference_encoder() {
        let Some(dir) = crate::fetched_model(DEFAULT_ENCODER_DIR) else { return };
        let enc = TextEncoder::load(&dir).unwrap();
        let reference: serde_json::Value =
            serde_json::from_str(include_str!("testdata/minilm_reference.json")).unwrap();
        let texts = reference_texts();
        assert_eq!(serde_json::json!(texts), reference["texts"]);
        let want: Vec<f32> = reference["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect();
        for batch in [3, 1] {
            let got = enc.embed(&texts, batch, |_, _| {}).unwrap();
            assert_eq!(got.len(), want.len());
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 2e-5, "batch {batch}: largest difference {worst}");
        }
    }
}
