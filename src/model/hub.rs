//! Checkpoints pulled from the Hugging Face Hub by name:
//! `hf:ORG/REPO[@REVISION]` (for `serve --model`, `genrec pull` and
//! `POST /admin/models`).
//!
//! A pull asks the Hub which commit the revision names, then fetches that
//! commit's `config.json`, `genrec.json`, its weights (`model.safetensors`, or
//! the index and every shard it names), an LLM layout's tokenizer, item map
//! and prompt ([`super::llm`]), and the same files of each ensemble
//! member (the repository info through the `hf-hub` crate, the files through
//! [`super::hub_download`], each with a read timeout) into the standard Hugging Face cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`),
//! where transformers and other tools find them too. Every file comes from
//! the one commit, so a branch that moves mid-pull cannot mix two versions;
//! files already cached for that commit are not fetched again.
//!
//! `HF_ENDPOINT` names another Hub (a mirror, or a test's local server),
//! `HF_TOKEN` (else the cache's `token` file) authorises private repositories,
//! and `HF_HUB_OFFLINE=1` never touches the network: the revision must then be
//! in the cache. A name pinned to a commit whose files the cache holds is
//! served from the cache without asking the Hub (a commit never changes).
//! When the Hub cannot be reached at all, a caller that allows it
//! ([`WhenUnreachable::UseCache`], a server starting) gets the revision the cache holds,
//! with a warning. Nothing is downloaded unless a name of this form is given.

use std::collections::BTreeSet;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hf_hub::api::sync::{ApiBuilder, ApiError};

use super::hub_download::{DownloadError, Downloader};
use hf_hub::api::RepoInfo;
use hf_hub::{Cache, Repo, RepoType};

use super::shards::{shard_names, INDEX_FILE};
use super::sidecar::{Sidecar, SIDECAR_FILE};
use super::{ModelError, CONFIG_FILE, WEIGHTS_FILE};

/// What starts a Hub name.
pub const SCHEME: &str = "hf:";
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const DEFAULT_REVISION: &str = "main";

/// A checkpoint on the Hub: `hf:ORG/REPO[@REVISION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubName {
    /// `ORG/REPO`.
    pub repo: String,
    /// A branch, tag or commit; `None`: `main`.
    pub revision: Option<String>,
}

/// Why a checkpoint could not be pulled.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The name is not of the form `hf:ORG/REPO[@REVISION]`.
    #[error("{0}")]
    BadName(String),
    /// Offline (or the Hub unreachable) and the revision is not in the cache.
    #[error("{name}: {file} is not in the Hugging Face cache {cache} ({why})")]
    NotCached { name: String, file: String, cache: PathBuf, why: String },
    /// No such repository, revision or file (the Hub's `X-Error-Code`, or a
    /// 404).
    #[error("{name}: the Hub has no {what} (HTTP {status} from {endpoint})")]
    NotFound { name: String, what: String, status: u16, endpoint: String },
    /// The Hub answered 401 or 403 for a repository that is there: private
    /// or gated.
    #[error("{name}: the Hub refused access (HTTP {status}): {advice}")]
    Denied { name: String, status: u16, advice: String },
    /// The Hub could not be reached: no connection, name lookup or answer.
    #[error("{name}: {what}: the Hub could not be reached: {message}")]
    Unreachable { name: String, what: String, message: String },
    /// The Hub answered with an error status or an answer hf-hub cannot use.
    #[error("{name}: {what}: {message}")]
    HubFailed { name: String, what: String, message: String },
    /// Another pull (another process) holds the cache's lock on a file.
    #[error("{name}: {what}: another pull is downloading it; retry when it is done")]
    Busy { name: String, what: String },
    /// The repository is there but is not a genrec checkpoint.
    #[error("{name}: not a genrec checkpoint: {message}")]
    NotCheckpoint { name: String, message: String },
    /// A downloaded file whose content is not what the Hub's hash says (it is
    /// removed from the cache).
    #[error("{name}: {file} arrived corrupted: its SHA-256 is {got}, the Hub says {expected}; removed from the cache, pull again")]
    Corrupt { name: String, file: String, expected: String, got: String },
    /// This machine's settings leave no place for the cache.
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl HubError {
    /// What kind of failure this is.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            HubError::BadName(_) => ErrorKind::invalid("path"),
            HubError::NotCheckpoint { .. } => ErrorKind::Invalid { field: None },
            HubError::NotFound { .. } | HubError::NotCached { .. } => ErrorKind::NotFound,
            HubError::Denied { .. } => ErrorKind::Forbidden,
            HubError::Unreachable { .. } | HubError::HubFailed { .. } | HubError::Corrupt { .. } => ErrorKind::Upstream,
            HubError::Busy { .. } => ErrorKind::Conflict,
            HubError::Io { .. } | HubError::Setup(_) => ErrorKind::Internal,
        }
    }
}

/// Where and how to pull, read from the environment by [`HubOptions::from_env`].
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub endpoint: String,
    /// The hub cache folder (holding `models--ORG--REPO/`).
    pub cache: PathBuf,
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: use the cache only.
    pub offline: bool,
    /// Progress bars for downloads (when stderr is a terminal).
    pub progress: bool,
    /// How long the Hub may take to answer a pull's first question, and to
    /// send each next part of a download (`GENREC_HUB_TIMEOUT_S`, default 30).
    pub answer_timeout: std::time::Duration,
}

/// What a pull may do when the Hub cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnreachable {
    /// Fail: the caller asked for what the Hub has now (an admin load).
    Fail,
    /// Serve the revision the cache holds, with a warning (a server
    /// starting, which would otherwise not start at all).
    UseCache,
}

/// A pulled checkpoint: its folder in the cache and the commit it is.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub name: HubName,
    /// `.../models--ORG--REPO/snapshots/<commit>`.
    pub dir: PathBuf,
    pub commit: String,
    /// Files this pull downloaded (0: all were cached).
    pub downloaded: usize,
}

impl Pulled {
    /// The name pinned to the commit (`hf:ORG/REPO@<commit>`): what the engine
    /// reports as the model's source, and what replicas are told to load, so
    /// that all of them serve the same files.
    pub fn pinned(&self) -> HubName {
        HubName { repo: self.name.repo.clone(), revision: Some(self.commit.clone()) }
    }
}

/// Where a checkpoint is: a local folder, or a name on the Hub (`serve
/// --model`, `POST /admin/models`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointLocation {
    Folder(PathBuf),
    Hub(HubName),
}

impl FromStr for CheckpointLocation {
    type Err = HubError;

    fn from_str(s: &str) -> Result<Self, HubError> {
        if s.is_empty() {
            return Err(HubError::BadName("expected a model folder or hf:ORG/REPO[@REVISION]".into()));
        }
        Ok(match HubName::parse_if_hub(s)? {
            Some(h) => CheckpointLocation::Hub(h),
            None => CheckpointLocation::Folder(PathBuf::from(s)),
        })
    }
}

impl fmt::Display for CheckpointLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointLocation::Folder(p) => write!(f, "{}", p.display()),
            CheckpointLocation::Hub(h) => h.fmt(f),
        }
    }
}

impl HubName {
    /// `Some` for a string that starts with `hf:` (an error if the rest is
    /// malformed), `None` for anything else (a folder).
    pub fn parse_if_hub(s: &str) -> Result<Option<Self>, HubError> {
        if s.starts_with(SCHEME) {
            s.parse().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The revision asked for, `main` when none was.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }
}

impl FromStr for HubName {
    type Err = HubError;

    fn from_str(s: &str) -> Result<Self, HubError> {
        let bad = |why: &str| HubError::BadName(format!("{s:?}: {why} (expected hf:ORG/REPO or hf:ORG/REPO@REVISION)"));
        let rest = s.strip_prefix(SCHEME).ok_or_else(|| bad("a Hub name starts with hf:"))?;
        let (repo, revision) = match rest.split_once('@') {
            Some((r, v)) => (r, Some(v)),
            None => (rest, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| is_name_part(p)) {
            return Err(bad("the repository must be ORG/REPO, each of letters, digits, '-', '_' and '.', not starting with '.' or '-'"));
        }
        if let Some(v) = revision {
            if !is_revision(v) {
                return Err(bad("the revision must be a branch, tag or commit: letters, digits, '-', '_', '.' and '/' between names"));
            }
        }
        Ok(HubName { repo: repo.to_string(), revision: revision.map(str::to_string) })
    }
}

impl fmt::Display for HubName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.repo)?;
        match &self.revision {
            Some(v) => write!(f, "@{v}"),
            None => Ok(()),
        }
    }
}

fn is_name_part(p: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !p.is_empty() && p.len() <= 96 && p.chars().all(ok_char) && !p.starts_with(['.', '-']) && !p.contains("..")
}

/// A branch or tag (names joined by `/`, none of them `.` or `..`-like) or a
/// commit; it names a file under the cache's `refs/`, so it must not climb.
fn is_revision(v: &str) -> bool {
    v.len() <= 256 && v.split('/').all(is_name_part)
}

fn is_commit(v: &str) -> bool {
    v.len() == 40 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `HF_HUB_OFFLINE`'s values that mean yes, as the Python client reads them.
fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

impl HubOptions {
    /// The Hugging Face client's settings: `HF_ENDPOINT`, `HF_HUB_CACHE` /
    /// `HF_HOME` / `XDG_CACHE_HOME`, `HF_TOKEN` (else `$HF_HOME/token`) and
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<Self, HubError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            let xdg =
                var("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")));
            xdg.map(|c| c.join("huggingface"))
        });
        let cache =
            var("HF_HUB_CACHE").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join("hub"))).ok_or_else(
                || HubError::Setup("no Hugging Face cache folder: set HF_HOME (or HF_HUB_CACHE, or HOME)".into()),
            )?;
        let token = var("HF_TOKEN").or_else(|| {
            let file = home.as_ref()?.join("token");
            std::fs::read_to_string(file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        Ok(HubOptions {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string(),
            cache,
            token,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            progress: std::io::stderr().is_terminal(),
            answer_timeout: match var("GENREC_HUB_TIMEOUT_S") {
                None => std::time::Duration::from_secs(30),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(std::time::Duration::from_secs_f64)
                    .ok_or_else(|| {
                        HubError::Setup(format!("GENREC_HUB_TIMEOUT_S must be a positive number of seconds, not {v:?}"))
                    })?,
            },
        })
    }

    fn repo_dir(&self, name: &HubName) -> PathBuf {
        self.cache.join(Repo::model(name.repo.clone()).folder_name())
    }
}

/// Pulls one at a time in this process: two pulls of one repository share
/// its blobs and snapshot links.
static PULLS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Pulls the checkpoint `name` (see the module's comment) and returns its
/// folder in the cache. Blocking: network and disk.
pub fn pull(name: &HubName, opts: &HubOptions, unreachable: WhenUnreachable) -> Result<Pulled, HubError> {
    if opts.offline {
        return from_cache(name, opts, "HF_HUB_OFFLINE is set");
    }
    // a commit's files never change: complete in the cache, no need to ask
    if name.revision.as_deref().is_some_and(is_commit) {
        if let Ok(p) = from_cache(name, opts, "") {
            return Ok(p);
        }
    }
    let _one = PULLS.lock();
    match pull_online(name, opts) {
        Err(HubError::Unreachable { name: n, what, message }) if unreachable == WhenUnreachable::UseCache => {
            let why = format!("the Hub could not be reached: {message}");
            match from_cache(name, opts, &why) {
                Ok(p) => {
                    tracing::warn!(model = %name, commit = %p.commit, error = %message, "the Hub could not be reached: serving the revision the cache holds, which may be older than the Hub's");
                    Ok(p)
                }
                Err(_) => Err(HubError::Unreachable { name: n, what, message }),
            }
        }
        other => other,
    }
}

/// How a pull reads a repository: whether it holds a file, how to bring
/// one to a local path, and the error for a file it lacks.
struct Source<'a> {
    has: &'a dyn Fn(&str) -> bool,
    fetch: &'a mut dyn FnMut(&str) -> Result<PathBuf, HubError>,
    missing: &'a dyn Fn(String) -> HubError,
}

/// The files of one checkpoint folder (`prefix` is `""` for the lead,
/// `member/` for a member): its config, sidecar and weights.
fn checkpoint_files(name: &HubName, prefix: &str, src: &mut Source) -> Result<Sidecar, HubError> {
    let not_checkpoint = |message: String| HubError::NotCheckpoint { name: name.to_string(), message };
    let mut fetch = |f: &str| -> Result<PathBuf, HubError> {
        let file = format!("{prefix}{f}");
        if !(src.has)(&file) {
            return Err((src.missing)(file));
        }
        (src.fetch)(&file)
    };
    fetch(CONFIG_FILE)?;
    let sidecar_path = fetch(SIDECAR_FILE)?;
    let bytes = std::fs::read(&sidecar_path).map_err(|source| HubError::Io { path: sidecar_path.clone(), source })?;
    let sidecar: Sidecar =
        serde_json::from_slice(&bytes).map_err(|e| not_checkpoint(format!("{prefix}{SIDECAR_FILE}: {e}")))?;
    // an LLM layout's tokenizer, item map and prompt
    for f in sidecar.llm.iter().flat_map(|l| l.files()) {
        fetch(f)?;
    }
    let chat_file = format!("{prefix}{}", super::llm::chat::CHAT_TEMPLATE_FILE);
    if sidecar.llm.as_ref().is_some_and(|l| l.chat) && (src.has)(&chat_file) {
        fetch(super::llm::chat::CHAT_TEMPLATE_FILE)?;
    }
    if (src.has)(&format!("{prefix}{WEIGHTS_FILE}")) || !(src.has)(&format!("{prefix}{INDEX_FILE}")) {
        // the single file, or (neither there) the error that names it
        fetch(WEIGHTS_FILE)?;
    } else {
        let index_path = fetch(INDEX_FILE)?;
        let index = std::fs::read(&index_path).map_err(|source| HubError::Io { path: index_path.clone(), source })?;
        for shard in shard_names(&index).map_err(|e| not_checkpoint(e.to_string()))? {
            fetch(&shard)?;
        }
    }
    Ok(sidecar)
}

/// Every file of the checkpoint and its ensemble members.
fn all_files(name: &HubName, src: &mut Source) -> Result<(), HubError> {
    let lead = checkpoint_files(name, "", src)?;
    super::ensemble::check_member_list(&lead.members)
        .map_err(|e: ModelError| HubError::NotCheckpoint { name: name.to_string(), message: e.to_string() })?;
    for m in &lead.members {
        checkpoint_files(name, &format!("{}/", m.trim_end_matches('/')), src)?;
    }
    Ok(())
}

fn pull_online(name: &HubName, opts: &HubOptions) -> Result<Pulled, HubError> {
    let api = ApiBuilder::from_cache(Cache::new(opts.cache.clone()))
        .with_endpoint(opts.endpoint.clone())
        .with_token(opts.token.clone())
        .with_progress(opts.progress)
        .with_retries(3)
        .build()
        .map_err(|e| api_error(name, opts, "connecting", e))?;
    let what = format!("repository or revision {}", name.revision_or_main());
    // hf-hub sets no read timeout; the first question gets one, so that a
    // Hub (or proxy) that takes the connection and never answers fails here
    let info: RepoInfo = api
        .repo(Repo::with_revision(name.repo.clone(), RepoType::Model, name.revision_or_main().to_string()))
        .info_request()
        .timeout(opts.answer_timeout)
        .call()
        .map_err(|e| api_error(name, opts, &what, ApiError::RequestError(Box::new(e))))?
        .into_json()
        .map_err(|e| HubError::HubFailed {
            name: name.to_string(),
            what: what.clone(),
            message: format!("unreadable repository info: {e}"),
        })?;
    // the commit names a folder of the cache: only a commit hash is accepted
    if !is_commit(&info.sha) {
        return Err(HubError::HubFailed {
            name: name.to_string(),
            what: "repository info".into(),
            message: format!("the Hub named the commit {:?}, not a commit hash", info.sha),
        });
    }
    let listed: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let repo_dir = opts.repo_dir(name);
    let dir = repo_dir.join("snapshots").join(&info.sha);
    let downloader = Downloader::new(&opts.endpoint, opts.token.clone(), opts.answer_timeout, opts.progress);
    let mut downloaded = 0;
    let mut fetch = |file: &str| -> Result<PathBuf, HubError> {
        // the commit's file as any client left it (the Python client too)
        let local = dir.join(file);
        if local.is_file() {
            return Ok(local);
        }
        downloaded += 1;
        downloader.fetch(&name.repo, &info.sha, file, &repo_dir).map_err(|e| download_error(name, opts, file, e))
    };
    let missing = |file: String| HubError::NotCheckpoint {
        name: name.to_string(),
        message: format!("the repository has no {file} at {}", info.sha),
    };
    all_files(name, &mut Source { has: &|f| listed.contains(f), fetch: &mut fetch, missing: &missing })?;
    // the revision asked for now names this commit in the cache, so that an
    // offline start finds it
    write_ref(&repo_dir, name.revision_or_main(), &info.sha)?;
    tracing::info!(model = %name, commit = %info.sha, downloaded, folder = %dir.display(), "checkpoint pulled from the Hub");
    Ok(Pulled { name: name.clone(), dir, commit: info.sha, downloaded })
}

/// The revision as the cache has it, without the network.
fn from_cache(name: &HubName, opts: &HubOptions, why: &str) -> Result<Pulled, HubError> {
    let repo_dir = opts.repo_dir(name);
    let not_cached = |file: &str| HubError::NotCached {
        name: name.to_string(),
        file: file.to_string(),
        cache: opts.cache.clone(),
        why: why.to_string(),
    };
    let rev = name.revision_or_main();
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if is_commit(rev) => rev.to_string(),
        Err(_) => return Err(not_cached(&format!("revision {rev}"))),
    };
    if !is_commit(&commit) {
        return Err(not_cached(&format!("revision {rev} (its ref holds no commit hash)")));
    }
    let dir = repo_dir.join("snapshots").join(&commit);
    let mut locate = |f: &str| Ok(dir.join(f));
    let missing = |file: String| not_cached(&file);
    all_files(name, &mut Source { has: &|f| dir.join(f).is_file(), fetch: &mut locate, missing: &missing })?;
    Ok(Pulled { name: name.clone(), dir, commit, downloaded: 0 })
}

/// `refs/<revision>` naming `commit`, written to a temporary name and renamed.
fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<(), HubError> {
    let path = repo_dir.join("refs").join(revision);
    let io = |source| HubError::Io { path: path.clone(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    crate::util::write_atomic(&path, commit.as_bytes()).map_err(io)
}

/// The typed error for a failed download of `file`.
fn download_error(name: &HubName, opts: &HubOptions, file: &str, e: DownloadError) -> HubError {
    match e {
        DownloadError::Request(e) => api_error(name, opts, file, ApiError::RequestError(e)),
        DownloadError::Body(e) => HubError::Unreachable {
            name: name.to_string(),
            what: file.to_string(),
            message: format!("the download broke off: {e}"),
        },
        DownloadError::Io { path, source } => HubError::Io { path, source },
        DownloadError::Corrupt { expected, got } => {
            HubError::Corrupt { name: name.to_string(), file: file.to_string(), expected, got }
        }
    }
}

/// The typed error for an `hf-hub` failure on `what`. The Hub says what is
/// missing in `X-Error-Code` (it answers 401, not 404, to an anonymous
/// client asking for a repository that does not exist).
fn api_error(name: &HubName, opts: &HubOptions, what: &str, e: ApiError) -> HubError {
    let name_s = name.to_string();
    let failed = |message: String| HubError::HubFailed { name: name_s.clone(), what: what.to_string(), message };
    match e {
        ApiError::RequestError(req) => match *req {
            ureq::Error::Status(status, response) => {
                let code = response.header("x-error-code").unwrap_or_default().to_string();
                let not_found = |what: String| HubError::NotFound {
                    name: name_s.clone(),
                    what,
                    status,
                    endpoint: opts.endpoint.clone(),
                };
                match (code.as_str(), status) {
                    ("RepoNotFound", _) => not_found("such repository".into()),
                    ("RevisionNotFound", _) => not_found(format!("revision {}", name.revision_or_main())),
                    ("EntryNotFound", _) => not_found(format!("file {what}")),
                    (_, 404) => not_found(what.to_string()),
                    (_, 401 | 403) => {
                        let advice = match (code.as_str(), &opts.token) {
                            ("GatedRepo", _) => "a gated repository: accept its conditions on the Hub with the account whose HF_TOKEN is set".to_string(),
                            (_, None) => "a private or gated repository needs HF_TOKEN".to_string(),
                            (_, Some(_)) => "the token in HF_TOKEN (or the cache's token file) does not grant access".to_string(),
                        };
                        HubError::Denied { name: name_s.clone(), status, advice }
                    }
                    _ => failed(format!("HTTP {status} from {}", opts.endpoint)),
                }
            }
            ureq::Error::Transport(t) => {
                HubError::Unreachable { name: name_s.clone(), what: what.to_string(), message: t.to_string() }
            }
        },
        ApiError::IoError(source) => HubError::Io { path: opts.cache.clone(), source },
        ApiError::LockAcquisition(_) => HubError::Busy { name: name_s.clone(), what: what.to_string() },
        other => failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        let n: HubName = "hf:org/repo".parse().unwrap();
        assert_eq!((n.repo.as_str(), n.revision_or_main()), ("org/repo", "main"));
        assert_eq!(n.to_string(), "hf:org/repo");
        let n: HubName = "hf:Org-1/my_repo.v2@refs/pr/3".parse().unwrap();
        assert_eq!((n.repo.as_str(), n.revision_or_main()), ("Org-1/my_repo.v2", "refs/pr/3"));
        assert_eq!(n.to_string(), "hf:Org-1/my_repo.v2@refs/pr/3");
        assert!(HubName::parse_if_hub("models/demo").unwrap().is_none());
        for bad in [
            "hf:",
            "hf:repo",
            "hf:a/b/c",
            "hf:../b",
            "hf:a/..",
            "hf:a/b@",
            "hf:a/b@../../x",
            "hf:a/b@x//y",
            "hf:a/.b",
            "hf:a b/c",
            "hf:a/b@/x",
        ] {
            assert!(matches!(HubName::parse_if_hub(bad), Err(HubError::BadName(_))), "{bad} accepted");
        }
    }

    #[test]
    fn offline_values_read_as_the_python_client_reads_them() {
        for v in ["1", "true", "YES", " on "] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "false", "no", ""] {
            assert!(!truthy(v), "{v}");
        }
    }

    #[test]
    fn only_commit_hashes_name_snapshot_folders() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(!is_commit(&"a".repeat(39)));
        assert!(!is_commit("../../../../../../../../../../../etc/passwd"));
        assert!(!is_commit(&"A".repeat(40)));
    }
}
