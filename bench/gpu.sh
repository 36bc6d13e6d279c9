#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the golden tests on both backends (wgpu on the GPU's Vulkan
# driver, and CUDA), then wgpu vs CUDA vs PyTorch on the scan, a Vim-Ti forward and a pruned one.
# Writes every output under ${OUT:-bench-gpu-out}/; docs/performance.md says how to read them.
# Needs: the NVIDIA driver (libcuda, and its Vulkan ICD for wgpu), NVRTC and cuBLAS on the library
# path (a CUDA toolkit, or `pip install nvidia-cuda-nvrtc-cu12 nvidia-cublas-cu12`), and for the
# PyTorch columns torch (+ mamba_ssm for its CUDA scan).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-gpu-out}
mkdir -p "$out"
for lib in nvidia.cuda_nvrtc nvidia.cublas; do
    dir=$(python3 -c "import $lib as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))" 2>/dev/null) &&
        export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
cargo build --release --features cuda 2>&1 | tail -3
./target/release/ssmgpu info >"$out/info.txt" 2>&1
./target/release/ssmgpu --backend cuda info >>"$out/info.txt" 2>&1

# Golden and op tests, once per backend.
for backend in wgpu cuda; do
    SSMGPU_TEST_BACKEND=$backend cargo test --release --features cuda --no-fail-fast --tests \
        -- --skip web_e2e --skip demo_screenshot >"$out/tests-$backend.txt" 2>&1
    grep -E "^test result|FAILED|panicked" "$out/tests-$backend.txt" | sort | uniq -c
done
cargo test --release --features cuda --test cuda -- --ignored >"$out/tests-cuda-device.txt" 2>&1

# Kernels: scan (1 x 1536 x 1024 x 16, and Vim-Ti's 384 x 197) and matmul, per backend.
for backend in wgpu cuda; do
    ./target/release/ssmgpu --backend "$backend" bench --json >"$out/ops-$backend.json" 2>"$out/ops-$backend.err"
done
python3 bench/torch_reference.py --device cuda --json >"$out/ops-torch.json" 2>"$out/ops-torch.err"

# A Vim-Ti forward (random weights), unpruned and pruned (vim-t), batch 1 and 16, per backend,
# with PyTorch (the authors' model code) on the same GPU.
for backend in wgpu cuda; do
    python3 bench/vision_bench.py --device cuda --backend "$backend" --prune vim-t --json \
        >"$out/vision-$backend.json" 2>"$out/vision-$backend.err"
done
ls -l "$out"
