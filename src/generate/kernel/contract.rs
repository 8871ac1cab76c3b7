//! What `kernels/beam_step.cu` requires of a launch, checked before each one
//! (by the launcher in [`super::cuda`] and by the CPU [`super::mirror`]): the
//! kernel indexes the trie's tables, its candidate scratch and its shared pick
//! buffer by these sizes without further bounds checks. The trie's own arrays
//! are checked once, when a catalog's trie is mapped (`Trie::map`).

use crate::generate::step::StepShape;

/// Largest `beams_out`: the kernel's shared selection buffer (`GENREC_MAX_BEAMS`).
pub const MAX_BEAMS: usize = 1024;
/// Largest candidate pool the pooled selection keeps on chip
/// (`GENREC_POOL_MAX`: 2,048 keys, 16 KiB of shared memory).
pub const POOL_MAX: usize = 2048;
/// Lanes of a warp: each beam's candidates are split over them, and each
/// lane's best one feeds the pooled selection's bound.
pub const LANES: usize = 32;

/// How the kernel finds the best `beams_out` of a request's candidates: the
/// beam-step kernel (`genrec serve --beam-kernel radix|pool`; `pool` is the
/// pooled selection at its full capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeamKernel {
    /// `genrec_beam_step`: every candidate key goes to a global scratch
    /// buffer, then an 8-pass radix select over all of them (the kernel
    /// verified on an H200, 2026-11-27).
    Radix,
    /// `genrec_beam_step_pool`: a first pass takes each lane's best
    /// candidate score (32 per beam); their `beams_out`-th largest is a lower
    /// bound on the answer's last score (they are distinct candidates), so a
    /// second pass keeps only candidates at or above it, in shared memory,
    /// and sorts them there. Over `capacity` survivors (at most
    /// [`POOL_MAX`]) it falls back to [`BeamKernel::Radix`]'s path. The same
    /// answer as `Radix`, key for key.
    Pool { capacity: usize },
}

impl BeamKernel {
    /// The pooled selection at its full capacity.
    pub const POOL: BeamKernel = BeamKernel::Pool { capacity: POOL_MAX };

    /// Keys of global scratch each request needs: every candidate for the
    /// radix path; for the pool also the lanes' best scores (two per key).
    pub fn scratch_keys(self, beams_in: usize, codes: usize) -> usize {
        match self {
            BeamKernel::Radix => beams_in * codes,
            BeamKernel::Pool { .. } => (beams_in * codes).max((beams_in * LANES).div_ceil(2)),
        }
    }

    /// The pool's capacity is 1 to [`POOL_MAX`], and the lanes' best scores
    /// of `beams_in` beams are indexed within 32 bits.
    fn check(self, beams_in: usize) -> Result<(), String> {
        match self {
            BeamKernel::Pool { capacity } if capacity == 0 || capacity > POOL_MAX => {
                Err(format!("pool capacity {capacity} outside 1..={POOL_MAX}"))
            }
            BeamKernel::Pool { .. } if beams_in * LANES >= u32::MAX as usize => {
                Err(format!("{beams_in} beams x {LANES} lanes do not fit the pooled selection's 32-bit indices"))
            }
            _ => Ok(()),
        }
    }
}

/// Checks one step's shape against the trie's `codebook_sizes` at `depth`: the level's logits
/// are exactly as wide as its codebook (the dense tables and the child codes
/// assume it), `beams_out` fits the pick buffer, every (parent, code)
/// fits the low 32 bits of a candidate key, and the `selection` can run it.
pub fn check_step(codebook_sizes: &[u32], depth: usize, shape: StepShape, selection: BeamKernel) -> Result<(), String> {
    let StepShape { requests, beams_in, beams_out, codes } = shape;
    let Some(&size) = codebook_sizes.get(depth) else {
        return Err(format!("beam step at depth {depth}, but the trie has {} levels", codebook_sizes.len()));
    };
    if codes != size as usize {
        return Err(format!("beam step over {codes} codes at depth {depth}, whose codebook has {size}"));
    }
    if beams_out == 0 || beams_out > MAX_BEAMS {
        return Err(format!("beams_out {beams_out} outside 1..={MAX_BEAMS}"));
    }
    if requests == 0 || beams_in == 0 || beams_in * codes >= u32::MAX as usize {
        return Err(format!("{requests} requests x {beams_in} beams x {codes} codes do not fit the kernel's keys"));
    }
    selection.check(beams_in)
}

impl clap::ValueEnum for BeamKernel {
    fn value_variants<'a>() -> &'a [Self] {
        &[BeamKernel::Radix, BeamKernel::POOL]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            BeamKernel::Radix => clap::builder::PossibleValue::new("radix"),
            BeamKernel::Pool { capacity: POOL_MAX } => clap::builder::PossibleValue::new("pool"),
            // a smaller pool is for tests of the fallback, not a flag value
            BeamKernel::Pool { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Trie;

    #[test]
    fn each_bad_shape_is_named() {
        let t = Trie::build(&[0, 0, 1, 2, 2, 1], 2, &[3, 4]).unwrap();
        let a = t.codebook_sizes();
        let shape = |beams_in, beams_out, codes| StepShape { requests: 2, beams_in, beams_out, codes };
        let radix = BeamKernel::Radix;
        check_step(a, 0, shape(1, 8, 3), radix).unwrap();
        check_step(a, 1, shape(8, MAX_BEAMS, 4), BeamKernel::POOL).unwrap();
        let err = |depth, s| check_step(a, depth, s, radix).unwrap_err();
        assert!(err(1, shape(8, 8, 3)).contains("whose codebook has 4"));
        assert!(err(2, shape(8, 8, 4)).contains("the trie has 2 levels"));
        assert!(err(0, shape(1, 0, 3)).contains("beams_out 0"));
        assert!(err(0, shape(1, MAX_BEAMS + 1, 3)).contains("outside"));
        assert!(err(0, shape(0, 8, 3)).contains("do not fit"));
        let pool = |capacity, beams_in| check_step(a, 1, shape(beams_in, 8, 4), BeamKernel::Pool { capacity });
        assert!(pool(POOL_MAX, 1024).is_ok());
        assert!(pool(0, 1).unwrap_err().contains("capacity 0"));
        assert!(pool(POOL_MAX + 1, 1).is_err());
        assert!(pool(POOL_MAX, 1 << 27).unwrap_err().contains("32-bit"));
        assert!(check_step(a, 1, shape(1 << 27, 8, 4), radix).is_ok());
    }
}
