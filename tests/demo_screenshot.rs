//! The desktop demo (examples/demo) under Xvfb: `--screenshot` saves its first complete frame,
//! rendered on the same device that ran the model, and the picture must hold the digit, a
//! token grid with kept and pruned cells, the score heatmap and the prediction. Regions are
//! found and checked by the colours the demo draws them in (examples/demo/overlay.wgsl,
//! ui.rs), so a blank, single-colour or half-drawn frame fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{Rgba, RgbaImage};

/// The demo binary, built with the profile of this test (a no-op under
/// `cargo test --all-targets`, which builds the examples too).
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/demo_screenshot-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--example", "demo", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().expect("running cargo build --example demo");
    assert!(status.success(), "cargo build --example demo failed");
    profile_dir
        .join("examples")
        .join(format!("demo{}", std::env::consts::EXE_SUFFIX))
}

/// Run the demo under `xvfb-run` with `--screenshot`; fails loudly without Xvfb or a GPU.
fn screenshot(args: &[&str]) -> (Output, RgbaImage) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let png = dir.path().join("frame.png");
    let output = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x1024x24"])
        .arg(demo_binary())
        .args(args)
        .arg("--screenshot")
        .arg(&png)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run xvfb-run ({e}); on Debian: apt-get install xvfb xauth")
        });
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed (no GPU adapter? on Debian: apt-get install mesa-vulkan-drivers libvulkan1):\n{log}"
    );
    let image = image::open(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{log}", png.display()))
        .to_rgba8();
    (output, image)
}

fn kept_line(&Rgba([r, g, b, _]): &Rgba<u8>) -> bool {
    g >= 180 && r <= 110 && b <= 140
}

fn pruned(&Rgba([r, g, b, _]): &Rgba<u8>) -> bool {
    r >= 110 && g <= 90 && b <= 90 && u16::from(r) >= 2 * u16::from(g)
}

fn bar(&Rgba([r, g, b, _]): &Rgba<u8>) -> bool {
    r >= 230 && (110..=170).contains(&g) && b <= 40
}

fn heat(&Rgba([r, g, b, _]): &Rgba<u8>) -> bool {
    b >= 120 && u16::from(b) >= u16::from(r) + 60 && g <= b
}

fn bright_gray(&Rgba([r, g, b, _]): &Rgba<u8>) -> bool {
    r.min(g).min(b) >= 200 && r.max(g).max(b) - r.min(g).min(b) <= 20
}

fn dark(&Rgba([r, g, b, _]): &Rgba<u8>) -> bool {
    r.max(g).max(b) <= 40
}

/// Text on egui's dark theme: light gray.
fn text(&Rgba([r, g, b, _]): &Rgba<u8>) -> bool {
    r.min(g).min(b) >= 100
}

/// Inclusive bounding box `(x0, y0, x1, y1)` of the pixels matching `f`, and their count.
fn find(image: &RgbaImage, f: impl Fn(&Rgba<u8>) -> bool) -> (Option<[u32; 4]>, usize) {
    let mut bbox: Option<[u32; 4]> = None;
    let mut n = 0;
    for (x, y, p) in image.enumerate_pixels() {
        if f(p) {
            n += 1;
            bbox = Some(match bbox {
                None => [x, y, x, y],
                Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x), y1.max(y)],
            });
        }
    }
    (bbox, n)
}

fn count(image: &RgbaImage, [x0, y0, x1, y1]: [u32; 4], f: impl Fn(&Rgba<u8>) -> bool) -> usize {
    (y0..=y1.min(image.height() - 1))
        .flat_map(|y| (x0..=x1.min(image.width() - 1)).map(move |x| (x, y)))
        .filter(|&(x, y)| f(image.get_pixel(x, y)))
        .count()
}

#[test]
fn demo_screenshot_shows_the_digit_the_token_grid_and_the_prediction() {
    let (_, image) = screenshot(&[]);
    let colours: std::collections::HashSet<[u8; 4]> = image.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 50,
        "{} colours: a blank frame",
        colours.len()
    );

    // The mask panel: the green grid around kept cells spans it.
    let (grid, lines) = find(&image, kept_line);
    let grid = grid.expect("no kept-cell grid lines in the frame");
    let [gx0, gy0, gx1, gy1] = grid;
    assert!(
        gx1 - gx0 >= 200 && gy1 - gy0 >= 200 && lines >= 1000,
        "kept-cell grid lines: {lines} pixels in {grid:?}"
    );
    let pruned_px = count(&image, grid, pruned);
    assert!(
        pruned_px >= 2000,
        "{pruned_px} pruned-cell pixels in {grid:?}"
    );
    // The digit (white strokes on black) shows through the kept cells.
    let bright = count(&image, grid, bright_gray);
    let black = count(&image, grid, dark);
    assert!(
        bright >= 300 && black >= 2000,
        "digit: {bright} bright, {black} dark pixels"
    );

    // The heatmap panel, right of the mask.
    let right = [gx1 + 1, gy0, gx1 + (gx1 - gx0), gy1];
    let heat_px = count(&image, right, heat);
    assert!(
        heat_px >= 5000,
        "{heat_px} heatmap pixels right of the grid"
    );

    // The top-5 bars below the grid, with their labels and percentages.
    let (bars, bar_px) = find(&image, bar);
    let [bx0, by0, bx1, by1] = bars.expect("no prediction bars in the frame");
    assert!(by0 > gy1, "the bars ({by0}) are not below the grid ({gy1})");
    assert!(
        bar_px >= 2000 && bx1 - bx0 >= 150,
        "{bar_px} bar pixels, the top bar {} wide: no confident prediction",
        bx1 - bx0
    );
    let labels = count(&image, [bx0.saturating_sub(100), by0, bx0, by1], text);
    let percentages = count(&image, [bx1, by0, bx1 + 100, by1], text);
    assert!(
        labels >= 20 && percentages >= 40,
        "prediction text: {labels} label pixels, {percentages} percentage pixels"
    );
}

#[test]
fn demo_reports_bad_input_in_the_window_and_keeps_running() {
    let not_a_model = tempfile::tempdir().expect("a temporary directory");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let (output, image) = screenshot(&[
        manifest.to_str().expect("a UTF-8 path"),
        "--model",
        not_a_model.path().to_str().expect("a UTF-8 path"),
        "--prune",
        "5:0.8,x",
    ]);
    let log = String::from_utf8_lossy(&output.stderr);
    for expected in ["model: ", "config.json", "image: ", "Cargo.toml"] {
        assert!(
            log.contains(expected),
            "`{expected}` not in the log:\n{log}"
        );
    }
    // The messages are drawn in the window in the error colour (ui.rs `ERROR`).
    let (_, error_px) = find(&image, |&Rgba([r, g, b, _])| {
        r >= 200 && (70..=150).contains(&g) && (70..=150).contains(&b) && g.abs_diff(b) <= 20
    });
    assert!(
        error_px >= 100,
        "{error_px} error-text pixels in the window"
    );
}
