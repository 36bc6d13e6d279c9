//! The CUDA backend's checks that need no GPU: every kernel compiles with NVRTC for the
//! datacenter architectures, and mirrors its WGSL twin's entry points and workgroup sizes.
//! The kernels' numbers are checked by the whole suite on the host driver
//! (`SSMGPU_TEST_BACKEND=cuda-host`) and, on a machine with an NVIDIA GPU, on the device
//! (`SSMGPU_TEST_BACKEND=cuda`); the device test here is ignored elsewhere, so no run without
//! a GPU counts it as passed.
#![cfg(feature = "cuda")]

mod common;

use ssmgpu::runtime::cuda::{entry_points, expanded_source, nvrtc_compile};
use ssmgpu::runtime::Kernel;

/// The scan's `FLAGS` combinations that change its code: none, gate + softplus, carried state
/// both ways, reverse + accumulate, the importance outputs, the gap decay and a ragged grid.
const SCAN_FLAGS: &[u32] = &[0, 3, 15, 48, 64 | 128 | 256 | 3, 512 | 3, 1024 | 3, 2047];

#[test]
fn every_cuda_kernel_compiles_with_nvrtc_for_ampere_and_hopper() {
    for (name, source) in ssmgpu::ops::CUDA_SHADERS {
        let source = expanded_source(source);
        let flags: &[u32] = if *name == "scan" { SCAN_FLAGS } else { &[0] };
        for arch in ["sm_80", "sm_90"] {
            for &f in flags {
                nvrtc_compile(name, &source, f, arch).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

/// Each WGSL entry point of the portable variant (the CUDA backend has no subgroups), with
/// its workgroup size, as naga reads it.
fn wgsl_entries(name: &'static str, source: &'static str) -> Vec<(String, u32)> {
    let kernel = Kernel::file(name, source);
    let module =
        naga::front::wgsl::parse_str(&kernel.wgsl()).unwrap_or_else(|e| panic!("{name}.wgsl: {e}"));
    module
        .entry_points
        .iter()
        .map(|e| (e.name.clone(), e.workgroup_size.iter().product()))
        .collect()
}

#[test]
fn every_cuda_kernel_has_its_wgsl_twins_entries_and_block_sizes() {
    for (name, wgsl) in ssmgpu::ops::SHADERS {
        let cuda = ssmgpu::ops::CUDA_SHADERS
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("shaders/cuda/{name}.cu is missing"))
            .1;
        let cuda_entries = entry_points(&expanded_source(cuda));
        // The matmul runs on cuBLAS; its CUDA file holds the epilogue only.
        if *name == "matmul" {
            assert_eq!(cuda_entries, [("matmul_epilogue".to_string(), Some(256))]);
            continue;
        }
        for (entry, size) in wgsl_entries(name, wgsl) {
            let found = cuda_entries.iter().find(|(e, _)| *e == entry);
            assert_eq!(
                found.map(|(_, block)| *block),
                Some(Some(size)),
                "shaders/cuda/{name}.cu: `{entry}` with __launch_bounds__({size})"
            );
        }
    }
}

/// The golden Mamba-1 case through the CUDA kernels and cuBLAS on a real GPU. Run where one
/// is: `cargo test --features cuda --test cuda -- --ignored`; it fails without one.
#[test]
#[ignore = "needs an NVIDIA GPU with its driver, NVRTC and cuBLAS"]
fn golden_mamba_on_a_cuda_device() {
    let ctx = ssmgpu::Context::with_options_blocking(ssmgpu::ContextOptions {
        backend: ssmgpu::Backend::Cuda,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"));
    println!("running on {}", ctx.device_name());
    let dir = common::golden_dir().join("mamba1_small");
    let model = ssmgpu::models::mamba::MambaLm::load(&ctx, &dir).expect("mamba1_small");
    common::check_lm_golden(&ctx, "mamba1_small", &model, model.config.n_layer, 1e-4);
}

/// Without an NVIDIA driver the CUDA backend is a typed error naming what is missing, and
/// `auto` falls back to wgpu; with one, both give a CUDA context.
#[test]
fn backend_choice_follows_the_cuda_driver() {
    let with = |backend| {
        ssmgpu::Context::with_options_blocking(ssmgpu::ContextOptions {
            backend,
            ..Default::default()
        })
    };
    let auto = with(ssmgpu::Backend::Auto).expect("auto finds some device");
    if ssmgpu::runtime::cuda::driver_present() {
        assert_eq!(auto.backend(), ssmgpu::Backend::Cuda);
        return;
    }
    assert_eq!(auto.backend(), ssmgpu::Backend::Wgpu);
    match with(ssmgpu::Backend::Cuda) {
        Err(ssmgpu::Error::NoAdapter(why)) => assert!(why.contains("libcuda"), "{why}"),
        Err(e) => panic!("expected NoAdapter, got {e}"),
        Ok(ctx) => panic!("a CUDA context without a driver: {}", ctx.device_name()),
    }
    assert!(matches!(
        "vulkan".parse::<ssmgpu::Backend>(),
        Err(ssmgpu::Error::InvalidInput(_))
    ));
}
