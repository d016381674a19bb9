// Reference face detections computed by the ORIGINAL implementation: face-api 1.7.15's TinyFaceDetector on
// tfjs 4.22.0 under node (no native binary: the pure-JS "cpu" backend is the reference, "wasm" a cross-check).
//
// Usage (from tools/face_reference, after `npm ci`):
//   node compute_detector_reference.mjs [--fixtures ../../tests/fixtures/tiny_face_detector]
// Reads <fixtures>/inputs.json and its RGB PNGs of assorted sizes (written by `make_inputs.py --set
// tiny_face_detector`), feeds each as an int32 [H, W, 3] tensor to
//   * TinyFaceDetector.forward(x, INPUT_SIZE): the network's raw output [1, n, n, 25] (tfjs pads the image to a
//     square at the bottom / right and resizes it with resizeBilinear), and
//   * TinyFaceDetector.locateFaces(x, TinyFaceDetectorOptions({ inputSize, scoreThreshold })): the boxes (pixels
//     of the input image, x1 y1 x2 y2) and scores after face-api's own decoding, threshold and NMS,
// and writes <fixtures>/detections.json. The model files are the ones inside the pinned npm package (sha256
// recorded). Raw outputs are written with 7 significant digits.
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { decodePng, sha256 } from './png.mjs';

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { tf } = faceapi;

const args = process.argv.slice(2);
const fixturesArg = args.indexOf('--fixtures');
const fixtures = resolve(fixturesArg >= 0 ? args[fixturesArg + 1] : join(here, '../../tests/fixtures/tiny_face_detector'));
const modelDir = join(dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');
const BACKENDS = ['cpu', 'wasm'];
const REFERENCE_BACKEND = 'cpu';
const INPUT_SIZE = 416;
const SCORE_THRESHOLD = 0.3; // below face-api's default 0.5, so that more boxes (and the NMS) are compared

const round7 = (v) => Number(v.toPrecision(7));

async function main() {
  const listing = JSON.parse(readFileSync(join(fixtures, 'inputs.json'), 'utf8'));
  const inputs = listing.inputs.map(({ name, file, source }) => {
    const png = readFileSync(join(fixtures, file));
    const img = decodePng(png, file);
    return { name, file, source, width: img.width, height: img.height, png_sha256: sha256(png), pixels_sha256: sha256(img.pixels), pixels: img.pixels };
  });
  const results = {};
  for (const backend of BACKENDS) {
    if (!(await tf.setBackend(backend))) throw new Error(`tfjs backend ${backend} failed to initialise`);
    await tf.ready();
    const net = new faceapi.TinyFaceDetector();
    await net.loadFromDisk(modelDir);
    const options = new faceapi.TinyFaceDetectorOptions({ inputSize: INPUT_SIZE, scoreThreshold: SCORE_THRESHOLD });
    results[backend] = [];
    for (const inp of inputs) {
      const x = tf.tensor3d(Int32Array.from(inp.pixels), [inp.height, inp.width, 3], 'int32');
      const raw = await net.forward(x, INPUT_SIZE);
      const rawData = Array.from(await raw.data());
      const rawShape = raw.shape;
      raw.dispose();
      const faces = await net.locateFaces(x, options);
      x.dispose();
      results[backend].push({
        raw_shape: rawShape,
        raw: rawData,
        detections: faces.map((f) => ({
          score: f.score,
          box: [f.box.x, f.box.y, f.box.x + f.box.width, f.box.y + f.box.height],
        })),
      });
    }
    net.dispose();
  }
  const [a, b] = BACKENDS.map((k) => results[k]);
  let maxRaw = 0;
  let maxBox = 0;
  let maxScore = 0;
  a.forEach((r, i) => {
    r.raw.forEach((v, j) => { maxRaw = Math.max(maxRaw, Math.abs(v - b[i].raw[j])); });
    if (r.detections.length !== b[i].detections.length) throw new Error(`${inputs[i].name}: cpu and wasm find different numbers of faces`);
    r.detections.forEach((d, j) => {
      maxScore = Math.max(maxScore, Math.abs(d.score - b[i].detections[j].score));
      d.box.forEach((v, k) => { maxBox = Math.max(maxBox, Math.abs(v - b[i].detections[j].box[k])); });
    });
  });
  const out = {
    generator: 'tools/face_reference/compute_detector_reference.mjs',
    face_api_version: faceapi.version,
    tfjs_version: tf.version_core,
    node_version: process.version,
    reference_backend: REFERENCE_BACKEND,
    backends: BACKENDS,
    input_size: INPUT_SIZE,
    score_threshold: SCORE_THRESHOLD,
    between_backends: { max_abs_raw: maxRaw, max_abs_box_px: maxBox, max_abs_score: maxScore },
    model_files: Object.fromEntries(['tiny_face_detector_model-weights_manifest.json', 'tiny_face_detector_model.bin']
      .map((f) => [f, sha256(readFileSync(join(modelDir, f)))])),
    input_convention: 'PNG decoded to uint8 HWC RGB, fed as an int32 [H,W,3] tensor; port input = pixels / 255. '
      + 'raw: TinyFaceDetector.forward(x, input_size) flattened NHWC [1, n, n, 5 anchors x (tx, ty, tw, th, objectness)]; '
      + 'detections: locateFaces boxes [x1, y1, x2, y2] in input pixels, scores, face-api order',
    inputs: inputs.map((inp, i) => ({
      name: inp.name,
      file: inp.file,
      source: inp.source,
      width: inp.width,
      height: inp.height,
      png_sha256: inp.png_sha256,
      pixels_sha256: inp.pixels_sha256,
      detections: results[REFERENCE_BACKEND][i].detections,
      detections_wasm: results.wasm[i].detections,
      raw_shape: results[REFERENCE_BACKEND][i].raw_shape,
      raw: results[REFERENCE_BACKEND][i].raw.map(round7),
    })),
  };
  const target = join(fixtures, 'detections.json');
  writeFileSync(`${target}.tmp`, `${JSON.stringify(out)}\n`);
  renameSync(`${target}.tmp`, target);
  console.log(`wrote ${target}: ${inputs.length} images, ${inputs.map((inp, i) => `${inp.name} ${a[i].detections.length}`).join(', ')} faces; `
    + `face-api ${out.face_api_version}, tfjs ${out.tfjs_version}; cpu vs wasm: raw ${maxRaw.toExponential(3)}, `
    + `box ${maxBox.toExponential(3)} px, score ${maxScore.toExponential(3)}`);
}

main().catch((err) => { console.error(err); process.exit(1); });
