//! Items added after the model was trained: their last code is a collision
//! code the model never saw under their prefix (the lowest free one), so its
//! logit there says nothing about the item, and is usually far below the
//! trained siblings'. A new item would then almost never be generated, even
//! for a history that points at its cluster (`benches/results/live.md`).
//!
//! With [`GenRequest::new_items_as_siblings`] (`genrec serve --new-items
//! sibling`, the default), the last level scores a new item's collision code
//! with the best logit among its trained siblings (items of the same prefix
//! that the catalog `genrec index` wrote holds) when that is higher than its
//! own: the model's belief in the prefix, shared with the newcomer. Ties go
//! to the lower code, so a new item comes right after its best sibling; an
//! item that took a code the model knows (a deleted item's ID) keeps its
//! logit. A catalog as indexed is scored exactly as transformers' `generate`
//! scores it; with live additions the new items' scores differ.

use crate::catalog::trie::NONE;
use crate::catalog::{Catalog, TrieView};

use super::GenRequest;

/// Whether any request asks for it and the catalog has items added since
/// it was indexed.
pub(super) fn applies(catalog: &Catalog, reqs: &[GenRequest]) -> bool {
    catalog.len() > catalog.trained_rows() && reqs.iter().any(|q| q.new_items_as_siblings)
}

/// Gives the new leaves of every live beam of the last level (`[requests x
/// beams_in, codes]` logits) their best trained sibling's logit.
pub(super) fn score_as_siblings(
    trie: &TrieView,
    trained_rows: usize,
    reqs: &[GenRequest],
    logits: &mut [f32],
    codes: usize,
    nodes: &[u32],
    beams_in: usize,
) {
    for (beam, &node) in nodes.iter().enumerate() {
        if node == NONE || !reqs[beam / beams_in].new_items_as_siblings {
            continue;
        }
        let row = &mut logits[beam * codes..(beam + 1) * codes];
        let mut best = f32::NEG_INFINITY;
        let mut new_codes = Vec::new();
        for (c, child) in trie.children(node) {
            match trie.item(child) {
                Some(item) if (item as usize) >= trained_rows => new_codes.push(c),
                _ => best = best.max(row[c as usize]),
            }
        }
        if best.is_finite() {
            for c in new_codes {
                row[c as usize] = row[c as usize].max(best);
            }
        }
    }
}
