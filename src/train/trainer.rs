//! Next-item training of the decoder on semantic-ID sequences: every user's
//! training part (all but the last two items) becomes `[bos, codes of item 1,
//! codes of item 2, ...]` in windows of `max_history + 1` items, and the model
//! learns to predict every code token from the tokens before it (teacher
//! forcing, cross-entropy), with AdamW, linear warm-up and cosine decay.
//!
//! By default the loss weighs recent targets more (`recency_half_life`): an
//! item `d` steps before the end of its user's training part counts
//! `0.5^(d / half-life)`. The held-out items come after every training item,
//! and on Beauty and Scientific the items bought last predict them better than
//! all purchases do (`benches/split_novelty.py`), so the recent part of each
//! history is the part most like what the model is asked for.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::average::{Average, WeightAverage};
use super::batches::{length_bucketed_batches, micro_batches, split_batch};
use super::eval::{evaluate, EvalOptions};
use super::profile_prefix::PrefixDraw;
pub use super::sequences::{first_item_sequences, training_sequences, TrainSeq};
use super::TrainError;
use crate::catalog::Catalog;
use crate::dataset::Interactions;
use crate::model::config::ModelConfig;
use crate::model::init::init_weights;
use crate::model::transformer::Dropout;
use crate::model::{save_checkpoint, Model, Sidecar, Transformer};

/// Options of `genrec train`.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub name: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub dropout: f32,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ff: usize,
    pub max_history: usize,
    pub seed: u64,
    /// Evaluate on `valid_users` validation users every this many epochs (0: never).
    pub valid_every: usize,
    pub valid_users: usize,
    /// Data-parallel workers per step (each runs its share of the batch on
    /// one thread; see `genrec train --threads`).
    pub workers: usize,
    /// Averages of the weights kept during training (empty: none). The
    /// checkpoint holds the first; `out/variants/` holds the last step's
    /// weights and the other averages, each a complete model folder.
    pub averages: Vec<Average>,
    /// Weigh each target by `0.5^(d / half-life)`, `d` = items between it and
    /// the end of the user's training part (None: every target counts 1).
    pub recency_half_life: Option<f64>,
    /// Also train each of a user's first `first_items` items as a target of
    /// the start token alone (weight 1): the model's answer for an empty
    /// history (a new user) becomes the catalog's first items, not the one
    /// first item per user that the windows give (at recency weights near 0).
    pub first_items: usize,
    /// Each training user's profile features (`Profile::features`) by user
    /// id ([`super::profile_prefix`]); empty: the model reads no profile tokens.
    pub profiles: HashMap<String, Vec<String>>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            name: "genrec".into(),
            epochs: 20,
            batch_size: 64,
            lr: 2e-3,
            weight_decay: 0.01,
            warmup_steps: 100,
            dropout: 0.1,
            hidden: 128,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            ff: 1024,
            max_history: 20,
            seed: 42,
            valid_every: 0,
            valid_users: 2000,
            workers: 1,
            averages: Vec::new(),
            recency_half_life: Some(3.0),
            first_items: 0,
            profiles: HashMap::new(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub sequences: usize,
    pub steps: usize,
    pub final_loss: f64,
    pub seconds: f64,
    pub parameters: usize,
}

/// Next-token cross-entropy of the sequences `rows` (right-padded into one
/// batch), with dropout: the plain mean, or with `weighted` the mean weighted
/// by each target's weight.
#[allow(clippy::too_many_arguments)]
fn share_loss(
    net: &Transformer,
    seqs: &[TrainSeq],
    rows_of: &[usize],
    pad: u32,
    dropout: f32,
    weighted: bool,
    rng: &mut ChaCha8Rng,
    dev: &Device,
) -> Result<Tensor, TrainError> {
    let t = rows_of.iter().map(|&i| seqs[i].tokens.len()).max().unwrap_or(2);
    let b = rows_of.len();
    let mut toks = vec![pad; b * t];
    let (mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for (r, &i) in rows_of.iter().enumerate() {
        let s = &seqs[i].tokens;
        toks[r * t..r * t + s.len()].copy_from_slice(s);
        for p in 0..s.len() - 1 {
            rows.push((r * t + p) as u32);
            targets.push(s[p + 1]);
            weights.push(seqs[i].weights[p + 1]);
        }
    }
    let tok = Tensor::from_vec(toks, (b, t), dev)?;
    let (hidden, _) = net.forward_hidden(&tok, Some(Dropout { p: dropout, rng }))?;
    let rows = Tensor::from_vec(rows, targets.len(), dev)?;
    let h = hidden.reshape((b * t, ()))?.index_select(&rows, 0)?;
    let logits = net.logits(&h)?;
    let n = h.dim(0)?;
    let targets = Tensor::from_vec(targets, n, dev)?;
    if !weighted {
        return Ok(candle_nn::loss::cross_entropy(&logits, &targets)?);
    }
    let total: f32 = weights.iter().sum();
    let picked = candle_nn::ops::log_softmax(&logits, 1)?.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let w = Tensor::from_vec(weights, n, dev)?;
    Ok(((picked * w)?.sum_all()? / -(total.max(f32::MIN_POSITIVE) as f64))?)
}

fn lr_at(opts: &TrainOptions, step: usize, total: usize) -> f64 {
    if step < opts.warmup_steps {
        return opts.lr * (step + 1) as f64 / opts.warmup_steps as f64;
    }
    let t = (step - opts.warmup_steps) as f64 / (total.saturating_sub(opts.warmup_steps)).max(1) as f64;
    let floor = 0.1 * opts.lr;
    floor + (opts.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}

/// Relative path from folder `from` to `to`, both made absolute first.
pub fn relative_path(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (f, t) = (abs(from), abs(to));
    let fc: Vec<_> = f.components().collect();
    let tc: Vec<_> = t.components().collect();
    let common = fc.iter().zip(&tc).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return t.to_string_lossy().into_owned();
    }
    let mut parts: Vec<String> = vec!["..".into(); fc.len() - common];
    parts.extend(tc[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// Trains a model on `inter` over `catalog` and writes the checkpoint to `out`.
/// `log` receives progress lines.
pub fn train(
    catalog: &Catalog,
    catalog_dir: &Path,
    inter: &Interactions,
    opts: &TrainOptions,
    out: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<TrainReport, TrainError> {
    if opts.epochs == 0 || opts.batch_size == 0 || opts.heads == 0 || !opts.hidden.is_multiple_of(opts.heads) {
        return Err(TrainError::Invalid(
            "epochs and batch size must be positive and hidden a multiple of heads".into(),
        ));
    }
    if let Some(a) = opts.averages.iter().find(|a| matches!(a, Average::Exponential(d) if !(*d > 0.0 && *d < 1.0))) {
        return Err(TrainError::Invalid(format!("an exponential average's decay must be in (0, 1), got {a}")));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::Io(out.display().to_string(), e))?;
    let mut sidecar =
        Sidecar::for_catalog(&opts.name, &relative_path(out, catalog_dir), catalog.manifest(), opts.max_history);
    let users_with_profile = inter.users.iter().filter(|u| opts.profiles.contains_key(*u)).count();
    if users_with_profile > 0 {
        let features = inter.users.iter().filter_map(|u| opts.profiles.get(u)).flatten().cloned();
        sidecar = sidecar.with_profile(features);
    }
    let mut prefixes = PrefixDraw::new(sidecar.profile.as_ref(), inter, &opts.profiles, opts.seed);
    let mut cfg = ModelConfig::llama(sidecar.min_vocab(), opts.hidden, opts.layers, opts.heads, opts.kv_heads, opts.ff);
    cfg.bos_token_id = Some(sidecar.bos_token_id);
    cfg.eos_token_id = Some(sidecar.eos_token_id);
    cfg.pad_token_id = Some(sidecar.pad_token_id);
    cfg.max_position_embeddings = (sidecar.longest_sequence() + 1).next_power_of_two().max(64);
    cfg.validate()?;

    let mut seqs =
        training_sequences(catalog, inter, &sidecar, opts.max_history, opts.recency_half_life, &mut prefixes);
    seqs.extend(first_item_sequences(catalog, inter, &sidecar, opts.first_items, &mut prefixes));
    if let Some(p) = &sidecar.profile {
        log(&format!(
            "train: {users_with_profile} users with a profile; {} profile features read after bos",
            p.features.len()
        ));
    }
    if seqs.is_empty() {
        return Err(TrainError::Invalid("no user has at least two training items".into()));
    }
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().map_err(|_| TrainError::Invalid("poisoned var map".into()))?;
        for (name, t) in init_weights(&cfg, 0.02, opts.seed, &dev)? {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    let net = Transformer::load(VarBuilder::from_varmap(&varmap, DType::F32, &dev), &cfg)?;
    let parameters: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let named_vars: Vec<(String, Var)> = {
        let data = varmap.data().lock().map_err(|_| TrainError::Invalid("poisoned var map".into()))?;
        let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut averages =
        opts.averages.iter().map(|&a| WeightAverage::new(a, &named_vars)).collect::<Result<Vec<_>, _>>()?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW { lr: opts.lr, beta1: 0.9, beta2: 0.98, eps: 1e-8, weight_decay: opts.weight_decay },
    )?;
    let steps_per_epoch = seqs.len().div_ceil(opts.batch_size);
    let total = steps_per_epoch * opts.epochs;
    log(&format!(
        "train: {} sequences, {} parameters, {} epochs x {} steps (batch {})",
        seqs.len(),
        parameters,
        opts.epochs,
        steps_per_epoch,
        opts.batch_size
    ));
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut drop_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed);
    let started = Instant::now();
    let workers = opts.workers.max(1);
    let mut step = 0;
    let mut last_loss = f64::NAN;
    for epoch in 0..opts.epochs {
        let batches = length_bucketed_batches(&seqs, opts.batch_size, &mut rng);
        let (mut sum, mut count, mut tokens) = (0.0, 0usize, 0usize);
        let epoch_start = Instant::now();
        for (bi, chunk) in batches.iter().enumerate() {
            // data parallel: each worker computes the loss of its share of the
            // batch and its gradients; the gradients are summed (each loss is
            // weighted by its share of the batch's target weight, so the sum is
            // the batch's weighted mean)
            let shares = split_batch(chunk, &seqs, workers);
            let n_total: f64 = shares.iter().map(|s| s.targets).sum();
            let step_seed: u64 = drop_rng.random();
            let results: Vec<Result<(f64, GradStore), TrainError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = shares
                    .iter()
                    .enumerate()
                    .map(|(w, share)| {
                        let (net, seqs, dev) = (&net, &seqs, &dev);
                        scope.spawn(move || {
                            let mut rng = ChaCha8Rng::seed_from_u64(step_seed ^ (w as u64).wrapping_mul(0x9e37_79b9));
                            let weighted = opts.recency_half_life.is_some();
                            let mut acc: Option<(f64, GradStore)> = None;
                            for micro in micro_batches(share, seqs) {
                                let loss = share_loss(
                                    net,
                                    seqs,
                                    &micro.rows,
                                    sidecar.pad_token_id,
                                    opts.dropout,
                                    weighted,
                                    &mut rng,
                                    dev,
                                )?;
                                let weight = micro.targets / n_total;
                                let grads = (&loss * weight)?.backward()?;
                                let l = loss.to_scalar::<f32>()? as f64 * weight;
                                acc = Some(match acc {
                                    None => (l, grads),
                                    Some((sum, mut g)) => {
                                        g.extend(grads)?;
                                        (sum + l, g)
                                    }
                                });
                            }
                            acc.ok_or_else(|| TrainError::Invalid("a training share without targets".into()))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(TrainError::Invalid("a training worker panicked".into()))))
                    .collect()
            });
            let mut l = 0.0;
            let mut grads: Option<GradStore> = None;
            for r in results {
                let (lw, g) = r?;
                l += lw;
                match grads.as_mut() {
                    None => grads = Some(g),
                    Some(acc) => acc.extend(g)?,
                }
            }
            tokens += chunk.iter().map(|&i| seqs[i].tokens.len()).sum::<usize>();
            opt.set_learning_rate(lr_at(opts, step, total));
            if let Some(g) = grads {
                opt.step(&g)?;
            }
            for a in &mut averages {
                a.update(&named_vars)?;
            }
            if !l.is_finite() {
                return Err(TrainError::Invalid(format!("loss became {l} at step {step}")));
            }
            sum += l;
            count += 1;
            step += 1;
            if (bi + 1) % 50 == 0 || bi + 1 == steps_per_epoch {
                let secs = epoch_start.elapsed().as_secs_f64();
                log(&format!(
                    "epoch {}/{} step {}/{} loss {:.4} lr {:.2e} {:.0} tok/s elapsed {:.0}s",
                    epoch + 1,
                    opts.epochs,
                    bi + 1,
                    steps_per_epoch,
                    sum / count as f64,
                    lr_at(opts, step, total),
                    tokens as f64 / secs.max(1e-9),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        last_loss = sum / count.max(1) as f64;
        if opts.valid_every > 0
            && opts.valid_users > 0
            && (epoch + 1) % opts.valid_every == 0
            && epoch + 1 < opts.epochs
        {
            let net = match averages.first() {
                Some(a) => Transformer::load(VarBuilder::from_tensors(a.named(&named_vars), DType::F32, &dev), &cfg)?,
                None => net.clone(),
            };
            let model = Model::assemble(net, cfg.clone(), sidecar.clone(), format!("epoch{}", epoch + 1), None)?;
            let m = evaluate(&model, catalog, inter, &EvalOptions::validation(opts.valid_users), |_, _| {})?;
            log(&format!(
                "epoch {}/{} validation ({} users): recall@10 {:.4} ndcg@10 {:.4} recall@5 {:.4} ndcg@5 {:.4}",
                epoch + 1,
                opts.epochs,
                m.users,
                m.recall10,
                m.ndcg10,
                m.recall5,
                m.ndcg5
            ));
        }
    }
    let last: HashMap<String, Tensor> = named_vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    match averages.split_first() {
        None => save_checkpoint(out, &cfg, &last, &sidecar)?,
        Some((first, others)) => {
            save_checkpoint(out, &cfg, &first.named(&named_vars), &sidecar)?;
            let mut variants = vec![("last".to_string(), last)];
            variants.extend(others.iter().map(|a| (a.kind().to_string(), a.named(&named_vars))));
            for (name, tensors) in variants {
                let dir = out.join("variants").join(name);
                std::fs::create_dir_all(&dir).map_err(|e| TrainError::Io(dir.display().to_string(), e))?;
                let sidecar = Sidecar { catalog: relative_path(&dir, catalog_dir), ..sidecar.clone() };
                save_checkpoint(&dir, &cfg, &tensors, &sidecar)?;
                log(&format!("train: wrote the variant {}", dir.display()));
            }
        }
    }
    Ok(TrainReport {
        sequences: seqs.len(),
        steps: step,
        final_loss: last_loss,
        seconds: started.elapsed().as_secs_f64(),
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::testutil::random_catalog;

    fn one_user(items: usize) -> Interactions {
        Interactions { users: vec!["u".into()], sequences: vec![(0..items).map(|i| i.to_string()).collect()] }
    }

    #[test]
    fn weighted_loss_with_equal_weights_is_the_plain_loss() {
        let cat = random_catalog(40, &[4, 4, 3], 2);
        let sidecar = Sidecar::for_catalog("t", ".", cat.manifest(), 5);
        let mut inter = one_user(9);
        inter.users.push("v".into());
        inter.sequences.push(["3", "7", "1", "30", "12"].iter().map(|s| s.to_string()).collect());
        let cfg = ModelConfig::llama(sidecar.min_vocab(), 16, 1, 2, 1, 32);
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(init_weights(&cfg, 0.02, 3, &dev).unwrap(), DType::F32, &dev);
        let net = Transformer::load(vb, &cfg).unwrap();
        let loss = |seqs: &[TrainSeq], weighted: bool| {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let rows: Vec<usize> = (0..seqs.len()).collect();
            share_loss(&net, seqs, &rows, sidecar.pad_token_id, 0.0, weighted, &mut rng, &dev)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let plain = training_sequences(&cat, &inter, &sidecar, 5, None, &mut PrefixDraw::none());
        let (a, b) = (loss(&plain, false), loss(&plain, true));
        assert!((a - b).abs() < 1e-5 * a.abs(), "{a} vs {b}");
        // weights change the loss: only the last item of each user counts
        let mut last_only = plain.clone();
        for s in &mut last_only {
            let n = s.weights.len();
            let keep = n - sidecar.levels();
            s.weights[1..keep].iter_mut().for_each(|w| *w = 0.0);
        }
        assert!((loss(&last_only, true) - a).abs() > 1e-4);
    }
}
