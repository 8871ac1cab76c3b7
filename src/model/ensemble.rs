//! An ensemble: several models of one token layout over one catalog (the
//! same settings trained with different seeds), served as one model. The
//! search follows the members' mean log-probability of every code (a product
//! of experts, [`crate::generate::generate_ensemble`]); averaging models
//! averages out what each one memorised by chance, which is what took
//! Beauty's test figures above TIGER's (`benches/results/beauty.md`).
//!
//! On disk an ensemble is its lead member's model folder whose sidecar lists
//! the other members, model folders under it (`members/1`, ...): one folder
//! is loaded, hot-swapped and versioned as one model, and a folder without
//! `members` is an ensemble of one. Tools that know nothing of ensembles
//! (transformers, an older genrec) load the lead member alone.

use std::path::{Component, Path, PathBuf};

use candle_core::Device;

use super::sidecar::Sidecar;
use super::{Model, ModelError};
use crate::device::DTypeChoice;

/// The folder under an ensemble's lead that `genrec train --members` puts the
/// other members in (`members/1`, `members/2`, ...).
pub const MEMBERS_DIR: &str = "members";

/// Most models an ensemble may have (each one is a whole search's work per
/// request).
pub const MAX_MEMBERS: usize = 16;

/// One or more models searched together; never empty, every member of the
/// lead's token layout.
#[derive(Clone)]
pub struct Ensemble {
    members: Vec<Model>,
    /// See [`Ensemble::fingerprint`]; computed once, read by every answer.
    fingerprint: String,
}

impl From<Model> for Ensemble {
    fn from(m: Model) -> Self {
        let fingerprint = m.fingerprint.clone();
        Ensemble { members: vec![m], fingerprint }
    }
}

impl Ensemble {
    /// Members in order, the lead first; refused when empty or when a
    /// member's token layout or catalog differs from the lead's.
    pub fn new(members: Vec<Model>) -> Result<Self, ModelError> {
        let lead = members.first().ok_or_else(|| ModelError::Sidecar("an ensemble needs at least one model".into()))?;
        if let Some(m) = members.iter().skip(1).find(|m| !m.sidecar.same_layout(&lead.sidecar)) {
            return Err(ModelError::Sidecar(format!(
                "ensemble members {} and {} differ in token layout or catalog",
                lead.label(),
                m.label()
            )));
        }
        let fingerprint = combined_fingerprint(&members.iter().map(|m| m.fingerprint.clone()).collect::<Vec<_>>());
        Ok(Ensemble { members, fingerprint })
    }

    /// Loads a model folder and the members its sidecar lists.
    pub fn load_as(dir: &Path, device: &Device, dtype: impl Into<DTypeChoice>) -> Result<Self, ModelError> {
        let dtype = dtype.into();
        let lead = Model::load_as(dir, device, dtype)?;
        Self::with_members(lead, |rel| Model::load_as(&dir.join(rel), device, dtype))
    }

    /// The ensemble of `lead` and the members its sidecar lists, each loaded
    /// by `load` from its relative path (checked first: under the lead's
    /// folder, no `..`). A member may not list members of its own.
    pub fn with_members(
        lead: Model,
        mut load: impl FnMut(&str) -> Result<Model, ModelError>,
    ) -> Result<Self, ModelError> {
        check_member_list(&lead.sidecar.members)?;
        let mut members = Vec::with_capacity(1 + lead.sidecar.members.len());
        for rel in &lead.sidecar.members {
            let m = load(rel)?;
            if !m.sidecar.members.is_empty() {
                return Err(ModelError::Sidecar(format!(
                    "member {rel} lists members of its own: ensembles do not nest"
                )));
            }
            members.push(m);
        }
        members.insert(0, lead);
        Self::new(members)
    }

    /// The first member: its sidecar, name and catalog are the ensemble's.
    pub fn lead(&self) -> &Model {
        &self.members[0]
    }

    pub fn members(&self) -> Vec<&Model> {
        self.members.iter().collect()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn sidecar(&self) -> &Sidecar {
        &self.lead().sidecar
    }

    /// The weights' fingerprint: the lead's for one member; for several, a
    /// fingerprint of the members' in order (a new member or new weights in
    /// any member make a new one). Shown as the model's `version`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Name and fingerprint as shown in answers: `name/fingerprint`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.sidecar().name, self.fingerprint())
    }

    /// The catalog folder the lead's sidecar names.
    pub fn catalog_dir(&self) -> Option<PathBuf> {
        self.lead().catalog_dir()
    }
}

/// Rewrites the sidecar of the model folder `dir` (atomically) to list
/// `members` (relative paths under it; empty: a single model again), each
/// checked to hold a model of the same layout first.
pub fn list_members(dir: &Path, members: &[String]) -> Result<(), ModelError> {
    let path = dir.join(super::sidecar::SIDECAR_FILE);
    let read = |p: &Path| -> Result<Sidecar, ModelError> {
        let bytes = std::fs::read(p).map_err(|e| ModelError::Io { path: p.to_path_buf(), source: e })?;
        serde_json::from_slice(&bytes).map_err(|e| ModelError::Json { path: p.to_path_buf(), source: e })
    };
    let mut sidecar = read(&path)?;
    check_member_list(members)?;
    for rel in members {
        let theirs = read(&dir.join(rel).join(super::sidecar::SIDECAR_FILE))?;
        if !theirs.same_layout(&sidecar) || !theirs.members.is_empty() {
            return Err(ModelError::Sidecar(format!("member {rel}: not a single model of {}'s layout", dir.display())));
        }
    }
    sidecar.members = members.to_vec();
    let bytes = serde_json::to_vec_pretty(&sidecar).map_err(|e| ModelError::Json { path: path.clone(), source: e })?;
    crate::util::write_atomic(&path, &bytes).map_err(|e| ModelError::Io { path, source: e })
}

/// The version of an ensemble whose members have `versions` (in order): the
/// one version itself for one member.
pub fn combined_fingerprint(versions: &[String]) -> String {
    match versions {
        [one] => one.clone(),
        many => crate::util::fingerprint(many.join("+").as_bytes())[..12].to_string(),
    }
}

/// A sidecar's member list: at most [`MAX_MEMBERS`] models in all, each
/// folder once, each path going down only.
pub fn check_member_list(members: &[String]) -> Result<(), ModelError> {
    if members.len() + 1 > MAX_MEMBERS {
        return Err(ModelError::Sidecar(format!(
            "{} members and the lead: an ensemble has at most {MAX_MEMBERS} models",
            members.len()
        )));
    }
    for (i, rel) in members.iter().enumerate() {
        check_member_path(rel)?;
        if members[..i].iter().any(|m| Path::new(m) == Path::new(rel)) {
            return Err(ModelError::Sidecar(format!("member {rel} is listed twice")));
        }
    }
    Ok(())
}

/// A member's path must be relative and go down only (no `..`, no `.`
/// tricks, no absolute path): members live under the lead's folder, and under
/// the model root when the engine loads them.
pub fn check_member_path(rel: &str) -> Result<(), ModelError> {
    let p = Path::new(rel);
    let down_only = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if down_only {
        Ok(())
    } else {
        Err(ModelError::Sidecar(format!(
            "member {rel:?} must be a folder under the model's folder (a relative path without ..)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_go_down_only() {
        for ok in ["members/1", "m", "a/b/c"] {
            assert!(check_member_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/abs", "../x", "members/../../x", "./x"] {
            assert!(check_member_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn member_lists_are_bounded_and_name_each_folder_once() {
        let list = |n: usize| (1..=n).map(|i| format!("members/{i}")).collect::<Vec<_>>();
        assert!(check_member_list(&list(MAX_MEMBERS - 1)).is_ok());
        assert!(check_member_list(&list(MAX_MEMBERS)).is_err());
        assert!(check_member_list(&["members/1".into(), "members//1".into()]).is_err());
        assert!(check_member_list(&["members/1".into(), "../x".into()]).is_err());
    }

    #[test]
    fn one_member_keeps_its_version_and_order_matters() {
        let v = |s: &[&str]| combined_fingerprint(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["abc"]), "abc");
        assert_ne!(v(&["a", "b"]), v(&["b", "a"]));
        assert_eq!(v(&["a", "b"]).len(), 12);
    }
}
