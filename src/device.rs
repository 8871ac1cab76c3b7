//! Where the model runs: `--device cpu | cuda | cuda:N` and `--dtype`
//! (`auto` by default: bf16 for models above 100M parameters on a GPU, f32
//! otherwise).
//!
//! A binary built without the `cuda` feature says how to get one. A cuda
//! binary on a machine without a GPU says that no GPU was found: cudarc
//! panics (instead of failing) when the driver library is missing, so the
//! driver is looked for first and device creation runs inside `catch_unwind`.

use candle_core::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device {0:?}: expected cpu, cuda or cuda:N")]
    Parse(String),
    #[error("--dtype {0:?}: expected auto, f32, bf16 or f16")]
    DType(String),
    #[error("this genrec was built without GPU support: build it with scripts/build-cuda.sh (cargo feature `cuda`)")]
    NotBuilt,
    #[error("no GPU found: the NVIDIA driver library (libcuda.so.1) is not on this machine")]
    NoDriver,
    #[error("cannot open GPU {ordinal}: {message}")]
    Open { ordinal: usize, message: String },
}

/// A parsed `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl DeviceSpec {
    /// Opens the device.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

/// Parses `--dtype`: the dtype the model's weights and activations use.
pub fn parse_dtype(s: &str) -> Result<DType, DeviceError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        _ => Err(DeviceError::DType(s.to_string())),
    }
}

/// Models above this many parameters serve in bf16 on a GPU under `--dtype auto`.
pub const AUTO_HALF_PARAMETERS: usize = 100_000_000;

/// A parsed `--dtype`: a fixed dtype, or `auto`, decided per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    /// bf16 on a GPU for models above [`AUTO_HALF_PARAMETERS`], else f32.
    Auto,
    Fixed(DType),
}

impl DTypeChoice {
    /// The dtype of a model with `parameters` parameters on `device`.
    pub fn resolve(self, device: &Device, parameters: usize) -> DType {
        match self {
            DTypeChoice::Fixed(d) => d,
            DTypeChoice::Auto if device.is_cuda() && parameters > AUTO_HALF_PARAMETERS => DType::BF16,
            DTypeChoice::Auto => DType::F32,
        }
    }
}

impl From<DType> for DTypeChoice {
    fn from(d: DType) -> Self {
        DTypeChoice::Fixed(d)
    }
}

/// Parses `--dtype`: `auto`, or a fixed dtype ([`parse_dtype`]).
pub fn parse_dtype_choice(s: &str) -> Result<DTypeChoice, DeviceError> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(DTypeChoice::Auto);
    }
    parse_dtype(s).map(DTypeChoice::Fixed)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt)
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    // SAFETY: only tries to open the driver library; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::NoDriver);
    }
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(DeviceError::Open { ordinal, message: e.to_string() }),
        Err(p) => {
            let message = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "CUDA panicked".into());
            Err(DeviceError::Open { ordinal, message })
        }
    }
}

/// Whether a GPU can be opened (for tests and checks that need one).
pub fn gpu_available() -> bool {
    DeviceSpec::Cuda(0).open().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f8").is_err());
        assert_eq!(parse_dtype_choice("Auto").unwrap(), DTypeChoice::Auto);
        assert_eq!(parse_dtype_choice("bf16").unwrap(), DTypeChoice::Fixed(DType::BF16));
        assert!(parse_dtype_choice("f8").unwrap_err().to_string().contains("auto"));
        // no GPU here: auto is f32 at any size; a fixed choice is kept
        assert_eq!(DTypeChoice::Auto.resolve(&Device::Cpu, 2_000_000_000), DType::F32);
        assert_eq!(DTypeChoice::Fixed(DType::F16).resolve(&Device::Cpu, 1), DType::F16);
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }

    /// Without the feature the message says how to build one; with it and no
    /// GPU it says no GPU was found (and does not panic).
    #[test]
    fn cuda_without_gpu_is_a_clear_error() {
        match DeviceSpec::Cuda(0).open() {
            Ok(d) => assert!(d.is_cuda()),
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains("build-cuda.sh") || m.contains("no GPU") || m.contains("cannot open GPU"), "{m}");
            }
        }
    }
}
