//! One step of trie-constrained beam search: the contract shared by the CPU
//! reference below and the CUDA kernel.
//!
//! Inputs, for `R` requests with `beams_in` beams each: the logits of the current
//! level `[R × beams_in, codes]`, each beam's score (sum of log-probabilities so
//! far) and trie node (`NONE` = dead beam), and optionally each beam's
//! normaliser (the log-sum-exp of its logits over the whole vocabulary). For
//! every request the step restricts each beam's logits to the valid children of
//! its node, turns them into log-probabilities (with the given normaliser: the
//! model's own probabilities, as transformers' `prefix_allowed_tokens_fn`
//! masking gives; without: a log-softmax over the valid children only), adds the
//! beam's score and keeps the best `beams_out` continuations across all of the
//! request's beams, as `(parent beam, code, child node, score)`. Ties are broken
//! by (parent, code) so that results are deterministic. A continuation whose
//! score is not finite (from a +inf or NaN logit or normaliser, or a beam whose
//! valid children are all -inf) is never selected, so it cannot reach an answer.

use rayon::prelude::*;

use super::diversity::{take_capped, GroupCap};
use crate::catalog::trie::NONE;
use crate::catalog::TrieView;

/// The selected continuations, `beams_out` slots per request (dead slots have
/// node `NONE` and score `-inf`). `parent` indexes the request's input beams.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    pub parent: Vec<u32>,
    pub code: Vec<u32>,
    pub node: Vec<u32>,
    pub score: Vec<f32>,
}

/// Shape of one beam step.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    pub requests: usize,
    pub beams_in: usize,
    pub beams_out: usize,
    /// Columns of `logits` (codes at this level).
    pub codes: usize,
}

#[derive(Clone, Copy)]
struct Cand {
    score: f32,
    parent: u32,
    code: u32,
    node: u32,
    /// The first-level code the continuation descends from.
    group: u32,
}

fn better(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.parent.cmp(&b.parent)).then(a.code.cmp(&b.code))
}

/// CPU reference of the beam step. `norm[beam]`, when given, is the beam's
/// log-normaliser over the full vocabulary. `keep(request, child_node)` may
/// veto a child (used on the last level to drop excluded items); vetoed
/// children still count in the normalisation, they are only not selected.
pub fn beam_step<F>(
    trie: &TrieView,
    shape: StepShape,
    logits: &[f32],
    scores: &[f32],
    nodes: &[u32],
    norm: Option<&[f32]>,
    keep: F,
) -> StepOutput
where
    F: Fn(usize, u32) -> bool + Sync,
{
    beam_step_capped(trie, shape, logits, scores, nodes, norm, keep, None)
}

/// [`beam_step`] that keeps, per request, at most `cap.limit[request]`
/// continuations per group (the diversity cap of [`super::diversity`]).
#[allow(clippy::too_many_arguments)]
pub fn beam_step_capped<F>(
    trie: &TrieView,
    shape: StepShape,
    logits: &[f32],
    scores: &[f32],
    nodes: &[u32],
    norm: Option<&[f32]>,
    keep: F,
    cap: Option<GroupCap>,
) -> StepOutput
where
    F: Fn(usize, u32) -> bool + Sync,
{
    let StepShape { requests, beams_in, beams_out, codes } = shape;
    assert_eq!(logits.len(), requests * beams_in * codes, "logits shape");
    assert_eq!(scores.len(), requests * beams_in, "scores shape");
    assert_eq!(nodes.len(), requests * beams_in, "nodes shape");
    assert!(norm.is_none_or(|n| n.len() == requests * beams_in), "norm shape");
    assert!(
        cap.is_none_or(|c| c.limit.len() == requests && c.beam_group.is_none_or(|g| g.len() == requests * beams_in)),
        "cap shape"
    );
    let select = |r: usize| {
        let mut cands = Vec::new();
        for b in 0..beams_in {
            let beam = r * beams_in + b;
            let node = nodes[beam];
            if node == NONE || !scores[beam].is_finite() {
                continue;
            }
            let kids = trie.children(node);
            let row = &logits[beam * codes..(beam + 1) * codes];
            let lse = match norm {
                Some(n) => n[beam],
                None => {
                    let max = kids.clone().map(|(c, _)| row[c as usize]).fold(f32::NEG_INFINITY, f32::max);
                    max + kids.clone().map(|(c, _)| (row[c as usize] - max).exp()).sum::<f32>().ln()
                }
            };
            for (c, child) in kids {
                if !keep(r, child) {
                    continue;
                }
                let score = scores[beam] + row[c as usize] - lse;
                // a non-finite score (a +inf or NaN logit, a NaN normaliser, a
                // row whose valid children are all -inf) is no continuation
                if !score.is_finite() {
                    continue;
                }
                let group = cap.and_then(|k| k.beam_group).map_or(c, |g| g[beam]);
                cands.push(Cand { score, parent: b as u32, code: c, node: child, group });
            }
        }
        let limit = cap.map_or(u32::MAX, |k| k.limit[r]);
        if (limit as usize) < beams_out {
            cands.sort_by(better);
            return take_capped(cands, beams_out, limit, |c| c.group);
        }
        if cands.len() > beams_out {
            cands.select_nth_unstable_by(beams_out - 1, better);
            cands.truncate(beams_out);
        }
        cands.sort_by(better);
        cands
    };
    let per_request: Vec<Vec<Cand>> = if crate::runtime::parallel(requests, 2) {
        (0..requests).into_par_iter().map(select).collect()
    } else {
        (0..requests).map(select).collect()
    };
    let n = requests * beams_out;
    let mut out =
        StepOutput { parent: vec![0; n], code: vec![0; n], node: vec![NONE; n], score: vec![f32::NEG_INFINITY; n] };
    for (r, cands) in per_request.into_iter().enumerate() {
        for (j, c) in cands.into_iter().enumerate() {
            let s = r * beams_out + j;
            out.parent[s] = c.parent;
            out.code[s] = c.code;
            out.node[s] = c.node;
            out.score[s] = c.score;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::catalog::Trie;

    fn trie() -> Trie {
        // items: (0,0) (0,1) (1,2) (2,0)
        Trie::build(&[0, 0, 0, 1, 1, 2, 2, 0], 2, &[3, 3]).unwrap()
    }

    #[test]
    fn restricts_to_children_and_renormalises() {
        let base = trie();
        let t = TrieView::new(&base, None);
        let logits = [1.0f32, 2.0, 3.0];
        let out = beam_step(
            &t,
            StepShape { requests: 1, beams_in: 1, beams_out: 3, codes: 3 },
            &logits,
            &[0.0],
            &[0],
            None,
            |_, _| true,
        );
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert_eq!(out.code, vec![2, 1, 0]);
        assert!((out.score[0] - (3.0 - lse)).abs() < 1e-6);
        // level 1 under node of code 0: only codes 0 and 1 are valid
        let n0 = t.walk(&[0]).unwrap();
        let out = beam_step(
            &t,
            StepShape { requests: 1, beams_in: 1, beams_out: 2, codes: 3 },
            &[0.0, 0.0, 9.0],
            &[-1.0],
            &[n0],
            None,
            |_, _| true,
        );
        assert_eq!(out.code, vec![0, 1]);
        assert!((out.score[0] - (-1.0 - 2f32.ln())).abs() < 1e-6);
        // with the model's normaliser the masked-out code 2 keeps its mass
        let full = (2.0 + 9f32.exp()).ln();
        let out = beam_step(
            &t,
            StepShape { requests: 1, beams_in: 1, beams_out: 2, codes: 3 },
            &[0.0, 0.0, 9.0],
            &[-1.0],
            &[n0],
            Some(&[full]),
            |_, _| true,
        );
        assert_eq!(out.code, vec![0, 1]);
        assert!((out.score[0] - (-1.0 - full)).abs() < 1e-6);
        assert_eq!(t.item(out.node[1]), Some(1));
    }

    #[test]
    fn selects_across_beams_pads_dead_slots_and_honours_veto() {
        let base = trie();
        let t = TrieView::new(&base, None);
        let (a, b) = (t.walk(&[0]).unwrap(), t.walk(&[1]).unwrap());
        // two requests, two beams each; request 1 has one dead beam
        let logits = [0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let out = beam_step(
            &t,
            StepShape { requests: 2, beams_in: 2, beams_out: 3, codes: 3 },
            &logits,
            &[-2.0, -0.1, -0.5, f32::NEG_INFINITY],
            &[a, b, a, NONE],
            None,
            |r, node| !(r == 1 && t.item(node) == Some(0)),
        );
        // request 0: beam 1 (node b, single child, score -0.1) first, then beam 0's code 1
        assert_eq!((out.parent[0], out.code[0]), (1, 2));
        assert_eq!((out.parent[1], out.code[1]), (0, 1));
        assert_eq!((out.parent[2], out.code[2]), (0, 0));
        // request 1: item 0 vetoed, only item 1 left, then a dead slot
        assert_eq!(t.item(out.node[3]), Some(1));
        assert_eq!(out.node[4], NONE);
        assert_eq!(out.score[5], f32::NEG_INFINITY);
    }
}
