#!/usr/bin/env bash
# Builds the browser package into web/pkg/: the engine as wasm (crates/ssmgpu-web), its JS glue,
# and the shipped vim-mnist model and sample digits the page fetches. Serve web/ with any static
# server (e.g. `python3 -m http.server -d web`) and open index.html.
#
# Needs the wasm32-unknown-unknown target (rustup, or Debian's rustc-web + rust-web-src + lld,
# which build std themselves) and wasm-bindgen-cli at the version crates/ssmgpu-web/Cargo.lock
# pins: `cargo install wasm-bindgen-cli --version X`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Apart from target/, so switching targets does not rebuild the native build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-wasm}"
manifest=crates/ssmgpu-web/Cargo.toml
target=wasm32-unknown-unknown

want=$(grep -A1 '^name = "wasm-bindgen"$' crates/ssmgpu-web/Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    echo "wasm-bindgen-cli $want is needed (found: ${have:-none}): cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
fi

if command -v rustup >/dev/null && rustup target add "$target" >/dev/null 2>&1; then
    cargo build --release --target "$target" --manifest-path "$manifest"
else
    # Debian's rustc-web has no prebuilt std for the target; cargo builds it (the rustup cargo
    # may come first on PATH, hence RUSTC and RUSTDOC).
    RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
        CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="${WASM_LD:-wasm-ld-22}" \
        /usr/bin/cargo build --release --target "$target" --manifest-path "$manifest" \
        -Zbuild-std=std,panic_abort
fi

rm -rf web/pkg
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
    "$CARGO_TARGET_DIR/$target/release/ssmgpu_web.wasm"
mkdir -p web/pkg/vim-mnist web/pkg/samples
cp assets/models/vim-mnist/config.json assets/models/vim-mnist/model.safetensors web/pkg/vim-mnist/
cp assets/samples/mnist/*.png web/pkg/samples/
echo "web/pkg: $(du -h web/pkg/ssmgpu_web_bg.wasm | cut -f1) wasm, $(gzip -9c web/pkg/ssmgpu_web_bg.wasm | wc -c) bytes gzipped"
