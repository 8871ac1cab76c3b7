//! `serve --watch`: new checkpoints dropped into the model root go into
//! service. A folder counts as new when its name or its files (sizes, times)
//! change and its weights' fingerprint is one this server has not served:
//! a checkpoint moved in with `mv` (old file times) is seen, the folder a
//! rollback left is not loaded again (the rollback holds until a new
//! checkpoint comes), and a folder is loaded only once its files stayed the
//! same for one whole interval. Dot-folders (`.staging-*`) are skipped:
//! write there, then rename. An ensemble's members are part of its folder:
//! a change to a member's files is a change to the folder.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::model_root::{ModelRoot, METADATA_FILES};
use super::Engine;
use crate::model::shards::INDEX_FILE;
use crate::model::WEIGHTS_FILE;

/// What a folder's files look like: per file, its size and modification time.
type Stamp = Vec<(u64, SystemTime)>;

struct Folder {
    stamp: Stamp,
    /// Looked at since its files last changed (loaded, refused or known).
    handled: bool,
}

/// The watch's memory between ticks.
pub(super) struct Watcher {
    root: ModelRoot,
    folders: HashMap<String, Folder>,
    /// Versions (weights fingerprints) that have been in service.
    served: HashSet<String>,
    first: bool,
}

/// The checkpoint folders directly under `root` (not dot-folders, not links)
/// and their stamps.
fn scan(root: &Path) -> Vec<(String, Stamp)> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if name.starts_with('.') || !e.file_type().ok()?.is_dir() {
                return None;
            }
            // an ensemble's members count as its files: a folder whose member
            // is still being copied is not complete yet
            let mut stamp = stamp_of(&e.path())?;
            for rel in members_of(&e.path()) {
                stamp.extend(stamp_of(&e.path().join(rel))?);
            }
            Some((name, stamp))
        })
        .collect()
}

/// The sizes and times of a checkpoint folder's files (a sharded one's index
/// and every shard it names); `None` while one is missing or not a plain
/// file.
fn stamp_of(dir: &Path) -> Option<Stamp> {
    let one = |f: &str| {
        let m = std::fs::symlink_metadata(dir.join(f)).ok().filter(|m| m.is_file())?;
        Some((m.len(), m.modified().ok()?))
    };
    let mut stamp: Stamp = METADATA_FILES.iter().map(|f| one(f)).collect::<Option<_>>()?;
    match one(WEIGHTS_FILE) {
        Some(s) => stamp.push(s),
        None => {
            stamp.push(one(INDEX_FILE)?);
            let index = std::fs::read(dir.join(INDEX_FILE)).ok()?;
            for shard in crate::model::shards::shard_names(&index).ok()? {
                stamp.push(one(&shard)?);
            }
        }
    }
    Some(stamp)
}

/// The members a folder's sidecar lists (none when it cannot be read: the
/// load then says why).
fn members_of(dir: &Path) -> Vec<String> {
    let read = std::fs::read(dir.join(crate::model::sidecar::SIDECAR_FILE)).ok();
    let sidecar = read.and_then(|b| serde_json::from_slice::<crate::model::Sidecar>(&b).ok());
    sidecar
        .map(|s| s.members)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| crate::model::ensemble::check_member_path(r).is_ok())
        .collect()
}

impl Watcher {
    pub(super) fn new(root: ModelRoot) -> Self {
        Watcher { root, folders: HashMap::new(), served: HashSet::new(), first: true }
    }

    /// One look at the root; loads at most one checkpoint.
    pub(super) fn tick(&mut self, engine: &Engine) {
        let (current, previous) = engine.models();
        self.served.extend(current.iter().chain(previous.iter()).map(|m| m.version.clone()));
        // at start, what is there is known, unless no model serves yet
        let known_at_start = self.first && current.is_some();
        self.first = false;
        let now = scan(self.root.path());
        self.folders.retain(|name, _| now.iter().any(|(n, _)| n == name));
        let mut ready: Vec<(SystemTime, String)> = Vec::new();
        for (name, stamp) in now {
            match self.folders.get_mut(&name) {
                None => {
                    self.folders.insert(name, Folder { stamp, handled: known_at_start });
                }
                Some(f) if f.stamp != stamp => *f = Folder { stamp, handled: false },
                Some(f) if !f.handled => {
                    let newest = f.stamp.iter().map(|s| s.1).max().unwrap_or(SystemTime::UNIX_EPOCH);
                    ready.push((newest, name));
                }
                Some(_) => {}
            }
        }
        ready.sort_by(|a, b| b.cmp(a));
        for (_, name) in ready {
            if let Some(f) = self.folders.get_mut(&name) {
                f.handled = true;
            }
            match self.version_of(&name) {
                Ok(v) if self.served.contains(&v) => continue, // served before: not new
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "watch: skipped {name}");
                    continue;
                }
            }
            match engine.load_checkpoint(&name) {
                Ok(info) => {
                    tracing::info!(version = %info.version, "watch: loaded {name}");
                    self.served.insert(info.version);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "watch: refused {name} (tried again when its files change)"),
            }
        }
    }

    /// The version a folder's model would have (see
    /// [`crate::model::Ensemble::version`]): its weights' fingerprint, combined
    /// with its members' for an ensemble.
    fn version_of(&self, name: &str) -> Result<String, String> {
        let d = self.root.open(name).map_err(|e| e.to_string())?;
        let sidecar: crate::model::Sidecar =
            serde_json::from_slice(&d.read(crate::model::sidecar::SIDECAR_FILE).map_err(|e| e.to_string())?)
                .map_err(|e| format!("{}: {e}", crate::model::sidecar::SIDECAR_FILE))?;
        let mut versions = vec![weights_fingerprint(&d)?];
        for rel in &sidecar.members {
            crate::model::ensemble::check_member_path(rel).map_err(|e| e.to_string())?;
            versions.push(weights_fingerprint(&d.open_below(rel).map_err(|e| e.to_string())?)?);
        }
        Ok(crate::model::ensemble::combined_fingerprint(&versions))
    }
}

/// The fingerprint of an opened checkpoint folder's weights, as
/// [`crate::model::Model::fingerprint`] has it.
fn weights_fingerprint(d: &super::model_root::CheckpointDir) -> Result<String, String> {
    let w = crate::model::WeightFiles::open(|f| d.file(f)).map_err(|e| e.to_string())?;
    // SAFETY: read-only views of checkpoint files (see Model::load_opened)
    let maps = w
        .files
        .iter()
        .map(|(_, f)| unsafe { memmap2::Mmap::map(f) })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let shards: Vec<(&str, &[u8])> = w.files.iter().zip(&maps).map(|((n, _), m)| (n.as_str(), &m[..])).collect();
    Ok(crate::model::shards::weights_fingerprint(&shards))
}

/// Runs the watch every `every` until the engine is dropped.
pub(super) fn spawn(engine: Weak<Engine>, root: ModelRoot, every: Duration) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("genrec-watch".into())
        .spawn(move || {
            let mut w = Watcher::new(root);
            loop {
                std::thread::sleep(every);
                let Some(engine): Option<Arc<Engine>> = engine.upgrade() else { return };
                w.tick(&engine);
            }
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sharded_checkpoint_is_complete_once_every_shard_is_there() {
        let dir = std::env::temp_dir().join(format!("genrec-watch-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in METADATA_FILES {
            std::fs::write(dir.join(f), b"{}").unwrap();
        }
        assert!(stamp_of(&dir).is_none(), "no weights yet");
        let index =
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(dir.join(INDEX_FILE), index).unwrap();
        std::fs::write(dir.join("model-00001-of-00002.safetensors"), b"x").unwrap();
        assert!(stamp_of(&dir).is_none(), "a shard still being copied");
        std::fs::write(dir.join("model-00002-of-00002.safetensors"), b"y").unwrap();
        assert_eq!(stamp_of(&dir).map(|s| s.len()), Some(5), "config, sidecar, index and two shards");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
