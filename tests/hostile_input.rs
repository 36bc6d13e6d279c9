//! Input a new user or a buggy upstream tool might hand the engine (issue 23): each case ends
//! in a typed error naming what is at fault, or in the right answer, never in a panic, an
//! abort, a hang or a silently wrong output.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ctx, model_dir, tiny, tiny_tensors, Tensors};
use ssmgpu::loader::{write_f32, SafetensorsFile};
use ssmgpu::models::lm::CausalLm;
use ssmgpu::models::mamba::MambaLm;
use ssmgpu::Error;

/// The tiny weights with one tensor's values replaced.
fn with_tensor(name: &str, edit: impl Fn(&mut Vec<f32>)) -> Tensors {
    let mut t = tiny_tensors();
    let entry = t.iter_mut().find(|(n, _, _)| n == name).unwrap();
    edit(&mut entry.2);
    t
}

fn cli(args: &[&str]) -> (bool, String, String) {
    common::cli(args)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- generate ----

/// The tiny model continues `1, 2` with 2 forever; with 2 as its eos it stops at once.
#[test]
fn generate_with_the_largest_token_limit_runs_and_stops_at_eos() {
    let dir = model_dir(&tiny_tensors(), |c| c["eos_token_id"] = 2.into());
    let (ok, stdout, stderr) = cli(&[
        "generate",
        "--model",
        s(dir.path()),
        "--ids",
        "1,2",
        "--max-new-tokens",
        "18446744073709551615",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "1,2,2");
    // --json holds the ids, so a limit past the cap is refused before anything runs.
    let (ok, _, stderr) = cli(&[
        "generate",
        "--model",
        s(dir.path()),
        "--ids",
        "1,2",
        "--max-new-tokens",
        "1000000000000000000",
        "--json",
    ]);
    assert!(!ok && stderr.contains("--max-new-tokens"), "{stderr}");
}

/// Each new id is on stdout while generation goes on.
#[test]
fn generate_streams_each_token() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ssmgpu"))
        .args(["--backend", "wgpu", "generate", "--model", s(&tiny())])
        .args([
            "--ids",
            "1,2",
            "--max-new-tokens",
            "100000000",
            "--ignore-eos",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
            if tx.send(String::from_utf8_lossy(&seen).to_string()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = String::new();
    while Instant::now() < deadline && !seen.starts_with("1,2,2,2,2") {
        if let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = s;
        }
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(still_running, "generation ended early: {seen}");
    assert!(seen.starts_with("1,2,2,2,2"), "printed so far: {seen:?}");
}

#[test]
fn eos_token_id_outside_the_vocabulary_is_refused() {
    for eos in [
        serde_json::json!(-1),
        serde_json::json!(256),
        serde_json::json!(1.5),
    ] {
        let dir = model_dir(&tiny_tensors(), |c| c["eos_token_id"] = eos.clone());
        match MambaLm::load(ctx(), dir.path()) {
            Err(Error::Config { message, .. }) => {
                assert!(message.contains("eos_token_id"), "{message}")
            }
            other => panic!("eos {eos}: {:?}", other.err()),
        }
    }
}

/// Finite weights so large that the final norm overflows: every logit is NaN or infinite.
fn overflowing_model() -> tempfile::TempDir {
    model_dir(
        &with_tensor("backbone.norm_f.weight", |w| w.fill(3e38)),
        |_| {},
    )
}

#[test]
fn non_finite_logits_are_an_error_and_never_fed_back() {
    let dir = overflowing_model();
    let model = MambaLm::load(ctx(), dir.path()).unwrap();
    match pollster::block_on(model.generate(ctx(), &[1, 2], 3, None, None)) {
        Err(Error::NonFinite { what }) => assert!(what.contains("logits"), "{what}"),
        other => panic!("{other:?}"),
    }
    match pollster::block_on(model.run(ctx(), &[1, 2], 1, false)) {
        Err(Error::NonFinite { what }) => assert!(what.contains("logits"), "{what}"),
        other => panic!("{:?}", other.map(|r| r.0.len())),
    }
}

// ---- non-finite numbers and bad norms at load ----

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let name = "backbone.layers.1.mixer.D";
        let dir = model_dir(&with_tensor(name, |w| w[3] = bad), |_| {});
        match MambaLm::load(ctx(), dir.path()) {
            Err(e @ Error::NonFinite { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(name) && msg.contains("model.safetensors"),
                    "{msg}"
                );
            }
            other => panic!("{bad}: {:?}", other.err()),
        }
    }
}

#[test]
fn a_norm_epsilon_that_is_not_positive_is_refused() {
    for eps in [-1e-5, 0.0, 1e-50] {
        let dir = model_dir(&tiny_tensors(), |c| c["layer_norm_epsilon"] = eps.into());
        match MambaLm::load(ctx(), dir.path()) {
            Err(Error::Config { message, .. }) => {
                assert!(message.contains("layer_norm_epsilon"), "{message}")
            }
            other => panic!("eps {eps}: {:?}", other.err()),
        }
    }
}

// ---- files that are not regular, or change under the process ----

#[cfg(unix)]
#[test]
fn a_fifo_or_a_directory_is_refused_before_it_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = dir.path().join("out.safetensors");
    // Each would block forever on the FIFO before the fix; the harness' timeout then fails it.
    for args in [
        vec![
            "run",
            "--model",
            s(&tiny()),
            "--input",
            s(&fifo),
            "--out",
            s(&out),
        ],
        vec!["classify", s(&fifo)],
        vec!["classify", s(dir.path())],
    ] {
        let (ok, _, stderr) = cli(&args);
        assert!(
            !ok && stderr.contains("not a regular file"),
            "{args:?}: {stderr}"
        );
    }
    match SafetensorsFile::open(&fifo) {
        Err(Error::Io { path, .. }) => assert_eq!(path, fifo),
        other => panic!("{:?}", other.err()),
    }
}

/// A tool rewriting the checkpoint in place truncates it under the reader: with the file
/// memory-mapped, reading a tensor then killed the process with SIGBUS.
#[test]
fn a_weights_file_truncated_after_opening_is_still_read_whole() {
    let dir = model_dir(&tiny_tensors(), |_| {});
    let path = dir.path().join("model.safetensors");
    let f = SafetensorsFile::open(&path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8)
        .unwrap();
    let (shape, values) = f.f32("backbone.embeddings.weight", None).unwrap();
    assert_eq!(shape, vec![256, 64]);
    let want = SafetensorsFile::open(tiny().join("model.safetensors"))
        .unwrap()
        .f32("backbone.embeddings.weight", None)
        .unwrap()
        .1;
    assert_eq!(values, want);
}

// ---- safetensors headers and configs ----

fn safetensors_bytes(header: &serde_json::Value, data: usize) -> Vec<u8> {
    let header = header.to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data, 0);
    bytes
}

#[test]
fn the_tensor_past_the_end_of_the_file_is_the_one_named() {
    let header = serde_json::json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1000], "data_offsets": [8, 4008]},
        "c": {"dtype": "F32", "shape": [2], "data_offsets": [4008, 4016]},
    });
    match SafetensorsFile::from_bytes("x.safetensors", safetensors_bytes(&header, 16)) {
        Err(Error::Safetensors { message, .. }) => {
            assert!(
                message.contains("`b`") && !message.contains("`c`"),
                "{message}"
            )
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn an_oversized_header_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    // Claims a 68 MB header; only its length is read.
    let mut bytes = (68u64 << 20).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\":");
    std::fs::write(&path, bytes).unwrap();
    match SafetensorsFile::open(&path) {
        Err(Error::Safetensors { message, .. }) => assert!(message.contains("header"), "{message}"),
        other => panic!("{:?}", other.err()),
    }
    const { assert!(ssmgpu::loader::MAX_HEADER_BYTES < 68 << 20) };
}

#[test]
fn config_sizes_that_would_overflow_name_their_key() {
    let dir = model_dir(&tiny_tensors(), |c| {
        c.as_object_mut().unwrap().remove("intermediate_size");
        c["expand"] = (1u64 << 63).into();
    });
    match MambaLm::load(ctx(), dir.path()) {
        Err(Error::Config { message, .. }) => assert!(message.contains("`expand`"), "{message}"),
        other => panic!("{:?}", other.err()),
    }
    let vim = ssmgpu::assets::path(ssmgpu::assets::VIM_MNIST);
    let config = std::fs::read_to_string(vim.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["img_size"] = (1u64 << 40).into();
    let weights = std::fs::read(vim.join("model.safetensors")).unwrap();
    let dir = ssmgpu::models::ModelDir::from_bytes("vim", &config.to_string(), weights).unwrap();
    match ssmgpu::models::vision::Classifier::from_model_dir(ctx(), &dir) {
        Err(Error::Config { message, .. }) => assert!(message.contains("`img_size`"), "{message}"),
        other => panic!("{:?}", other.err().map(|e| e.to_string())),
    }
}

// ---- images ----

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 77]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&img)
        .unwrap();
    bytes
}

#[test]
fn a_jpeg_cut_inside_its_scan_is_refused() {
    let whole = jpeg(64, 64);
    assert!(ssmgpu::preprocess::decode_image("whole.jpg", &whole).is_ok());
    for keep in [whole.len() * 2 / 3, whole.len() - 2] {
        match ssmgpu::preprocess::decode_image("cut.jpg", &whole[..keep]) {
            Err(Error::Image { path, message }) => {
                assert_eq!(path, Path::new("cut.jpg"));
                assert!(message.contains("truncated"), "{message}");
            }
            other => panic!(
                "kept {keep} of {}: {:?}",
                whole.len(),
                other.map(|i| i.width())
            ),
        }
    }
}

// ---- command-line values ----

#[test]
fn a_reduction_layer_that_wraps_is_refused() {
    let (ok, _, stderr) = cli(&[
        "generate",
        "--model",
        s(&tiny()),
        "--ids",
        "1,2,3,4",
        "--reduce",
        "18446744073709551615",
    ]);
    assert!(!ok && stderr.contains("18446744073709551615"), "{stderr}");
}

#[test]
fn flops_outside_0_to_100_are_refused() {
    for pct in ["NaN", "100", "150", "-5", "0"] {
        let (ok, _, stderr) = cli(&[
            "generate",
            "--model",
            s(&tiny()),
            "--ids",
            "1,2,3,4,5,6,7,8",
            "--reduce",
            "0",
            &format!("--flops={pct}"),
        ]);
        assert!(!ok && stderr.contains("--flops"), "{pct}: {stderr}");
    }
}

#[test]
fn importance_and_align_are_checked_without_prune() {
    for flag in ["--align", "--importance"] {
        let (ok, _, stderr) = cli(&["classify", flag, "bogus"]);
        assert!(!ok && stderr.contains("bogus"), "{flag}: {stderr}");
    }
}

/// A test set in `dir`: `images` u8 `[n, 28, 28]` and these labels.
fn test_set(dir: &Path, labels: &[i64]) {
    use safetensors::tensor::{Dtype, TensorView};
    let images = vec![0u8; labels.len() * 28 * 28];
    let labels: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let views = [
        (
            "images",
            TensorView::new(Dtype::U8, vec![labels.len() / 8, 28, 28], &images).unwrap(),
        ),
        (
            "labels",
            TensorView::new(Dtype::I64, vec![labels.len() / 8], &labels).unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &dir.join("test.safetensors")).unwrap();
}

#[test]
fn eval_refuses_labels_outside_the_classes_and_an_empty_limit() {
    let dir = tempfile::tempdir().unwrap();
    test_set(dir.path(), &[3, 10, 1]);
    let (ok, _, stderr) = cli(&["eval", "--data", s(dir.path())]);
    assert!(
        !ok && stderr.contains("10") && stderr.contains("labels"),
        "{stderr}"
    );
    test_set(dir.path(), &[3, 1]);
    let (ok, _, stderr) = cli(&["eval", "--data", s(dir.path()), "--limit", "0"]);
    assert!(!ok && stderr.contains("limit 0"), "{stderr}");
}

#[test]
fn run_refuses_an_output_that_is_its_input_or_unwritable_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    std::fs::copy(tiny().join("reference.safetensors"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let (ok, _, stderr) = cli(&[
        "run",
        "--model",
        s(&tiny()),
        "--input",
        s(&input),
        "--out",
        s(&input),
    ]);
    assert!(!ok && stderr.contains("--out"), "{stderr}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
    // The model folder is missing too: only an output check made first reports the output.
    let missing = dir.path().join("no/such/dir/out.safetensors");
    let (ok, _, stderr) = cli(&[
        "run",
        "--model",
        "/no/model",
        "--input",
        s(&input),
        "--out",
        s(&missing),
    ]);
    assert!(
        !ok && stderr.contains("no/such/dir/out.safetensors"),
        "{stderr}"
    );
}

/// `ssmgpu run` with vim-mnist on `pixel_values` of `images` MNIST-sized images: the folder
/// holding input and output, the output's path, success and stderr.
fn run_vim_on(images: usize, pixels: Vec<f32>) -> (tempfile::TempDir, PathBuf, bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    write_f32(
        &input,
        &[("pixel_values".into(), vec![images, 1, 28, 28], pixels)],
    )
    .unwrap();
    let vim = ssmgpu::assets::path(ssmgpu::assets::VIM_MNIST);
    let (ok, _, stderr) = cli(&[
        "run",
        "--model",
        s(&vim),
        "--input",
        s(&input),
        "--out",
        s(&out),
    ]);
    (dir, out, ok, stderr)
}

#[test]
fn non_finite_pixels_are_refused_naming_the_tensor() {
    let mut pixels = vec![0.5f32; 28 * 28];
    pixels[100] = f32::NAN;
    let (_dir, out, ok, stderr) = run_vim_on(1, pixels);
    assert!(
        !ok && stderr.contains("pixel_values") && stderr.contains("NaN"),
        "{stderr}"
    );
    assert!(!out.exists(), "a failed run leaves no output file");
}

// ---- batches past a device limit ----

/// The shipped MNIST samples through vim-mnist's preprocessing, `[n, 1, 28, 28]` flat.
fn mnist_pixels(classifier: &ssmgpu::models::vision::Classifier) -> (usize, Vec<f32>) {
    let samples = ssmgpu::assets::mnist_samples().unwrap();
    let images: Vec<Vec<f32>> = samples
        .iter()
        .map(|p| {
            let img = ssmgpu::preprocess::load_image(p).unwrap();
            classifier.preprocess.apply(&img).unwrap()
        })
        .collect();
    (samples.len(), ssmgpu::preprocess::batch(&images).unwrap())
}

#[test]
fn a_batch_past_the_binding_limit_is_split_and_run() {
    use ssmgpu::models::vision::Classifier;
    let vim = ssmgpu::assets::path(ssmgpu::assets::VIM_MNIST);
    let whole = Classifier::load(ctx(), &vim).unwrap();
    let (n, pixels) = mnist_pixels(&whole);
    let want = pollster::block_on(whole.logits(ctx(), &pixels, n)).unwrap();
    // in_proj is 197 tokens * 256 floats per image: a 512 KiB binding holds 2 images' of 10.
    let small = common::ctx_with_binding_limit(512 << 10);
    let split = Classifier::load(&small, &vim).unwrap();
    let got = pollster::block_on(split.logits(&small, &pixels, n)).unwrap();
    common::assert_close("split logits", &got, &want, 1e-5, 1e-5);
}

#[test]
fn cli_run_takes_1024_images() {
    use ssmgpu::models::vision::Classifier;
    let vim = ssmgpu::assets::path(ssmgpu::assets::VIM_MNIST);
    let classifier = Classifier::load(ctx(), &vim).unwrap();
    let (n, pixels) = mnist_pixels(&classifier);
    let want = pollster::block_on(classifier.logits(ctx(), &pixels, n)).unwrap();
    let many: Vec<f32> = pixels
        .iter()
        .copied()
        .cycle()
        .take(1024 * 28 * 28)
        .collect();
    let (_dir, out, ok, stderr) = run_vim_on(1024, many);
    assert!(ok, "{stderr}");
    let (shape, got) = SafetensorsFile::open(&out)
        .unwrap()
        .f32("logits", None)
        .unwrap();
    assert_eq!(shape, vec![1024, 10]);
    let want: Vec<f32> = want.iter().copied().cycle().take(1024 * 10).collect();
    common::assert_close("logits of 1024 images", &got, &want, 1e-4, 1e-4);
}
