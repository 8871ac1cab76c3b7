//! Averages of the weights over training (Polyak–Juditsky iterate averaging):
//! after every optimiser step an average moves a share `1 - d` towards the
//! current weights. The average of the last stretch of training often ranks
//! better than the last step's weights, which carry the noise of the final
//! mini-batches. Two schedules for `d` at update `n` (from 0):
//!
//! - [`Average::Polynomial`]: `d = (n + 1) / (n + 10)`, polynomial-decay
//!   averaging (Shamir & Zhang, ICML 2013, with η = 8): the window grows with
//!   training, so the average always covers about the last ninth of the steps.
//! - [`Average::Exponential`]: `d = min(decay, n / (n + 1))`, a plain running
//!   mean until the window reaches `1 / (1 - decay)` steps, then a fixed-window
//!   exponential average.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{Tensor, Var};

/// Which average of the weights (`genrec train --average`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Average {
    Polynomial,
    Exponential(f64),
}

impl Average {
    fn decay_at(self, n: usize) -> f64 {
        let n = n as f64;
        match self {
            Average::Polynomial => (1.0 + n) / (10.0 + n),
            Average::Exponential(decay) => decay.min(n / (n + 1.0)),
        }
    }
}

impl fmt::Display for Average {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Average::Polynomial => write!(f, "poly"),
            Average::Exponential(d) => write!(f, "ema-{d}"),
        }
    }
}

impl FromStr for Average {
    type Err = String;

    /// `poly` or `ema-DECAY` with a decay in (0, 1).
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "poly" {
            return Ok(Average::Polynomial);
        }
        match s.strip_prefix("ema-").map(str::parse::<f64>) {
            Some(Ok(d)) if d > 0.0 && d < 1.0 => Ok(Average::Exponential(d)),
            _ => Err(format!("unknown average {s:?}: expected poly or ema-DECAY with 0 < DECAY < 1")),
        }
    }
}

/// One running average of a set of named variables.
pub struct WeightAverage {
    kind: Average,
    updates: usize,
    tensors: Vec<Tensor>,
}

impl WeightAverage {
    /// Starts an average at the variables' current values.
    pub fn new(kind: Average, vars: &[(String, Var)]) -> candle_core::Result<Self> {
        let tensors = vars.iter().map(|(_, v)| v.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()?;
        Ok(WeightAverage { kind, updates: 0, tensors })
    }

    pub fn kind(&self) -> Average {
        self.kind
    }

    /// Moves the average towards the variables' current values.
    pub fn update(&mut self, vars: &[(String, Var)]) -> candle_core::Result<()> {
        let d = self.kind.decay_at(self.updates);
        for (avg, (_, v)) in self.tensors.iter_mut().zip(vars) {
            let current = v.as_tensor().detach();
            *avg = (avg.affine(d, 0.0)? + current.affine(1.0 - d, 0.0)?)?.detach();
        }
        self.updates += 1;
        Ok(())
    }

    /// The averaged tensors by variable name.
    pub fn named(&self, vars: &[(String, Var)]) -> HashMap<String, Tensor> {
        vars.iter().zip(&self.tensors).map(|((name, _), t)| (name.clone(), t.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn run(kind: Average, values: &[f32]) -> f32 {
        let v = Var::from_slice(&[100f32], 1, &Device::Cpu).unwrap();
        let vars = vec![("w".to_string(), v.clone())];
        let mut avg = WeightAverage::new(kind, &vars).unwrap();
        for &x in values {
            v.set(&Tensor::new(&[x], &Device::Cpu).unwrap()).unwrap();
            avg.update(&vars).unwrap();
        }
        let got = avg.named(&vars)["w"].to_vec1::<f32>().unwrap()[0];
        // the average is a copy: the variable may change without it
        v.set(&Tensor::new(&[-5f32], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(avg.named(&vars)["w"].to_vec1::<f32>().unwrap()[0], got);
        got
    }

    #[test]
    fn schedules() {
        // exponential: a running mean of the updates (the initial 100 drops
        // out at once) until the window is reached, then the fixed decay
        assert!((run(Average::Exponential(0.9), &[1.0, 2.0, 3.0]) - 2.0).abs() < 1e-6);
        let long: Vec<f32> = (0..200).map(|i| if i < 190 { 0.0 } else { 1.0 }).collect();
        let want = 1.0 - 0.9f32.powi(10);
        assert!((run(Average::Exponential(0.9), &long) - want).abs() < 1e-5);
        // polynomial: the first update keeps 1/10 of the start; later the
        // window is about the last ninth of the updates
        assert!((run(Average::Polynomial, &[0.0]) - 10.0).abs() < 1e-4);
        let ramp: Vec<f32> = (0..900).map(|i| if i < 800 { 0.0 } else { 1.0 }).collect();
        let got = run(Average::Polynomial, &ramp);
        assert!(got > 0.55 && got < 0.75, "{got}");
    }

    #[test]
    fn names_round_trip() {
        for a in [Average::Polynomial, Average::Exponential(0.999)] {
            assert_eq!(a.to_string().parse::<Average>().unwrap(), a);
        }
        assert!("ema-1".parse::<Average>().is_err() && "mean".parse::<Average>().is_err());
    }
}
