//! Fuzzing on stable Rust: a structure-aware mutation loop over a seed corpus of the shipped
//! files, one target per input parser (safetensors reader, config.json of every model type,
//! image decoding plus preprocessing, the `--prune` / `--reduce` parsers). An input passes when
//! the parser returns (Ok or a typed error) without a panic, within `MAX_SECONDS`, with no
//! single allocation over `MAX_ALLOC_BYTES`, and an Ok result holds what its type promises.
//!
//! CI runs a smoke of each target (`SMOKE_INPUTS` inputs, seconds). The long run
//! (docs/reliability.md records one):
//!
//! ```sh
//! SSMGPU_FUZZ_INPUTS=1000000 cargo test --release --test fuzz -- --nocapture --test-threads 1
//! ```
//!
//! `SSMGPU_FUZZ_SEED` picks another random stream. A failing input is written to
//! `target/fuzz-failure-<target>.bin` and its panic re-raised.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use ssmgpu::loader::{serialize_f32, SafetensorsFile};
use ssmgpu::models::mamba::MambaConfig;
use ssmgpu::models::mamba2::Mamba2Config;
use ssmgpu::models::plainmamba::PlainMambaConfig;
use ssmgpu::models::vim::VimConfig;
use ssmgpu::models::ModelDir;
use ssmgpu::preprocess::{decode_image, Interpolation, Preprocess};
use ssmgpu::prune::reduce::{Method, Metric, Reduction};
use ssmgpu::prune::PruneSchedule;

const SMOKE_INPUTS: usize = 3000;
/// Largest single allocation an input may cause: the image caps (512 MiB per buffer).
const MAX_ALLOC_BYTES: usize = 512 << 20;
/// Slowest input accepted; a loop or a quadratic blow-up shows here.
const MAX_SECONDS: f64 = 10.0;

/// The system allocator, recording the largest single request and the peak of live bytes.
struct Counting;

static LARGEST_ALLOC: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK_LIVE: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    LARGEST_ALLOC.fetch_max(size, Ordering::Relaxed);
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK_LIVE.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        grew(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn inputs() -> usize {
    std::env::var("SSMGPU_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SMOKE_INPUTS)
}

fn rng(target: &str) -> StdRng {
    let seed: u64 = std::env::var("SSMGPU_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(23);
    let salt = target
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    StdRng::seed_from_u64(seed ^ salt)
}

/// Run `check` on `inputs()` inputs made by `make`; report the count, time, slowest input and
/// largest allocation, and fail on the first input that breaks a rule.
/// `check` returns whether the input was accepted (parsed into a value and checked).
fn fuzz(target: &str, mut make: impl FnMut(&mut StdRng) -> Vec<u8>, check: impl Fn(&[u8]) -> bool) {
    let n = inputs();
    let mut rng = rng(target);
    let start = Instant::now();
    let (mut slowest, mut largest, mut accepted) = (Duration::ZERO, 0, 0);
    for i in 0..n {
        let input = make(&mut rng);
        LARGEST_ALLOC.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        let took = t.elapsed();
        let alloc = LARGEST_ALLOC.load(Ordering::Relaxed);
        let broken = match &result {
            Err(_) => Some("panicked".to_string()),
            Ok(_) if took.as_secs_f64() > MAX_SECONDS => Some(format!("took {took:?}")),
            Ok(_) if alloc > MAX_ALLOC_BYTES => Some(format!("allocated {alloc} bytes at once")),
            Ok(_) => None,
        };
        if let Some(why) = broken {
            let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("..")
                .join(format!("fuzz-failure-{target}.bin"));
            std::fs::write(&path, &input).unwrap();
            if let Err(panic) = result {
                eprintln!("{target}: input {i} panicked; saved to {}", path.display());
                std::panic::resume_unwind(panic);
            }
            panic!("{target}: input {i} {why}; saved to {}", path.display());
        }
        slowest = slowest.max(took);
        largest = largest.max(alloc);
        accepted += usize::from(result.unwrap_or(false));
    }
    eprintln!(
        "fuzz {target}: {n} inputs ({accepted} accepted) in {:.1} s, 0 failures; slowest {:.1} ms, largest allocation {} bytes",
        start.elapsed().as_secs_f64(),
        slowest.as_secs_f64() * 1e3,
        largest
    );
}

// ---- generic mutators ----

fn interesting_number(rng: &mut StdRng) -> Value {
    const INTS: [i128; 19] = [
        0,
        1,
        -1,
        2,
        3,
        255,
        256,
        32767,
        32768,
        65536,
        (1 << 31) - 1,
        1 << 31,
        (1 << 32) - 1,
        1 << 32,
        1 << 40,
        1 << 53,
        1 << 63,
        u64::MAX as i128,
        -(1 << 63),
    ];
    const FLOATS: [f64; 8] = [0.0, -0.0, 1e-300, -1e-5, 0.5, 1.5, 1e308, -1e308];
    if rng.random_bool(0.7) {
        let v = INTS[rng.random_range(0..INTS.len())];
        serde_json::from_str(&v.to_string()).unwrap()
    } else {
        FLOATS[rng.random_range(0..FLOATS.len())].into()
    }
}

fn interesting_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..10) {
        0..=5 => interesting_number(rng),
        6 => Value::Null,
        7 => [
            "auto", "", "F32", "I64", "U8", "BF16", "mamba2", "vim", "Mamba2", "bicubic",
        ][rng.random_range(0..10)]
        .into(),
        8 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| interesting_number(rng))
                .collect(),
        ),
        _ => rng.random_bool(0.5).into(),
    }
}

/// Paths (keys and indices) of every value in `v`.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let children: Vec<(String, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (k, child) in children {
        prefix.push(k);
        out.push(prefix.clone());
        paths(child, prefix, out);
        prefix.pop();
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k),
        Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?),
        _ => None,
    })
}

/// One structural edit: replace a value, remove a key, or add a key known from the corpus.
fn mutate_json(rng: &mut StdRng, v: &mut Value, known_keys: &[String]) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let op = rng.random_range(0..10);
    if all.is_empty() || op >= 8 {
        if let Value::Object(m) = v {
            let key = known_keys[rng.random_range(0..known_keys.len())].clone();
            m.insert(key, interesting_value(rng));
        }
        return;
    }
    let path = &all[rng.random_range(0..all.len())];
    if op == 7 {
        let (last, parent) = path.split_last().unwrap();
        if let Some(Value::Object(m)) = at(v, parent) {
            m.remove(last);
            return;
        }
    }
    if let Some(target) = at(v, path) {
        *target = interesting_value(rng);
    }
}

/// Byte-level edits: flips, interesting bytes, insertions, deletions, truncation, splices.
fn mutate_bytes(rng: &mut StdRng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..rng.random_range(1..4) {
        let len = data.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = [0, 0xFF, 0x7F, 0x80, 1][rng.random_range(0..5)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..64);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(256));
                data.drain(i..i + n);
            }
            4 if len > 0 => data.truncate(rng.random_range(0..len)),
            5 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - from).min(512));
                let i = rng.random_range(0..=len);
                data.splice(i..i, other[from..from + n].iter().copied());
            }
            _ if len >= 4 => {
                // A little-endian length or size field set to an extreme.
                let i = rng.random_range(0..=len - 4);
                let v: u32 =
                    [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x8000, 23000][rng.random_range(0..6)];
                data[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

const MODELS: [&str; 7] = [
    "assets/models/mamba1-small",
    "assets/models/mamba2-licenses",
    "assets/models/vim-mnist",
    "assets/models/plainmamba-mnist",
    "tests/data/golden/mamba1_tiny",
    "tests/data/golden/mamba2_tiny",
    "tests/data/golden/mamba1_small",
];

// ---- safetensors ----

/// The shipped checkpoints cut to their four smallest tensors (re-serialized, so the corpus
/// stays small), and a small u8/i64 test split.
fn safetensors_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = MODELS
        .iter()
        .map(|m| {
            let f = SafetensorsFile::open(repo(m).join("model.safetensors")).unwrap();
            let mut names = f.names();
            names.sort_by_key(|n| f.shape(n).unwrap().iter().product::<usize>());
            // Float tensors only (BatchNorm's i64 counters are not read by the engine).
            let tensors: Vec<_> = names
                .iter()
                .filter_map(|n| f.f32(n, None).ok().map(|(shape, v)| (n.clone(), shape, v)))
                .take(4)
                .collect();
            serialize_f32(&tensors).unwrap()
        })
        .collect();
    use safetensors::tensor::{Dtype, TensorView};
    let images = [7u8; 2 * 28 * 28];
    let labels: Vec<u8> = [3i64, 9].iter().flat_map(|l| l.to_le_bytes()).collect();
    seeds.push(
        safetensors::serialize(
            [
                (
                    "images",
                    TensorView::new(Dtype::U8, vec![2, 28, 28], &images).unwrap(),
                ),
                (
                    "labels",
                    TensorView::new(Dtype::I64, vec![2], &labels).unwrap(),
                ),
            ],
            None,
        )
        .unwrap(),
    );
    seeds
}

/// Split a safetensors file into its header JSON and data, when it parses.
fn split_safetensors(bytes: &[u8]) -> Option<(Value, &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    Some((header, &bytes[8 + n..]))
}

#[test]
fn fuzz_safetensors_reader() {
    let seeds = safetensors_seeds();
    let keys: Vec<String> = ["dtype", "shape", "data_offsets", "__metadata__", "w"]
        .map(String::from)
        .to_vec();
    fuzz(
        "safetensors",
        |rng| {
            let seed = pick(rng, &seeds);
            let mut bytes = seed.clone();
            let (mut header, data) = split_safetensors(seed).expect("seeds parse");
            if rng.random_bool(0.6) {
                for _ in 0..rng.random_range(1..4) {
                    mutate_json(rng, &mut header, &keys);
                }
                let text = header.to_string();
                bytes = (text.len() as u64).to_le_bytes().to_vec();
                bytes.extend_from_slice(text.as_bytes());
                bytes.extend_from_slice(data);
            }
            if rng.random_bool(0.5) {
                let other = pick(rng, &seeds).as_slice();
                mutate_bytes(rng, &mut bytes, other);
            }
            bytes
        },
        |bytes| {
            let Ok(f) = SafetensorsFile::from_bytes("fuzz.safetensors", bytes.to_vec()) else {
                return false;
            };
            let _ = f.metadata();
            for name in f.names() {
                let shape = f.shape(&name).unwrap();
                if let Ok((s, v)) = f.f32(&name, None) {
                    assert_eq!(s, shape);
                    assert_eq!(v.len(), shape.iter().product::<usize>());
                }
                if let Ok((_, v)) = f.f32_finite(&name, None) {
                    assert!(v.iter().all(|x| x.is_finite()), "non-finite values passed");
                }
                if let Ok((_, v)) = f.ints(&name) {
                    assert_eq!(v.len(), shape.iter().product::<usize>());
                }
            }
            true
        },
    );
}

// ---- config.json ----

#[test]
fn fuzz_config_parsing() {
    let seeds: Vec<Value> = MODELS
        .iter()
        .map(|m| {
            let text = std::fs::read_to_string(repo(m).join("config.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    let mut keys: Vec<String> = seeds
        .iter()
        .flat_map(|c| c.as_object().unwrap().keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let empty_weights = serialize_f32(&[]).unwrap();
    fuzz(
        "config",
        |rng| {
            let mut config = pick(rng, &seeds).clone();
            for _ in 0..rng.random_range(1..5) {
                mutate_json(rng, &mut config, &keys);
            }
            let mut text = config.to_string().into_bytes();
            if rng.random_bool(0.1) {
                mutate_bytes(rng, &mut text, b"{}[],:\"0123456789e-");
            }
            text
        },
        |text| {
            let Ok(text) = std::str::from_utf8(text) else {
                return false;
            };
            let Ok(dir) = ModelDir::from_bytes("fuzz", text, empty_weights.clone()) else {
                return false;
            };
            let mut accepted = false;
            let max = ssmgpu::models::MAX_CONFIG_INT as usize;
            if let Ok(c) = MambaConfig::from_model_dir(&dir) {
                accepted = true;
                assert!(c.d_model <= max && c.n_layer <= max && c.eps > 0.0);
                assert!(c.eos_token_id.is_none_or(|e| (e as usize) < c.vocab_size));
            }
            if let Ok(c) = Mamba2Config::from_model_dir(&dir) {
                accepted = true;
                assert!(c.d_model <= max && c.eps > 0.0);
            }
            if let Ok(c) = VimConfig::from_model_dir(&dir) {
                accepted = true;
                let side = ssmgpu::preprocess::MAX_SIDE as usize;
                assert!(c.img_size.0 <= side && c.img_size.1 <= side && c.eps > 0.0);
            }
            accepted |= PlainMambaConfig::from_model_dir(&dir).is_ok();
            if let Ok(p) = Preprocess::from_config(&dir.config, &dir.config_path) {
                assert!(p.std().iter().all(|s| *s > 0.0 && s.is_finite()));
            }
            accepted
        },
    );
}

// ---- images ----

/// A CRC-32 (PNG's), to keep a mutated IHDR chunk valid so the decoder reads on.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The shipped MNIST samples as PNG, and one of them re-encoded as JPEG, BMP and WebP, gray
/// and RGB.
fn image_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = ssmgpu::assets::mnist_samples()
        .unwrap()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let img = image::load_from_memory(&seeds[0]).unwrap();
    for img in [img.clone(), image::DynamicImage::ImageRgb8(img.to_rgb8())] {
        for format in [
            image::ImageFormat::Jpeg,
            image::ImageFormat::Bmp,
            image::ImageFormat::WebP,
            image::ImageFormat::Png,
        ] {
            let mut bytes = std::io::Cursor::new(Vec::new());
            if img.write_to(&mut bytes, format).is_ok() {
                seeds.push(bytes.into_inner());
            }
        }
    }
    seeds
}

/// Set a PNG's IHDR width or height (CRC recomputed) or a BMP's, to an extreme size.
fn mutate_image_header(rng: &mut StdRng, bytes: &mut [u8]) {
    let size: u32 = *pick(rng, &[0, 1, 2, 28, 32768, 32769, 23000, 65535, 0x7FFF_FFFF]);
    if bytes.starts_with(b"\x89PNG") && bytes.len() >= 33 {
        let at = 16 + 4 * rng.random_range(0..2);
        bytes[at..at + 4].copy_from_slice(&size.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    } else if bytes.starts_with(b"BM") && bytes.len() >= 26 {
        let at = 18 + 4 * rng.random_range(0..2);
        bytes[at..at + 4].copy_from_slice(&size.to_le_bytes());
    }
}

/// An 8000x8000 gray PNG of a few hundred KB: decoded 64 MB, and the resize must not add a
/// 16-bytes-per-pixel copy (1 GB) of it. (Alone in this binary's run of its own: the peak is
/// process-wide, so run with `--test-threads 1`, as CI's smoke does not need to.)
#[test]
fn a_huge_image_preprocesses_within_its_memory_cap() {
    let side = 8000u32;
    let png = {
        let img =
            image::GrayImage::from_fn(side, side, |x, y| image::Luma([((x ^ y) & 0xFF) as u8]));
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    };
    let p = Preprocess::new(
        28,
        (28, 28),
        Interpolation::Bilinear,
        vec![0.13],
        vec![0.31],
    )
    .unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK_LIVE.store(before, Ordering::Relaxed);
    let img = decode_image("huge.png", &png).unwrap();
    let x = p.apply(&img).unwrap();
    drop(img);
    let peak = PEAK_LIVE.load(Ordering::Relaxed) - before;
    let decoded = (side * side) as usize;
    assert_eq!(x.len(), 28 * 28);
    // Other tests' allocations may overlap this one's; none comes near a decoded image.
    assert!(
        peak < 3 * decoded,
        "peak {peak} bytes for a {decoded}-byte image"
    );
}

#[test]
fn fuzz_image_decoding_and_preprocessing() {
    let seeds = image_seeds();
    let gray = Preprocess::new(
        28,
        (28, 28),
        Interpolation::Bilinear,
        vec![0.13],
        vec![0.31],
    );
    let rgb = Preprocess::new(
        36,
        (32, 32),
        Interpolation::Bicubic,
        vec![0.485, 0.456, 0.406],
        vec![0.229, 0.224, 0.225],
    );
    let (gray, rgb) = (gray.unwrap(), rgb.unwrap());
    fuzz(
        "image",
        |rng| {
            let mut bytes = pick(rng, &seeds).clone();
            if rng.random_bool(0.3) {
                mutate_image_header(rng, &mut bytes);
            }
            if rng.random_bool(0.8) {
                let other = pick(rng, &seeds).as_slice();
                mutate_bytes(rng, &mut bytes, other);
            }
            bytes
        },
        |bytes| {
            let Ok(img) = decode_image("fuzz.img", bytes) else {
                return false;
            };
            for p in [&gray, &rgb] {
                if let Ok(x) = p.apply(&img) {
                    let [c, h, w] = p.output_shape();
                    assert_eq!(x.len(), c * h * w);
                    assert!(x.iter().all(|v| v.is_finite()));
                }
            }
            true
        },
    );
}

// ---- --prune and --reduce ----

const SPEC_TOKENS: [&str; 24] = [
    "0",
    "1",
    "2",
    "5",
    "12",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    ":",
    ":",
    ",",
    ",",
    ".",
    "0.5",
    "1.0",
    "1e-300",
    "NaN",
    "inf",
    " ",
    "vim-t",
    "vim-s",
    "mamba-2.8b",
    "mamba2-2.7b",
    "\u{0}",
];

#[test]
fn fuzz_prune_and_reduce_parsers() {
    fuzz(
        "specs",
        |rng| {
            let n = rng.random_range(0..10);
            let spec: String = (0..n).map(|_| *pick(rng, &SPEC_TOKENS)).collect();
            let mut bytes = spec.into_bytes();
            bytes.push(rng.random_range(1..=64)); // the model's depth
            bytes.push(rng.random()); // the FLOPs target, in 1/256
            bytes
        },
        |input| {
            let (spec, tail) = input.split_at(input.len() - 2);
            let spec = std::str::from_utf8(spec).unwrap();
            let (depth, target) = (usize::from(tail[0]), f64::from(tail[1]) / 256.0);
            if let Ok(s) = PruneSchedule::parse(spec) {
                let steps = s.steps();
                assert!(steps.iter().all(|st| st.after_layer >= 1));
                assert!(steps
                    .iter()
                    .all(|st| st.keep_ratio > 0.0 && st.keep_ratio <= 1.0));
                assert!(steps
                    .windows(2)
                    .all(|w| w[0].after_layer < w[1].after_layer));
            }
            let Ok(r) = Reduction::parse(spec, Method::Unified, Metric::SsmOutput) else {
                return false;
            };
            assert!(r.ratio() > 0.0 && r.ratio() <= 1.0, "ratio {}", r.ratio());
            if ssmgpu::models::lm::check_reduction_depth(&r, depth).is_ok() {
                assert!(r.layers().iter().all(|&l| l + 1 < depth));
                if target > 0.0 {
                    if let Ok(f) = r.for_flops(512, depth, target) {
                        assert!(f.ratio() > 0.0 && f.ratio() <= 1.0);
                    }
                }
            }
            true
        },
    );
}
