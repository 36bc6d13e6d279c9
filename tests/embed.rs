//! Embedding the engine in a host's device (what examples/demo does): a device created from
//! `Context::device_descriptor` and handed over with `Context::from_device` runs a model as
//! the engine's own device does, and host commands recorded into the forward pass's encoder
//! (timestamp queries) run in order with it, in the same submission.

mod common;

use ssmgpu::models::vision::Classifier;
use ssmgpu::runtime::DType;
use ssmgpu::{assets, preprocess, Context};

fn host_context() -> Context {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
        &instance, None,
    ))
    .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    let descriptor = Context::device_descriptor(&adapter);
    let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
        .unwrap_or_else(|e| panic!("the engine's device descriptor was refused: {e}"));
    assert!(device.features().contains(descriptor.required_features));
    assert_eq!(
        device.limits().max_storage_buffer_binding_size,
        adapter.limits().max_storage_buffer_binding_size,
        "the engine asks for the adapter's real limits"
    );
    Context::from_device(device, queue)
}

#[test]
fn a_host_device_runs_the_model_like_the_engines_own() {
    let host = host_context();
    let own = common::ctx();
    let image = preprocess::load_image(assets::path(assets::MNIST_SAMPLES).join("digit7_1401.png"))
        .expect("a shipped sample");
    let mut logits = Vec::new();
    for ctx in [&host, own] {
        let classifier =
            Classifier::load(ctx, &assets::path(assets::VIM_MNIST)).expect("vim-mnist");
        let pixels = classifier.preprocess.apply(&image).expect("preprocess");
        logits.push(pollster::block_on(classifier.logits(ctx, &pixels, 1)).expect("forward"));
    }
    let diff = logits[0]
        .iter()
        .zip(&logits[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff <= 1e-4, "host and own device disagree by {diff}");
}

#[test]
fn host_timestamps_around_a_forward_pass_run_in_its_submission() {
    let ctx = host_context();
    let device = ctx.device().expect("a host's context is a wgpu context");
    if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        eprintln!("the adapter has no timestamp queries; nothing to check");
        return;
    }
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: None,
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let classifier = Classifier::load(&ctx, &assets::path(assets::VIM_MNIST)).expect("vim-mnist");
    let [c, h, w] = classifier.preprocess.output_shape();
    let pixels = ctx
        .upload_f32("pixel_values", &[1, c, h, w], &vec![0.5; c * h * w])
        .expect("upload");
    let ticks = ctx.alloc("ticks", &[4], DType::U32).expect("alloc");
    let mut rec = ctx.recorder();
    let stamp = |rec: &mut ssmgpu::Recorder, begin: Option<u32>, end: Option<u32>| {
        rec.encoder()
            .expect("a wgpu recorder")
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: begin,
                    end_of_pass_write_index: end,
                }),
            });
    };
    stamp(&mut rec, Some(0), None);
    let logits = classifier
        .model
        .forward(&mut rec, &pixels, None, None)
        .expect("forward");
    stamp(&mut rec, None, Some(1));
    let ticks_buffer = ticks.buffer().wgpu().expect("a wgpu tensor").clone();
    let encoder = rec.encoder().expect("a wgpu recorder");
    encoder.resolve_query_set(&queries, 0..2, &resolve, 0);
    encoder.copy_buffer_to_buffer(&resolve, 0, &ticks_buffer, 0, 16);
    let out = rec
        .submit_and_read_blocking(&[&ticks, &logits])
        .expect("submit");
    let t: Vec<u64> = out[0]
        .chunks(2)
        .map(|w| u64::from(w[0].to_bits()) | (u64::from(w[1].to_bits()) << 32))
        .collect();
    assert!(t[1] > t[0], "timestamps {t:?} do not span the forward pass");
    assert!(out[1].iter().all(|v| v.is_finite()), "logits {:?}", out[1]);
}
