//! The second checkpoint layout: an LLM (Llama, Qwen2, Qwen3) with
//! semantic-ID tokens added to its text vocabulary, as LC-Rec, MiniOneRec and
//! OpenOneRec's OneRec train them. The folder is the trainer's, as it wrote
//! it: `config.json`, the safetensors, `tokenizer.json`, the item map
//! ([`item_map`]), plus a `genrec.json` whose `llm` section names them and a
//! prompt template ([`template`]).
//!
//! genrec reads each level's semantic-ID tokens from the tokenizer (by a
//! pattern such as `<a_{}>`, or the item map's tokens), builds its catalog
//! from the item map, and renders each request as the prompt the model was
//! trained on: the history's items as their token strings.

pub mod chat;
pub mod item_map;
pub mod template;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use chat::ChatTemplate;
pub use item_map::{ItemMap, ItemMapFormat, ItemSid};
pub use template::{Fill, Slot, Template};

use super::ModelError;
use crate::catalog::{catalog_fingerprint, Catalog, CatalogError, Manifest};

/// The prompt used when the sidecar names none (`prompts/llm-rec.template`).
pub const DEFAULT_PROMPT: &str = include_str!("../../../prompts/llm-rec.template");

/// The `embedder` of a catalog made from an item map (no embeddings).
pub const ITEM_MAP_EMBEDDER: &str = "item-map";

/// The catalog folder of an LLM layout whose sidecar names none, in the
/// model folder (built from the item map when missing).
pub const DEFAULT_CATALOG: &str = "catalog";

/// `genrec.json`'s `llm` section: where the layout's parts are in the model
/// folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    /// The tokenizer (transformers' `tokenizer.json`).
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// The item map file.
    pub item_map: String,
    #[serde(default)]
    pub item_map_format: ItemMapFormat,
    /// Each level's token, `{}` standing for the code (`["<a_{}>", "<b_{}>"]`):
    /// every token of that form in the tokenizer is a code of the level.
    /// Empty: each level's codes are the distinct tokens the item map uses
    /// there, in token-id order (an `index` map only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
    /// The prompt template file ([`template`]); absent: [`DEFAULT_PROMPT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Written between the history's items in `{history}`.
    #[serde(default = "default_separator")]
    pub item_separator: String,
    /// The rendered prompt is the user message of the checkpoint's chat
    /// template (`chat_template` in `tokenizer_config`), with the
    /// assistant's turn opened, as `apply_chat_template(...,
    /// add_generation_prompt=True)` makes it; tokenized without adding
    /// special tokens, as transformers does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chat: bool,
    #[serde(default = "default_tokenizer_config")]
    pub tokenizer_config: String,
    /// Written after the (chat) prompt, where the answer's first semantic-ID
    /// token follows (`<|sid_begin|>` for OneRec).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub answer_prefix: String,
}

impl LlmSection {
    /// The files it names in the model folder.
    pub fn files(&self) -> Vec<&str> {
        let mut f = vec![self.tokenizer.as_str(), self.item_map.as_str()];
        f.extend(self.prompt.as_deref());
        if self.chat {
            f.push(&self.tokenizer_config);
        }
        f
    }
}

/// A file an `llm` section names: a plain file name in the model folder (no
/// folders, no `..`, not absolute), so that it is read from the folder's own
/// handle and cannot lead out of it.
pub fn check_file_name(name: &str) -> Result<(), ModelError> {
    if crate::util::is_plain_file_name(name) {
        Ok(())
    } else {
        Err(bad(format!("{name:?}: the files it names are plain file names in the model folder")))
    }
}

fn default_tokenizer_config() -> String {
    "tokenizer_config.json".into()
}

fn default_tokenizer() -> String {
    "tokenizer.json".into()
}
fn default_separator() -> String {
    ", ".into()
}

/// The text parts of a request that a text prompt may read (its
/// `{profile}` and `{query}` slots).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptText {
    pub profile: Option<String>,
    pub query: Option<String>,
}

/// An LLM layout, loaded: the tokenizer, the prompt, each level's tokens and
/// the item map's items as codes.
pub struct TextLayout {
    pub tokenizer: Tokenizer,
    pub template: Template,
    pub separator: String,
    /// The chat template the prompt goes into (`chat`), if any.
    pub chat: Option<ChatTemplate>,
    pub answer_prefix: String,
    /// `level_strings[l][code]`: the token string of a code.
    pub level_strings: Vec<Vec<String>>,
    /// `level_ids[l][code]`: its token id.
    pub level_ids: Vec<Vec<u32>>,
    /// The item map's items and their codes (`[items × levels]`).
    pub item_ids: Vec<String>,
    pub item_codes: Vec<u32>,
    /// Products of a `sid2pid` map beyond the first of their semantic ID.
    pub aliases_dropped: usize,
}

fn bad(msg: String) -> ModelError {
    ModelError::Sidecar(format!("llm: {msg}"))
}

/// Reads a file named by the sidecar, relative to the model folder.
pub type ReadFile<'a> = &'a dyn Fn(&str) -> Result<Vec<u8>, ModelError>;

impl TextLayout {
    /// Loads the layout a sidecar's `llm` section describes, reading its files
    /// with `read`.
    pub fn load(section: &LlmSection, read: ReadFile) -> Result<Self, ModelError> {
        let tokenizer =
            Tokenizer::from_bytes(read(&section.tokenizer)?).map_err(|e| bad(format!("{}: {e}", section.tokenizer)))?;
        let template = match &section.prompt {
            Some(p) => {
                let bytes = read(p)?;
                let text = String::from_utf8(bytes).map_err(|e| bad(format!("{p}: not UTF-8 ({e})")))?;
                // (an editor's final newline is not part of the prompt)
                Template::parse(text.strip_suffix('\n').unwrap_or(&text))?
            }
            None => Template::parse(DEFAULT_PROMPT)?,
        };
        let map = ItemMap::parse(&read(&section.item_map)?, section.item_map_format)
            .map_err(|e| bad(format!("{}: {e}", section.item_map)))?;
        let levels: Vec<Vec<(String, u32)>> = if section.levels.is_empty() {
            levels_from_map(&map, &tokenizer)?
        } else {
            section.levels.iter().map(|t| level_from_pattern(t, &tokenizer)).collect::<Result<_, _>>()?
        };
        let (level_strings, level_ids): (Vec<Vec<String>>, Vec<Vec<u32>>) =
            levels.into_iter().map(|l| l.into_iter().unzip()).unzip();
        let (item_ids, item_codes) = item_codes(&map, &level_strings)?;
        let chat = if section.chat {
            let cfg = read(&section.tokenizer_config)?;
            // (transformers 4.50+ writes the template to its own file)
            let jinja = read(chat::CHAT_TEMPLATE_FILE).ok().map(|b| String::from_utf8_lossy(&b).into_owned());
            Some(ChatTemplate::from_files(&cfg, jinja)?)
        } else {
            None
        };
        Ok(TextLayout {
            tokenizer,
            template,
            separator: section.item_separator.clone(),
            chat,
            answer_prefix: section.answer_prefix.clone(),
            level_strings,
            level_ids,
            item_ids,
            item_codes,
            aliases_dropped: map.aliases_dropped,
        })
    }

    pub fn codebook_sizes(&self) -> Vec<u32> {
        self.level_strings.iter().map(|l| l.len() as u32).collect()
    }

    /// The fingerprint of the catalog the item map makes.
    pub fn catalog_fingerprint(&self) -> String {
        catalog_fingerprint(&self.item_ids, &self.item_codes)
    }

    /// The catalog of the item map's items. An item map carries no
    /// embeddings: each item gets the same one-dimensional vector, so the
    /// ANN fallback ranks every item alike (a catalog built by `genrec index`
    /// with the same semantic IDs, passed as `--catalog`, gives a real one).
    pub fn catalog(&self, name: &str) -> Result<Catalog, CatalogError> {
        let n = self.item_ids.len();
        let manifest =
            Manifest::new(name, n, self.codebook_sizes(), 1, ITEM_MAP_EMBEDDER, 0, self.catalog_fingerprint());
        let ids = self.item_ids.clone();
        Catalog::new(manifest, ids.clone(), ids, self.item_codes.clone(), vec![1.0; n], Vec::new())
    }

    /// An item's token strings, concatenated (`<a_12><b_200><c_5>`).
    pub fn item_text(&self, sid: &[u32]) -> String {
        sid.iter().enumerate().map(|(l, &c)| self.level_strings[l][c as usize].as_str()).collect()
    }

    /// The prompt of a request, tokenized as transformers' tokenizer does
    /// (`add_special_tokens` on: a Llama tokenizer's `<s>` is added; off
    /// inside a chat template, as `apply_chat_template` tokenizes).
    pub fn prompt_tokens<'a>(
        &self,
        sids: impl IntoIterator<Item = &'a [u32]>,
        text: &PromptText,
    ) -> Result<Vec<u32>, ModelError> {
        let history: Vec<String> = sids.into_iter().map(|s| self.item_text(s)).collect();
        let history = history.join(&self.separator);
        let fill = Fill { history: &history, profile: text.profile.as_deref(), query: text.query.as_deref() };
        let prompt = self.template.render(&fill);
        // a chat's special tokens are in its template: none are added
        let (mut text, add_special) = match &self.chat {
            Some(chat) => (chat.render_user(&prompt)?, false),
            None => (prompt, true),
        };
        text.push_str(&self.answer_prefix);
        let enc = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| ModelError::Input(format!("tokenizing the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// A level's codes (token and id, by code) from a pattern `pre{}suf`: every
/// token `pre<N>suf` of the tokenizer is code N; codes 0..=max must all be
/// there.
fn level_from_pattern(pattern: &str, tok: &Tokenizer) -> Result<Vec<(String, u32)>, ModelError> {
    let (pre, suf) = pattern
        .split_once("{}")
        .ok_or_else(|| bad(format!("level pattern {pattern:?} has no {{}} where the code goes")))?;
    let mut codes: Vec<(u32, String, u32)> = tok
        .get_vocab(true)
        .into_iter()
        .filter_map(|(t, id)| {
            let n = t.strip_prefix(pre)?.strip_suffix(suf)?;
            let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
            let code = digits.then(|| n.parse::<u32>().ok()).flatten()?;
            Some((code, t, id))
        })
        .collect();
    codes.sort();
    if codes.is_empty() {
        return Err(bad(format!("the tokenizer has no token of the form {pattern:?}")));
    }
    if let Some((i, _)) = codes.iter().enumerate().find(|(i, (c, _, _))| *c as usize != *i) {
        return Err(bad(format!("level {pattern:?}: code {i} has no token (codes must run from 0 without gaps)")));
    }
    Ok(codes.into_iter().map(|(_, t, id)| (t, id)).collect())
}

/// Each level's codes (token and id) as the distinct tokens the map uses
/// there, by token id.
fn levels_from_map(map: &ItemMap, tok: &Tokenizer) -> Result<Vec<Vec<(String, u32)>>, ModelError> {
    let levels = match map.items.first() {
        Some((_, ItemSid::Tokens(t))) => t.len(),
        _ => return Err(bad("a map of codes (sid2pid) needs `levels` patterns to name its tokens".into())),
    };
    let mut out = Vec::with_capacity(levels);
    for l in 0..levels {
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for (id, sid) in &map.items {
            if let ItemSid::Tokens(t) = sid {
                let s = t[l].as_str();
                if !seen.contains_key(s) {
                    let tid = tok.token_to_id(s).ok_or_else(|| {
                        bad(format!("item {id:?}: {s:?} is not one token of the tokenizer (add it as a token)"))
                    })?;
                    seen.insert(s, tid);
                }
            }
        }
        let mut level: Vec<(u32, &str)> = seen.into_iter().map(|(s, t)| (t, s)).collect();
        level.sort();
        out.push(level.into_iter().map(|(t, s)| (s.to_string(), t)).collect());
    }
    Ok(out)
}

/// The map's items as codes of the levels.
fn item_codes(map: &ItemMap, levels: &[Vec<String>]) -> Result<(Vec<String>, Vec<u32>), ModelError> {
    let index: Vec<HashMap<&str, u32>> =
        levels.iter().map(|l| l.iter().enumerate().map(|(c, s)| (s.as_str(), c as u32)).collect()).collect();
    let mut ids = Vec::with_capacity(map.items.len());
    let mut codes = Vec::with_capacity(map.items.len() * levels.len());
    for (id, sid) in &map.items {
        match sid {
            ItemSid::Tokens(t) => {
                if t.len() != levels.len() {
                    return Err(bad(format!("item {id:?} has {} tokens, the layout {} levels", t.len(), levels.len())));
                }
                for (l, s) in t.iter().enumerate() {
                    let c = index[l].get(s.as_str()).ok_or_else(|| {
                        bad(format!("item {id:?}: {s:?} is not a token of level {l} ({})", levels[l][0]))
                    })?;
                    codes.push(*c);
                }
            }
            ItemSid::Codes(c) => {
                if c.len() != levels.len() {
                    return Err(bad(format!("item {id:?} has {} codes, the layout {} levels", c.len(), levels.len())));
                }
                for (l, &code) in c.iter().enumerate() {
                    if code as usize >= levels[l].len() {
                        return Err(bad(format!(
                            "item {id:?}: code {code} at level {l} has no token ({} codes)",
                            levels[l].len()
                        )));
                    }
                    codes.push(code);
                }
            }
        }
        ids.push(id.clone());
    }
    Ok((ids, codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_files_are_plain_names_in_the_folder() {
        for ok in ["index.json", "sid2pid.json", "prompt.v2.txt"] {
            assert!(check_file_name(ok).is_ok(), "{ok}");
        }
        for bad in ["../secret.json", "/etc/passwd", "sub/index.json", "..", ".", "", "a\\b"] {
            assert!(check_file_name(bad).is_err(), "{bad:?} was allowed");
        }
    }
}
