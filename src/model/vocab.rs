//! How a model's tokens carry semantic IDs, resolved once when the model
//! loads. Two layouts, told apart here and nowhere else:
//! - **codes** (genrec's own, [`super::sidecar`]): `bos`, profile tokens, then
//!   each history item's codes; each level's codes are one contiguous token
//!   range;
//! - **text** (an LLM with semantic-ID tokens added to its text vocabulary,
//!   [`super::llm`]): a prompt with the history's semantic-ID tokens inside,
//!   read by the checkpoint's tokenizer; a level's tokens may sit anywhere in
//!   the vocabulary.
//!
//! The search reads both the same way: the token of a level's code, and the
//! level's output rows (a range of the output layer, or its rows gathered
//! once at load).

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::llm::{PromptText, TextLayout};
use super::{ModelError, Sidecar};

/// One level's tokens: `ids[code]`, and the first id when they are
/// contiguous.
#[derive(Debug, Clone)]
struct LevelTokens {
    ids: Vec<u32>,
    start: Option<u32>,
}

impl LevelTokens {
    fn new(ids: Vec<u32>) -> Self {
        let start =
            ids.first().copied().filter(|&s| ids.iter().enumerate().all(|(i, &t)| t as usize == s as usize + i));
        LevelTokens { ids, start }
    }
}

/// What becomes a request's input tokens.
#[derive(Clone)]
pub enum Input {
    /// `[bos, profile tokens, codes of each item]`.
    Codes { bos: u32 },
    /// A rendered prompt, tokenized.
    Text(Arc<TextLayout>),
}

/// A model's vocabulary layout, resolved.
#[derive(Clone)]
pub struct Vocab {
    levels: Vec<LevelTokens>,
    /// The token fed for dead beams and right padding.
    pub pad: u32,
    pub input: Input,
}

/// Where a level's logits come from in the output layer.
#[derive(Debug, Clone)]
pub enum LevelHead {
    /// The rows `start .. start + len`.
    Range { start: usize, len: usize },
    /// The level's rows gathered (`[codes, hidden]`), and their token ids (on
    /// the model's device) for picking columns of full logits.
    Rows { weights: Tensor, ids: Tensor },
}

impl Vocab {
    /// genrec's own layout, from its sidecar.
    pub fn codes(sc: &Sidecar) -> Self {
        let levels = sc
            .code_offsets
            .iter()
            .zip(&sc.codebook_sizes)
            .map(|(&o, &s)| LevelTokens::new((o..o + s).collect()))
            .collect();
        Vocab { levels, pad: sc.pad_token_id, input: Input::Codes { bos: sc.bos_token_id } }
    }

    /// An LLM's layout: each level's token ids from the text layout.
    pub fn text(layout: Arc<TextLayout>, pad: u32) -> Self {
        let levels = layout.level_ids.iter().map(|ids| LevelTokens::new(ids.clone())).collect();
        Vocab { levels, pad, input: Input::Text(layout) }
    }

    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// The same input with each level's codes on other tokens
    /// (`levels[l][code]`), e.g. the semantic-ID tokens of a checkpoint that
    /// scatters them through its vocabulary.
    pub fn with_levels(&self, levels: Vec<Vec<u32>>) -> Vocab {
        Vocab { levels: levels.into_iter().map(LevelTokens::new).collect(), pad: self.pad, input: self.input.clone() }
    }

    /// This layout's tokens dealt round-robin over the levels from the last
    /// token down, for [`Vocab::with_levels`]: no level keeps a contiguous
    /// range (a test of the gathered-rows path on any model).
    pub fn scattered_levels(&self) -> Vec<Vec<u32>> {
        let mut pool: Vec<u32> = self.levels.iter().flat_map(|l| l.ids.iter().copied()).collect();
        pool.sort_unstable_by(|a, b| b.cmp(a));
        let want: Vec<usize> = self.levels.iter().map(|l| l.ids.len()).collect();
        let mut out: Vec<Vec<u32>> = want.iter().map(|&n| Vec::with_capacity(n)).collect();
        let mut next = pool.into_iter();
        while out.iter().zip(&want).any(|(o, &n)| o.len() < n) {
            for (o, &n) in out.iter_mut().zip(&want) {
                if o.len() < n {
                    o.extend(next.next());
                }
            }
        }
        out
    }

    /// Token id of `code` at `level`.
    pub fn token(&self, level: usize, code: u32) -> u32 {
        self.levels[level].ids[code as usize]
    }

    /// Token ids of a level's codes, by code.
    pub fn level_tokens(&self, level: usize) -> &[u32] {
        &self.levels[level].ids
    }

    /// The first token of a level whose tokens are contiguous.
    pub fn level_start(&self, level: usize) -> Option<u32> {
        self.levels[level].start
    }

    /// Largest token id of any level, plus one.
    pub fn min_vocab(&self) -> usize {
        self.levels.iter().flat_map(|l| l.ids.iter()).map(|&t| t as usize + 1).max().unwrap_or(0)
    }

    /// The output rows of every level (`head`: the output layer's weights,
    /// `[vocab, hidden]`; `None` for a quantized one, whose levels must be
    /// contiguous).
    pub fn level_heads(&self, head: Option<&Tensor>, device: &Device) -> Result<Vec<LevelHead>, ModelError> {
        self.levels
            .iter()
            .map(|l| match (l.start, head) {
                (Some(start), _) => Ok(LevelHead::Range { start: start as usize, len: l.ids.len() }),
                (None, Some(w)) => {
                    let ids = Tensor::from_slice(&l.ids, l.ids.len(), device)?;
                    Ok(LevelHead::Rows { weights: w.index_select(&ids, 0)?.contiguous()?, ids })
                }
                (None, None) => {
                    Err(ModelError::Input("a quantized output layer serves only contiguous semantic-ID tokens".into()))
                }
            })
            .collect()
    }

    /// A request's input tokens: its history's semantic IDs (oldest first,
    /// already cut to the model's length), its profile tokens (codes layout)
    /// or texts (text layout).
    pub fn request_tokens<'a>(
        &self,
        profile_tokens: &[u32],
        text: &PromptText,
        sids: impl IntoIterator<Item = &'a [u32]>,
    ) -> Result<Vec<u32>, ModelError> {
        match &self.input {
            Input::Codes { bos } => {
                let mut t = vec![*bos];
                t.extend_from_slice(profile_tokens);
                for s in sids {
                    t.extend(s.iter().enumerate().map(|(l, &c)| self.token(l, c)));
                }
                Ok(t)
            }
            Input::Text(layout) => layout.prompt_tokens(sids, text),
        }
    }

    /// The text layout, if this is one.
    pub fn text_layout(&self) -> Option<&TextLayout> {
        match &self.input {
            Input::Text(t) => Some(t),
            Input::Codes { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_levels_are_a_permutation_with_no_range_left() {
        let v = Vocab {
            levels: vec![
                LevelTokens::new((3..7).collect()),
                LevelTokens::new((7..10).collect()),
                LevelTokens::new((10..15).collect()),
            ],
            pad: 0,
            input: Input::Codes { bos: 1 },
        };
        let s = v.scattered_levels();
        assert_eq!(s.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3, 5]);
        let mut all: Vec<u32> = s.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (3..15).collect::<Vec<u32>>());
        let scattered = v.with_levels(s);
        assert!((0..3).all(|l| scattered.level_start(l).is_none()));
    }

    #[test]
    fn contiguous_levels_are_ranges_and_scattered_ones_gathered_rows() {
        let v = Vocab {
            levels: vec![LevelTokens::new(vec![3, 4, 5]), LevelTokens::new(vec![9, 7, 8])],
            pad: 0,
            input: Input::Codes { bos: 1 },
        };
        assert_eq!((v.level_start(0), v.level_start(1)), (Some(3), None));
        assert_eq!((v.token(1, 0), v.min_vocab()), (9, 10));
        let w = Tensor::arange(0f32, 20.0, &Device::Cpu).unwrap().reshape((10, 2)).unwrap();
        let heads = v.level_heads(Some(&w), &Device::Cpu).unwrap();
        assert!(matches!(heads[0], LevelHead::Range { start: 3, len: 3 }));
        let LevelHead::Rows { weights, .. } = &heads[1] else { panic!("level 1 is scattered") };
        assert_eq!(weights.to_vec2::<f32>().unwrap(), vec![vec![18.0, 19.0], vec![14.0, 15.0], vec![16.0, 17.0]]);
        assert!(v.level_heads(None, &Device::Cpu).is_err(), "a quantized head cannot gather");
        assert_eq!(v.request_tokens(&[2], &PromptText::default(), [&[1u32, 0][..]]).unwrap(), vec![1, 2, 4, 9]);
    }
}
