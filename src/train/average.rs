//! Exponential moving averages of the weights during training (Polyak and
//! Juditsky's iterate averaging in its exponential form, as used by EMA
//! checkpoints in most modern trainers): after every optimiser step each
//! average moves a `1 - decay` share towards the current weights. The average
//! of the last few thousand steps often ranks better than the last step's
//! weights, which carry the noise of the final mini-batches.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

/// One moving average of a set of named variables.
pub struct WeightAverage {
    decay: f64,
    updates: usize,
    tensors: Vec<Tensor>,
}

impl WeightAverage {
    /// Starts an average at the variables' current values.
    pub fn new(decay: f64, vars: &[(String, Var)]) -> candle_core::Result<Self> {
        let tensors = vars.iter().map(|(_, v)| v.as_tensor().detach().copy()).collect::<candle_core::Result<_>>()?;
        Ok(WeightAverage { decay, updates: 0, tensors })
    }

    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Moves the average towards the variables' current values. The first
    /// updates use a smaller decay, `(1 + n) / (10 + n)`, so the random
    /// initialisation does not linger in the average.
    pub fn update(&mut self, vars: &[(String, Var)]) -> candle_core::Result<()> {
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
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

    #[test]
    fn average_follows_the_weights_with_the_decay() {
        let v = Var::from_slice(&[0f32, 10.0], 2, &Device::Cpu).unwrap();
        let vars = vec![("w".to_string(), v.clone())];
        let mut avg = WeightAverage::new(0.5, &vars).unwrap();
        // first update: decay min(0.5, 1/10) = 0.1
        v.set(&Tensor::new(&[10f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        avg.update(&vars).unwrap();
        let got = avg.named(&vars)["w"].to_vec1::<f32>().unwrap();
        assert!((got[0] - 9.0).abs() < 1e-5 && (got[1] - 1.0).abs() < 1e-5, "{got:?}");
        // the average is a copy: changing the variable does not change it
        v.set(&Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(avg.named(&vars)["w"].to_vec1::<f32>().unwrap(), got);
        // later updates reach the full decay: min(0.5, 2/11) = 0.18.., then 0.25, ...
        for _ in 0..200 {
            avg.update(&vars).unwrap();
        }
        let got = avg.named(&vars)["w"].to_vec1::<f32>().unwrap();
        assert!(got[0].abs() < 1e-4 && got[1].abs() < 1e-4, "{got:?}");
    }
}
