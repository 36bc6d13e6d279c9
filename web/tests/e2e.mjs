// End to end in the system's headless Chromium (WebGPU on its SwiftShader adapter): the page
// loads, classifies the shipped digits as the native engine does (logits within 1e-3 of those
// in EXPECTED.json, which tests/web_e2e.rs computes natively before running this), the mask
// display shows pruned cells below keep ratio 1, and a browser without WebGPU gets the message.
//
// usage: node web/tests/e2e.mjs EXPECTED.json   (after scripts/build-web.sh)
// Prints one JSON line of measurements; exits non-zero on the first failed check.
import { createServer } from 'node:http';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { extname, join, normalize, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const TOLERANCE = 1e-3;
const web = join(dirname(fileURLToPath(import.meta.url)), '..');
const expected = JSON.parse(await readFile(process.argv[2] ?? fail('usage: e2e.mjs EXPECTED.json'), 'utf8'));

function fail(message) {
  throw new Error(message);
}
function check(ok, message) {
  if (!ok) fail(message);
}

// A static server over web/: the page needs http (modules, fetch), not file://.
const types = {
  '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json',
  '.wasm': 'application/wasm', '.png': 'image/png',
};
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
  try {
    const body = await readFile(join(web, path.endsWith('/') ? `${path}index.html` : path));
    res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/index.html`;

const profile = await mkdtemp(join(tmpdir(), 'ssmgpu-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const report = {};
try {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  const started = Date.now();
  await page.goto(url);
  await page.waitForSelector('body:not([data-state="loading"])', { timeout: 180_000 });
  const state = await page.evaluate(() => document.body.dataset.state);
  check(state === 'ready', `page did not get ready: ${await page.textContent('#status')}\n${logs.join('\n')}`);
  report.adapter = await page.textContent('#status');
  report.first_prediction_ms = await page.evaluate(() => app.firstPredictionMs);
  report.load_to_ready_ms = Date.now() - started;

  // Every shipped digit, as the native engine classified and scored it.
  let worst = 0;
  for (const sample of expected.samples) {
    const got = await page.evaluate(async (name) => {
      const bytes = new Uint8Array(await (await fetch(`pkg/samples/${name}`)).arrayBuffer());
      return app.classifyBytes(bytes);
    }, sample.file);
    const shown = await page.textContent('#prediction');
    check(shown === sample.label, `${sample.file}: the page shows ${shown}, expected ${sample.label}`);
    check(got.logits.length === sample.logits.length, `${sample.file}: ${got.logits.length} logits`);
    const diff = Math.max(...got.logits.map((v, i) => Math.abs(v - sample.logits[i])));
    check(diff <= TOLERANCE, `${sample.file}: logits differ from native by ${diff}`);
    worst = Math.max(worst, diff);
  }
  report.max_logit_diff = worst;

  // The keep-ratio slider: pruning after a layer, with the same logits as native.
  const { file, layer, ratio, logits } = expected.pruned;
  await page.evaluate(async (name) => app.classifyBytes(
    new Uint8Array(await (await fetch(`pkg/samples/${name}`)).arrayBuffer())), file);
  const setRatio = (value) => page.evaluate(([layer, value]) => {
    document.getElementById('layer').value = String(layer);
    const slider = document.getElementById('ratio');
    slider.value = String(value);
    slider.dispatchEvent(new Event('input'));
  }, [layer, value]);
  await setRatio(ratio);
  await page.waitForFunction(() => app.last.stageLayers.length > 1);
  const pruned = await page.evaluate(() => ({
    last: app.last,
    cells: document.querySelectorAll('.stage:last-child .grid div').length,
    prunedCells: document.querySelectorAll('.stage:last-child .grid .pruned').length,
    firstStagePruned: document.querySelectorAll('.stage:first-child .grid .pruned').length,
    rows: app.engine.grid_rows(),
    cols: app.engine.grid_cols(),
  }));
  check(pruned.last.stageLayers.join() === `1,${layer + 1}`, `stages start at layers ${pruned.last.stageLayers}`);
  const keptCells = pruned.last.stageTokens[1] - 1; // the class token has no cell
  check(pruned.cells === pruned.rows * pruned.cols, `${pruned.cells} cells in the grid`);
  check(pruned.prunedCells > 0 && pruned.prunedCells === pruned.cells - keptCells,
    `${pruned.prunedCells} pruned cells shown, the stage kept ${keptCells} of ${pruned.cells}`);
  check(pruned.firstStagePruned === 0, 'the first stage shows pruned cells');
  const diff = Math.max(...pruned.last.logits.map((v, i) => Math.abs(v - logits[i])));
  check(diff <= TOLERANCE, `pruned ${file}: logits differ from native by ${diff}`);
  report.pruned = { ratio, pruned_cells: pruned.prunedCells, max_logit_diff: diff };
  report.forward_ms = pruned.last.forwardMs;

  await setRatio(1);
  await page.waitForFunction(() => app.last.stageLayers.length === 1);
  check(await page.locator('.grid .pruned').count() === 0, 'pruned cells shown at keep ratio 1');

  // A drawn digit goes through ImageData (classify_rgba).
  const drawn = await page.evaluate(() => app.classifyPad());
  check(drawn.logits.length === 10 && drawn.logits.every(Number.isFinite), 'drawn digit: bad logits');

  // Bad input comes back as an Error with the engine's message.
  const refused = await page.evaluate(() => app.engine.classify_encoded(new Uint8Array([1, 2, 3]), 3)
    .then(() => 'resolved', (e) => `${e instanceof Error}: ${e.message}`));
  check(refused.startsWith('true:') && refused.includes('unrecognized format'), `garbage image: ${refused}`);
  const badSchedule = await page.evaluate(() => {
    try { app.engine.set_pruning('9:0.5', 'clipped', 'decay'); return 'accepted'; }
    catch (e) { return e.message; }
  });
  check(badSchedule.includes('not before the last'), `schedule past the last layer: ${badSchedule}`);

  // Without WebGPU, the page says so.
  const bare = await browser.newPage();
  await bare.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }));
  await bare.goto(url);
  await bare.waitForSelector('body[data-state="error"]', { timeout: 30_000 });
  check((await bare.textContent('#status')).includes('no WebGPU'), 'no message without WebGPU');
  report.ok = true;
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
  server.close();
  await rm(profile, { recursive: true, force: true });
}
