//! Build script. The default (CPU) build does nothing here. With the `cuda`
//! feature it
//! 1. compiles `kernels/*.cu` to PTX with nvcc, for `compute_$CUDA_COMPUTE_CAP`
//!    (default 90, Hopper); the PTX is embedded in the binary and JIT-compiled
//!    by the driver when the model first runs on the GPU, so the binary needs
//!    only the driver (no NVRTC, no CUDA toolkit) and also runs on newer cards;
//! 2. puts the static CUDA runtime (`libcudart_static.a`, from the toolkit next
//!    to nvcc) on the link path as `libcudart`: candle-kernels links its MoE
//!    kernels against `libcudart`, and pip's CUDA packages ship only the shared
//!    `libcudart.so.13`, which the GPU machine need not have.
//!
//! nvcc is `$NVCC` or the first `nvcc` on `PATH` (scripts/build-cuda.sh sets it up).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        cuda();
    }
}

fn cuda() {
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-changed=kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());

    let mut kernels: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/ folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu" || x == "cuh"))
        .collect();
    kernels.sort();
    for src in kernels.iter().filter(|p| p.extension().is_some_and(|x| x == "cu")) {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src.file_stem().and_then(|s| s.to_str()).expect("kernel file name");
        let ptx = out.join(format!("{stem}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-Ikernels")
            .arg("-o")
            .arg(&ptx)
            .arg(src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {}", src.display());
    }

    let root = nvcc.parent().and_then(Path::parent).expect("nvcc lives in <cuda>/bin");
    let lib = ["lib64", "lib", "targets/x86_64-linux/lib"]
        .iter()
        .map(|d| root.join(d).join("libcudart_static.a"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no libcudart_static.a under {} (install nvidia-cuda-runtime)", root.display()));
    let dir = out.join("cudart-static");
    std::fs::create_dir_all(&dir).expect("create cudart-static");
    std::fs::copy(&lib, dir.join("libcudart.a")).expect("copy libcudart_static.a");
    println!("cargo:rustc-link-search=native={}", dir.display());
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
        .expect("the cuda feature needs nvcc 13.0: run scripts/build-cuda.sh, or put nvcc on PATH / set NVCC")
}
