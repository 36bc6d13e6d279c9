//! Input a new user or a buggy upstream tool might hand the engine (issue 23): each case ends
//! in a typed error naming what is at fault, or in the right answer, never in a panic, an
//! abort, a hang or a silently wrong output.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ctx, golden_dir};
use ssmgpu::loader::{write_f32, SafetensorsFile};
use ssmgpu::models::lm::CausalLm;
use ssmgpu::models::mamba::MambaLm;
use ssmgpu::Error;

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn tiny() -> PathBuf {
    golden_dir().join("mamba1_tiny")
}

fn tiny_tensors() -> Tensors {
    let f = SafetensorsFile::open(tiny().join("model.safetensors")).unwrap();
    f.names()
        .into_iter()
        .map(|n| {
            let (shape, data) = f.f32(&n, None).unwrap();
            (n, shape, data)
        })
        .collect()
}

/// A model folder with the tiny Mamba's config (edited) and the given weights.
fn model_dir(
    tensors: &Tensors,
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    write_f32(&dir.path().join("model.safetensors"), tensors).unwrap();
    dir
}

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
