// The page: loads vim-mnist into the wasm engine, classifies what is drawn or dropped, and
// shows the tokens each stage of a pruned pass kept. `window.app` is what web/tests drive.
import init, { Engine } from './pkg/ssmgpu_web.js';

const $ = (id) => document.getElementById(id);
const status = $('status');
const pad = $('pad');
const pen = pad.getContext('2d', { willReadFrequently: true });
const TOP = 3;

const app = {
  engine: null,
  // The last input, re-classified when the pruning settings change.
  input: null,
  last: null,
  firstPredictionMs: null,
  // Results come back in order of request; a stale one is not shown.
  seq: 0,
};
window.app = app;

function fail(message) {
  status.textContent = message;
  status.className = 'error';
  document.body.dataset.state = 'error';
}

async function main() {
  if (!navigator.gpu) {
    fail('This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome or Edge, ' +
      'Firefox 141+ or Safari 26+, or enable WebGPU in the browser flags.');
    return;
  }
  await init();
  const [config, weights] = await Promise.all([
    fetch('pkg/vim-mnist/config.json').then((r) => r.text()),
    fetch('pkg/vim-mnist/model.safetensors').then((r) => r.arrayBuffer()),
  ]);
  app.engine = await Engine.load('vim-mnist', config, new Uint8Array(weights));
  status.textContent = `vim-mnist on ${app.engine.adapter()}`;
  for (let layer = 1; layer < app.engine.depth(); layer++) {
    $('layer').add(new Option(String(layer), String(layer), layer === 2, layer === 2));
  }
  for (let digit = 0; digit < 10; digit++) {
    const button = document.createElement('button');
    button.textContent = digit;
    button.onclick = () => classifySample(digit);
    $('samples').append(button);
  }
  $('app').hidden = false;
  await classifySample(7);
  app.firstPredictionMs = performance.now();
  status.textContent += ` · first prediction ${app.firstPredictionMs.toFixed(0)} ms after navigation`;
  document.body.dataset.state = 'ready';
}

const SAMPLES = ['digit0_0', 'digit1_200', 'digit2_425', 'digit3_623', 'digit4_829',
  'digit5_1025', 'digit6_1198', 'digit7_1401', 'digit8_1615', 'digit9_1804'];

async function classifySample(digit) {
  const bytes = new Uint8Array(await (await fetch(`pkg/samples/${SAMPLES[digit]}.png`)).arrayBuffer());
  return classifyBytes(bytes);
}

// An encoded image (a sample or a dropped file): shown on the pad, classified from its bytes,
// exactly as the native engine decodes and transforms it.
async function classifyBytes(bytes) {
  const bitmap = await createImageBitmap(new Blob([bytes]));
  pen.fillStyle = '#000';
  pen.fillRect(0, 0, pad.width, pad.height);
  pen.imageSmoothingEnabled = false;
  pen.drawImage(bitmap, 0, 0, pad.width, pad.height);
  app.input = { bytes };
  return classify();
}

function classifyPad() {
  app.input = { pad: true };
  return classify();
}

async function classify() {
  const seq = ++app.seq;
  const { engine, input } = app;
  let result;
  try {
    if (input.bytes) {
      result = await engine.classify_encoded(input.bytes, TOP);
    } else {
      const image = pen.getImageData(0, 0, pad.width, pad.height);
      result = await engine.classify_rgba(image.data, image.width, image.height, TOP);
    }
  } catch (e) {
    fail(`Classification failed: ${e.message ?? e}`);
    throw e;
  }
  const shown = {
    logits: Array.from(result.logits),
    labels: result.labels,
    probabilities: Array.from(result.probabilities),
    stageLayers: Array.from(result.stage_layers),
    stageTokens: Array.from(result.stage_tokens),
    masks: result.masks,
    preprocessMs: result.preprocess_ms,
    forwardMs: result.forward_ms,
  };
  result.free();
  if (seq === app.seq) {
    show(shown);
  }
  return shown;
}

function show(r) {
  app.last = r;
  $('prediction').textContent = r.labels[0];
  $('top').replaceChildren(...r.labels.map((label, i) => {
    const item = document.createElement('li');
    item.textContent = `${label}: ${(100 * r.probabilities[i]).toFixed(1)}%`;
    return item;
  }));
  $('timing').textContent =
    `preprocess ${r.preprocessMs.toFixed(1)} ms, forward pass + readback ${r.forwardMs.toFixed(1)} ms`;
  const rows = app.engine.grid_rows();
  const cols = app.engine.grid_cols();
  $('stages').replaceChildren(...r.stageLayers.map((layer, s) => {
    const stage = document.createElement('div');
    stage.className = 'stage';
    const caption = document.createElement('div');
    caption.textContent = `layer ${layer}+: ${r.stageTokens[s]} tokens`;
    const grid = document.createElement('div');
    grid.className = 'grid';
    grid.style.gridTemplateColumns = `repeat(${cols}, auto)`;
    for (let cell = 0; cell < rows * cols; cell++) {
      const div = document.createElement('div');
      div.className = r.masks[s * rows * cols + cell] ? 'kept' : 'pruned';
      grid.append(div);
    }
    stage.append(caption, grid);
    return stage;
  }));
}

function applyPruning() {
  const ratio = Number($('ratio').value);
  $('ratio-value').textContent = ratio.toFixed(2);
  const schedule = ratio < 1 ? `${$('layer').value}:${ratio}` : '';
  try {
    app.engine.set_pruning(schedule, $('importance').value, $('align').value);
  } catch (e) {
    fail(`Pruning refused: ${e.message}`);
    return;
  }
  if (app.input) classify();
}
for (const id of ['ratio', 'layer', 'align', 'importance']) {
  $(id).addEventListener('input', applyPruning);
}

// Drawing: thick white strokes on black, classified when the stroke ends.
let drawing = false;
pad.addEventListener('pointerdown', (e) => {
  if (!app.input?.pad) {
    pen.fillStyle = '#000';
    pen.fillRect(0, 0, pad.width, pad.height);
  }
  app.input = { pad: true };
  drawing = true;
  pad.setPointerCapture(e.pointerId);
  pen.beginPath();
  pen.moveTo(e.offsetX, e.offsetY);
});
pad.addEventListener('pointermove', (e) => {
  if (!drawing) return;
  pen.lineWidth = 22;
  pen.lineCap = 'round';
  pen.strokeStyle = '#fff';
  pen.lineTo(e.offsetX, e.offsetY);
  pen.stroke();
});
pad.addEventListener('pointerup', () => {
  drawing = false;
  classifyPad();
});
$('clear').onclick = () => {
  pen.fillStyle = '#000';
  pen.fillRect(0, 0, pad.width, pad.height);
  app.input = { pad: true };
};
pad.addEventListener('dragover', (e) => { e.preventDefault(); pad.classList.add('drop'); });
pad.addEventListener('dragleave', () => pad.classList.remove('drop'));
pad.addEventListener('drop', async (e) => {
  e.preventDefault();
  pad.classList.remove('drop');
  const file = e.dataTransfer.files[0];
  if (file) classifyBytes(new Uint8Array(await file.arrayBuffer()));
});

Object.assign(app, { classifyBytes, classifySample, classifyPad });
main().catch((e) => fail(`Could not start: ${e.message ?? e}`));
