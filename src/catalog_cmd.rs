//! The catalog commands: `index` (items and embeddings to a catalog folder,
//! streaming, with learned or imported semantic IDs and the ANN index) and
//! `catalog compact|info` (a folder's versions and edit log).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use genrec::catalog::build::{self as index_build, MappedRows, SidSource};
use genrec::catalog::collab::{collaborative_embeddings, mix, CollabOptions};
use genrec::catalog::embed::{TextEncoder, DEFAULT_ENCODER_DIR};
use genrec::catalog::rqkmeans::{learn_codebooks, Rows, SliceRows, DEFAULT_MAX_GROUP, DEFAULT_SAMPLE};
use genrec::catalog::shard::{write_shard, CodebooksFile, ShardSet};
use genrec::catalog::{Catalog, CatalogError, RqOptions};
use genrec::dataset;

#[derive(clap::Args)]
pub(crate) struct IndexArgs {
    /// Items: NAME.item.json ({"item id": {"title": ..., ...}}, read in id
    /// order) or JSON Lines NAME.jsonl (one {"id": ..., "title": ..., ...} per
    /// line, streamed in file order).
    #[arg(long)]
    items: PathBuf,
    /// Output catalog folder (built under a temporary name, renamed at the end;
    /// replaces a catalog folder there).
    #[arg(long)]
    out: PathBuf,
    /// Precomputed embeddings instead of MiniLM: a safetensors file with one
    /// tensor [items, dim] in F32, F16 or BF16, rows in the items' order (the
    /// file order of a .jsonl, the id order of a .json). Read through a memory
    /// map, a block at a time.
    #[arg(long)]
    embeddings: Option<PathBuf>,
    /// Semantic IDs computed elsewhere (e.g. an RQ-VAE trained in PyTorch):
    /// JSON Lines, one {"id": ..., "sid": [c1, c2, ...]} per line, every item
    /// once, codes below --codebook-size. A collision code is added on top.
    /// The catalog then has no codebooks: live upserts give their semantic_id.
    #[arg(long)]
    sids: Option<PathBuf>,
    /// Sentence encoder folder (fetched by scripts/fetch-models.sh).
    #[arg(long, env = "GENREC_ENCODER", default_value = DEFAULT_ENCODER_DIR)]
    encoder: PathBuf,
    #[command(flatten)]
    rq: LearnArgs,
    /// Largest group of items that may share all k-means codes (the width of
    /// the collision code): a code under a prefix takes no more items than
    /// the levels below can hold in groups this size, the others go to their
    /// next-nearest code. 0: plain nearest codes (groups unbounded).
    #[arg(long, default_value_t = DEFAULT_MAX_GROUP)]
    max_group: usize,
    /// Catalog name (default: the items file's name before the first dot).
    #[arg(long)]
    name: Option<String>,
    /// Texts per encoder batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Interactions file, NAME.inter.json: mixes collaborative embeddings
    /// (items bought together, from the training part of each sequence: all but
    /// its last two items) into the content embeddings before quantising.
    #[arg(long)]
    interactions: Option<PathBuf>,
    /// Share of the collaborative part in the mixed embedding (0..1; with
    /// --interactions; 0.8 was best on Beauty's validation split among 0.5, 0.8, 0.95).
    #[arg(long, default_value_t = 0.8)]
    collab_weight: f32,
    /// Dimensions of the collaborative embedding (with --interactions).
    #[arg(long, default_value_t = 64)]
    collab_dim: usize,
    /// Codebooks learned beforehand (`genrec codebooks`, or any safetensors
    /// file with the same tensors): every item is assigned its codes with
    /// them instead of learning new ones. The levels, codebook size and seed
    /// are the file's. Needs --embeddings.
    #[arg(long, requires = "embeddings", conflicts_with_all = ["sids", "interactions", "levels", "codebook_size", "iterations", "sample", "seed"])]
    codebooks: Option<PathBuf>,
    /// The folder where `genrec assign --shard I/N` wrote the nearest codes of
    /// every shard, made with --codebooks: this run is then the merge of a
    /// sharded build, and writes the catalog a one-process `genrec index`
    /// writes, byte for byte.
    #[arg(long, requires = "codebooks")]
    assigned: Option<PathBuf>,
    /// Write the report (phases, sizes, collisions) as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// `genrec codebooks`: the first stage of a sharded build.
#[derive(clap::Args)]
pub(crate) struct CodebooksArgs {
    /// Embeddings: a safetensors file with one tensor [items, dim] (F32, F16
    /// or BF16), rows in the items' order, as `genrec index --embeddings`.
    #[arg(long)]
    embeddings: PathBuf,
    /// The codebooks file to write (safetensors: one [codes, dim] tensor per level).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    rq: LearnArgs,
}

/// How the semantic-ID codebooks are learned (`index` and `codebooks`).
#[derive(clap::Args)]
pub(crate) struct LearnArgs {
    /// K-means levels of the semantic ID (a collision code is added on top).
    #[arg(long, default_value_t = 3)]
    levels: usize,
    /// Codes per level.
    #[arg(long, default_value_t = 256)]
    codebook_size: usize,
    /// Lloyd iterations per level.
    #[arg(long, default_value_t = 25)]
    iterations: usize,
    /// Items the codebooks are learned on (a uniform sample; all items when
    /// the catalog is smaller). Every item is then assigned its codes.
    #[arg(long, default_value_t = DEFAULT_SAMPLE)]
    sample: usize,
    /// Random seed of the sample and of k-means (and the catalog's): the
    /// same seed gives the same semantic IDs.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

impl LearnArgs {
    fn check(&self) -> Result<()> {
        if self.levels == 0 || self.codebook_size < 2 {
            bail!("--levels must be at least 1 and --codebook-size at least 2");
        }
        Ok(())
    }

    fn options(&self, max_group: usize) -> RqOptions {
        RqOptions {
            levels: self.levels,
            codebook_size: self.codebook_size,
            iterations: self.iterations,
            seed: self.seed,
            sample: self.sample,
            max_group,
        }
    }
}

/// `genrec assign`: the second stage of a sharded build, any number at once.
#[derive(clap::Args)]
pub(crate) struct AssignArgs {
    /// The codebooks file `genrec codebooks` wrote.
    #[arg(long)]
    codebooks: PathBuf,
    /// The embeddings the codebooks were learned from.
    #[arg(long)]
    embeddings: PathBuf,
    /// This process's share: I/N takes the I-th of N equal ranges of rows
    /// (0 <= I < N; a Kubernetes Indexed Job's JOB_COMPLETION_INDEX is I).
    #[arg(long)]
    shard: genrec::catalog::shard::ShardSpec,
    /// Folder for the shard's files, shared by all shards and the merge
    /// (`genrec index --assigned`).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct CatalogArgs {
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Write a catalog folder with its segments and edit log as a new version
    /// (beside the current one, switched to by an atomic rename). The folder
    /// must not be in use by a server: a running server folds and compacts by
    /// itself (--fold-log-mb, --compact-edits-mb) or on POST
    /// /admin/catalog/fold and /admin/catalog/compact.
    Compact {
        /// Catalog folder.
        dir: PathBuf,
    },
    /// Write the ANN index (IVF) of a catalog folder's current version into
    /// it again: for a version made before genrec wrote one (a server then
    /// builds it in memory at every start), or to calibrate its probe count
    /// again. A version that has one keeps its cells and lists unless
    /// --relearn. The folder must not be in use by a server or by replicas.
    Ann {
        /// Catalog folder.
        dir: PathBuf,
        /// Learn the cells again from the version's items (compactions keep
        /// them: a catalog that grew far past the size it was indexed at
        /// has too few).
        #[arg(long)]
        relearn: bool,
    },
    /// Print a catalog folder's version, sizes, segments and pending edits as JSON.
    Info {
        /// Catalog folder.
        dir: PathBuf,
    },
}

fn stem(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().split('.').next().unwrap_or("catalog").to_string())
        .unwrap_or_else(|| "catalog".into())
}

/// Mixes collaborative embeddings from the training part of `inter` into the
/// content embeddings `emb` (see `genrec::catalog::collab`).
fn mix_collaborative(
    ids: &[&str],
    inter: &Path,
    emb: Vec<f32>,
    dim: usize,
    embedder: &str,
    a: &IndexArgs,
) -> Result<(Vec<f32>, usize, String)> {
    if !(0.0..=1.0).contains(&a.collab_weight) {
        bail!("--collab-weight must be between 0 and 1, got {}", a.collab_weight);
    }
    let t0 = Instant::now();
    let data = dataset::load_interactions(inter)?;
    let index: HashMap<&str, u32> = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
    let seqs: Vec<Vec<u32>> = data
        .sequences
        .iter()
        .map(|s| dataset::train_part(s).iter().filter_map(|id| index.get(id.as_str()).copied()).collect())
        .collect();
    let opts = CollabOptions { dim: a.collab_dim, seed: a.rq.seed, ..Default::default() };
    let cf = collaborative_embeddings(ids.len(), &seqs, &opts);
    let silent = cf.chunks(opts.dim).filter(|r| r.iter().all(|&x| x == 0.0)).count();
    eprintln!(
        "index: collaborative embeddings ({} dims, weight {}) from {} sequences in {:.1}s; {silent} items co-occur with nothing",
        opts.dim,
        a.collab_weight,
        seqs.len(),
        t0.elapsed().as_secs_f64()
    );
    let mixed = mix(&emb, dim, &cf, opts.dim, a.collab_weight);
    Ok((mixed, dim + opts.dim, format!("{embedder}+collab{}x{}", opts.dim, a.collab_weight)))
}

pub(crate) fn index(a: IndexArgs) -> Result<()> {
    let t0 = Instant::now();
    a.rq.check()?;
    let need_texts = a.embeddings.is_none();
    // learned beforehand: the codebooks (and their seed), and the shards' work
    let books = a.codebooks.as_deref().map(CodebooksFile::read).transpose()?;
    let seed = books.as_ref().map_or(a.rq.seed, |b| b.seed);

    // from a file of embeddings, a JSON Lines file of items is read after
    // the semantic IDs are made (counted first): the items' strings and the
    // assignment's arrays never share memory (8 GB and 6 GB at 10^8)
    let later = match (&a.embeddings, &a.interactions, &a.sids) {
        (Some(_), None, None) => dataset::count_jsonl_items(&a.items)?,
        _ => None,
    };
    if let Some(n) = later {
        if n == 0 {
            bail!("{}: no items", a.items.display());
        }
        let p = a.embeddings.as_deref().context("embeddings")?;
        let mapped = MappedRows::open(p, n)?;
        eprintln!("index: {n} items in {} (read after the semantic IDs)", a.items.display());
        let read = || index_build::read_items(&a.items, false, seed);
        return finish_index(&a, index_build::Items::After(Box::new(read)), &mapped, embedder_name(p), seed, books, t0);
    }
    let items = index_build::read_items(&a.items, need_texts, seed)?;
    if items.is_empty() {
        bail!("{}: no items", a.items.display());
    }
    eprintln!("index: {} items from {} in {:.1}s", items.len(), a.items.display(), t0.elapsed().as_secs_f64());
    // the embeddings: a mapped file read row by row, or computed in memory
    let mapped;
    let owned: Vec<f32>;
    let in_memory;
    let (rows, embedder): (&dyn Rows, String) = match (&a.embeddings, &a.interactions) {
        (Some(p), None) => {
            mapped = MappedRows::open(p, items.len())?;
            (&mapped, embedder_name(p))
        }
        (src, inter) => {
            let (e, d, name) = match src {
                Some(p) => {
                    let m = MappedRows::open(p, items.len())?;
                    (m.to_vec(), m.dim(), embedder_name(p))
                }
                None => {
                    let enc = TextEncoder::load(&a.encoder)?;
                    let texts = items.texts.as_ref().context("item texts")?;
                    let p = genrec::progress::Progress::new("embedding texts", texts.len() as u64);
                    let e = enc.embed(texts, a.batch, |d, _| p.set(d as u64))?;
                    p.finish();
                    (e, enc.dim(), enc.name().to_string())
                }
            };
            let (e, d, name) = match inter {
                Some(p) => {
                    let ids: Vec<&str> = (0..items.len()).map(|i| items.ids.get(i)).collect();
                    mix_collaborative(&ids, p, e, d, &name, &a)?
                }
                None => (e, d, name),
            };
            owned = e;
            in_memory = SliceRows { data: &owned, dim: d };
            (&in_memory, name)
        }
    };
    eprintln!("index: {} x {} embeddings ready in {:.1}s", items.len(), rows.dim(), t0.elapsed().as_secs_f64());
    finish_index(&a, index_build::Items::Read(Box::new(items)), rows, embedder, seed, books, t0)
}

/// `file:NAME` for embeddings read from a file.
fn embedder_name(p: &Path) -> String {
    format!("file:{}", p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default())
}

/// The build from the semantic IDs on, and what it prints.
fn finish_index(
    a: &IndexArgs,
    items: index_build::Items,
    rows: &dyn Rows,
    embedder: String,
    seed: u64,
    books: Option<CodebooksFile>,
    t0: Instant,
) -> Result<()> {
    let shards = match (&a.assigned, &books) {
        (Some(dir), Some(b)) => Some(ShardSet::open(dir, b, rows)?),
        _ => None,
    };
    let sids = match (&a.sids, &books) {
        (Some(p), _) => SidSource::Import { path: p, codebook_size: a.rq.codebook_size },
        (None, Some(b)) => SidSource::Given { books: b, max_group: a.max_group, shards: shards.as_ref() },
        (None, None) => SidSource::Learn(a.rq.options(a.max_group)),
    };
    let name = a.name.clone().unwrap_or_else(|| stem(&a.items).to_lowercase());
    let ann = |cat: &Catalog, dir: &Path| {
        genrec::recall::write_version_index(cat, None, dir).map_err(|e| CatalogError::Format(e.to_string()))
    };
    let report = index_build::index(&a.out, &name, &embedder, items, rows, sids, seed, &ann)?;
    for (l, used) in report.used_codes.iter().enumerate() {
        println!(
            "level {l}: {used}/{} codes used; {} items moved off their nearest code by --max-group",
            report.codebook_sizes[l], report.moved[l]
        );
    }
    println!(
        "collisions: {} items in {} groups share their k-means codes; largest group {} (collision level size)",
        report.collided_items, report.collision_groups, report.max_group
    );
    let total: u64 = report.bytes.iter().map(|b| b.1).sum();
    println!(
        "wrote catalog {:?} ({} items, semantic IDs {:?}, {:.1} MB) to {} in {:.1}s",
        name,
        report.items,
        report.codebook_sizes,
        total as f64 / 1e6,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(p) = &a.report {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// `genrec codebooks`: learns the codebooks on a sample and writes them.
pub(crate) fn codebooks(a: CodebooksArgs) -> Result<()> {
    let t0 = Instant::now();
    a.rq.check()?;
    let rows = MappedRows::map(&a.embeddings)?;
    rows.check(0..rows.len(), &a.embeddings)?;
    let opts = a.rq.options(0);
    let bars = index_build::Bars::default();
    let codebooks = learn_codebooks(&rows, &opts, &|p, d, t| bars.set(p, d, t))?;
    let file = CodebooksFile { codebooks, rows: rows.len(), seed: a.rq.seed };
    file.write(&a.out)?;
    println!(
        "wrote {} levels of {} codes ({} rows of {} dimensions, fingerprint {}) to {} in {:.1}s",
        a.rq.levels,
        file.codebooks.k,
        file.rows,
        rows.dim(),
        file.fingerprint(),
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `genrec assign --shard I/N`: one shard's nearest codes.
pub(crate) fn assign(a: AssignArgs) -> Result<()> {
    let t0 = Instant::now();
    let books = CodebooksFile::read(&a.codebooks)?;
    let rows = MappedRows::map(&a.embeddings)?;
    books.check_shape(&rows)?;
    let range = a.shard.rows(rows.len());
    rows.check(range.clone(), &a.embeddings)?;
    let p = genrec::progress::Progress::new("nearest codes", range.len() as u64);
    let info = write_shard(&a.out, a.shard, &rows, &books, &|d, _| p.set(d as u64))?;
    p.finish();
    println!(
        "shard {}/{}: rows {}..{} assigned in {:.1}s, written to {}",
        info.index,
        info.count,
        info.start,
        info.end,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

pub(crate) fn catalog_cmd(a: CatalogArgs) -> Result<()> {
    match a.command {
        CatalogCommand::Compact { dir } => {
            let t0 = Instant::now();
            let (cat, log, mut wd, report) = genrec::catalog::dir::open_writable(&dir)?;
            eprintln!("compact: version {} with {} edits replayed", report.version, report.replayed);
            let (new_log, number) = wd.rotate()?;
            drop(log);
            let prev = cat.base().source.clone();
            let graph = |v: &Catalog, d: &Path| {
                genrec::recall::write_version_index(v, prev.as_deref(), d)
                    .map_err(|e| CatalogError::Format(e.to_string()))
            };
            let vdir = wd.commit_version(&cat, number, &graph)?;
            drop(new_log);
            println!(
                "compacted {} into {} ({} items served) in {:.1}s",
                dir.display(),
                vdir.display(),
                cat.served_len(),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        CatalogCommand::Ann { dir, relearn } => {
            let (cat, log, wd, report) = genrec::catalog::dir::open_writable(&dir)?;
            let version = cat.base().source.clone().with_context(|| {
                format!("{}: version {} is in the first format; compact it first", dir.display(), report.version)
            })?;
            drop((cat, log));
            let r = genrec::recall::ivf::rewrite_in_place(&version, relearn)?;
            drop(wd);
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        CatalogCommand::Info { dir } => {
            let (cat, report) = genrec::catalog::dir::open_read_only(&dir)?;
            let m = cat.manifest();
            let parts: serde_json::Map<String, serde_json::Value> =
                cat.base().memory().into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
            let info = serde_json::json!({
                "version": report.version,
                "name": m.name,
                "rows": cat.len(),
                "served": cat.served_len(),
                "codebook_sizes": m.codebook_sizes,
                "embedding_dim": m.embedding_dim,
                "fingerprint": m.fingerprint,
                "last_edit_id": cat.last_edit_id(),
                "edits_replayed": report.replayed,
                "segments": report.segments,
                "overlay_items": cat.overlay().len(),
                "fullness": cat.fullness(),
                "bytes": parts,
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
    }
}
