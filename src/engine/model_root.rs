//! The folder checkpoints may be loaded from (`--model-root`), resolved once
//! at start. A checkpoint is a folder directly or deeper under it; its files
//! are opened relative to the opened folder, refusing symbolic links, so
//! nothing outside the root can be read through a link or by swapping a
//! folder between the check and the read. A path outside the root and one
//! that does not exist get the same answer, so the API cannot probe the
//! file system.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::model::shards::INDEX_FILE;
use crate::model::sidecar::SIDECAR_FILE;
use crate::model::{CONFIG_FILE, WEIGHTS_FILE};

/// Files a checkpoint folder must hold besides its weights, which are
/// `model.safetensors` or the shards' index (the index names its shards,
/// which the loader opens through the same handle).
pub const METADATA_FILES: [&str; 2] = [CONFIG_FILE, SIDECAR_FILE];

/// Why a checkpoint folder could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// Outside the root, or not there: one answer for both.
    #[error("{0}: no checkpoint folder under the model root")]
    NotUnder(String),
    /// The folder is there but not a checkpoint (a file missing, a link).
    #[error("{0}")]
    Invalid(String),
    #[error("model root {path}: {source}")]
    Root { path: PathBuf, source: std::io::Error },
}

/// The resolved model root.
#[derive(Debug, Clone)]
pub struct ModelRoot {
    path: PathBuf,
}

/// An opened checkpoint folder: its path and a handle its files are opened
/// through.
pub struct CheckpointDir {
    path: PathBuf,
    dir: File,
}

fn open_at(dir: Option<&File>, name: &Path, flags: libc::c_int) -> std::io::Result<File> {
    let c = CString::new(name.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `c` is a valid NUL-terminated string and `at` an open
    // descriptor (or AT_FDCWD); the returned descriptor is owned below.
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

impl ModelRoot {
    /// Resolves `path` (relative to the working directory) once.
    pub fn new(path: &Path) -> Result<Self, RootError> {
        let path = path.canonicalize().map_err(|source| RootError::Root { path: path.to_path_buf(), source })?;
        if !path.is_dir() {
            let source = std::io::Error::other("not a folder");
            return Err(RootError::Root { path, source });
        }
        Ok(ModelRoot { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the checkpoint folder `asked` (relative to the root, or absolute
    /// under it), component by component from the root without following any
    /// link, and checks it holds the checkpoint files as regular files.
    pub fn open(&self, asked: &str) -> Result<CheckpointDir, RootError> {
        let not_under = || RootError::NotUnder(asked.to_string());
        let p = Path::new(asked);
        let rel = if p.is_absolute() { p.strip_prefix(&self.path).map_err(|_| not_under())? } else { p };
        let root = open_at(None, &self.path, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|_| not_under())?;
        walk_down(&root, &self.path, rel).ok_or_else(not_under)?.checked()
    }
}

/// Opens the folder `rel` under the open folder `from` (at `path`) one
/// component at a time, following no link; `None` for a path that is empty,
/// climbs (`..`), is absolute or is not there.
fn walk_down(from: &File, path: &Path, rel: &Path) -> Option<CheckpointDir> {
    let mut dir: Option<File> = None;
    let mut path = path.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(name) => {
                let parent = dir.as_ref().unwrap_or(from);
                dir = Some(open_at(Some(parent), Path::new(name), libc::O_RDONLY | libc::O_DIRECTORY).ok()?);
                path.push(name);
            }
            Component::CurDir => {}
            // `..`, a second root: never needed to name a folder below
            _ => return None,
        }
    }
    Some(CheckpointDir { path, dir: dir? })
}

impl CheckpointDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This folder, once it holds every checkpoint file as a plain file.
    fn checked(self) -> Result<Self, RootError> {
        for f in METADATA_FILES {
            self.file(f)?;
        }
        // the single weights file, else the index (its error when neither is
        // there names the single file)
        if let Err(single) = self.file(WEIGHTS_FILE) {
            self.file(INDEX_FILE).map_err(|_| single)?;
        }
        Ok(self)
    }

    /// The checkpoint folder `rel` under this one (an ensemble's member),
    /// opened from this folder's handle without following links, so a folder
    /// renamed meanwhile cannot lend the member of another.
    pub fn open_below(&self, rel: &str) -> Result<CheckpointDir, RootError> {
        walk_down(&self.dir, &self.path, Path::new(rel))
            .ok_or_else(|| RootError::Invalid(format!("{}: no checkpoint folder {rel} under it (a member must be a folder below the model, reached without links)", self.path.display())))?
            .checked()
    }

    /// Opens a file of the folder: a regular file, not a link.
    pub fn file(&self, name: &str) -> Result<File, RootError> {
        let where_ = || format!("{}/{name}", self.path.display());
        let f = open_at(Some(&self.dir), Path::new(name), libc::O_RDONLY).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                RootError::Invalid(format!("{} is a symbolic link; checkpoint files must be plain files", where_()))
            } else {
                RootError::Invalid(format!("{} has no {name} ({e})", self.path.display()))
            }
        })?;
        let meta = f.metadata().map_err(|e| RootError::Invalid(format!("{}: {e}", where_())))?;
        if !meta.is_file() {
            return Err(RootError::Invalid(format!("{} is not a plain file", where_())));
        }
        Ok(f)
    }

    /// The whole contents of a (small) file of the folder.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, RootError> {
        let mut bytes = Vec::new();
        self.file(name)?
            .read_to_end(&mut bytes)
            .map_err(|e| RootError::Invalid(format!("{}/{name}: {e}", self.path.display())))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for f in METADATA_FILES.iter().chain(&[WEIGHTS_FILE]) {
            std::fs::write(dir.join(f), b"{}").unwrap();
        }
    }

    #[test]
    fn a_sharded_checkpoint_opens_and_one_without_weights_does_not() {
        let base = std::env::temp_dir().join(format!("genrec-root-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for (name, weights) in [("sharded", Some(INDEX_FILE)), ("bare", None)] {
            std::fs::create_dir_all(base.join(name)).unwrap();
            for f in METADATA_FILES.iter().chain(weights.as_ref()) {
                std::fs::write(base.join(name).join(f), b"{}").unwrap();
            }
        }
        let r = ModelRoot::new(&base).unwrap();
        assert!(r.open("sharded").is_ok());
        match r.open("bare") {
            Err(RootError::Invalid(m)) => assert!(m.contains("model.safetensors"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn links_out_of_the_root_and_probes_are_refused_alike() {
        let base = std::env::temp_dir().join(format!("genrec-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, outside) = (base.join("root"), base.join("outside"));
        checkpoint(&root.join("a"));
        checkpoint(&root.join("deep/b"));
        checkpoint(&outside.join("x"));
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        // a folder that is a link out of the root, and a file that is one
        std::os::unix::fs::symlink(outside.join("x"), root.join("linked")).unwrap();
        checkpoint(&root.join("c"));
        std::fs::remove_file(root.join("c/config.json")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("c/config.json")).unwrap();

        let r = ModelRoot::new(&root).unwrap();
        assert_eq!(r.open("a").unwrap().read("config.json").unwrap(), b"{}");
        assert!(r.open("deep/b").is_ok());
        assert!(r.open(root.join("a").to_str().unwrap()).is_ok(), "absolute under the root");
        let same = |asked: &str| match r.open(asked) {
            Err(RootError::NotUnder(p)) => assert_eq!(p, asked),
            Err(e) => panic!("{asked}: {e}"),
            Ok(_) => panic!("{asked} opened"),
        };
        for asked in
            ["linked", "missing", "../outside/x", "a/../../outside/x", "", ".", outside.join("x").to_str().unwrap()]
        {
            same(asked);
        }
        match r.open("c") {
            Err(RootError::Invalid(m)) => assert!(m.contains("symbolic link"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
