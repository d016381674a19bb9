// Reference COCO detections computed by the ORIGINAL runtime: human 3.0.4's MB3-CenterNet graph model
// (models/centernet.json + .bin of the pinned npm package) executed by tfjs 4.22.0 under node (pure-JS "cpu" backend,
// cross-checked with the "wasm" backend), with human's own pre- and post-processing reproduced step for step from
// human's src/object/centernet.ts (predict + process):
//   input: the image as a float32 [1, H, W, 3] tensor of 0..255 RGB values (human's image.process casts the pixels);
//   tf.image.resizeBilinear(input, [512, 512]) (tfjs defaults: no align_corners, no half-pixel centres);
//   model.execute(resized, 'tower_0/detections') -> [1, 100, 6] (x1, y1, x2, y2, score, class) in 512-px units;
//   tf.image.nonMaxSuppressionAsync(boxes as (y1, x1, y2, x2), scores, maxDetected 10, iouThreshold 0.4,
//   minConfidence 0.2) (human's config.object defaults); score = trunc(100 * score) / 100;
//   boxRaw = (x1 / 512, y1 / 512, x2 / 512 - x1 / 512, y2 / 512 - y1 / 512); box = trunc(boxRaw * (W, H, W, H)).
// human itself is not imported (its node bundles need tfjs-node's native binary or fetch a model by URL); the model
// is loaded from the package's files with an IO handler that reads the JSON and the raw weights.
//
// Usage (from tools/coco_reference, after `npm ci`):  node compute_reference.mjs [--fixtures DIR]
// Reads <fixtures>/inputs.json and its RGB PNGs (written by make_inputs.py); writes <fixtures>/reference.json.
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { decodePng, sha256 } from '../face_reference/png.mjs'; // the one PNG decoder of the reference tools

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const fixturesArg = args.indexOf('--fixtures');
const fixtures = resolve(fixturesArg >= 0 ? args[fixturesArg + 1] : join(here, '../../tests/fixtures/coco_detector'));
const humanDir = join(here, 'node_modules', '@vladmandic', 'human'); // the package's files, not its exports
const MODEL_JSON = join(humanDir, 'models', 'centernet.json');
const MODEL_BIN = join(humanDir, 'models', 'centernet.bin');
const BACKENDS = ['cpu', 'wasm'];
const REFERENCE_BACKEND = 'cpu';
const CONFIG = { minConfidence: 0.2, iouThreshold: 0.4, maxDetected: 10 }; // human 3.0.4 config.object defaults
const GRID = 8; // raw heat-map / size values recorded on every 8th cell of the 128 x 128 output

const humanVersion = JSON.parse(readFileSync(join(humanDir, 'package.json'), 'utf8')).version;

// tfjs IO handler reading the graph model's JSON and its one weights shard from disk (no code is evaluated).
function fileHandler(jsonPath, binPath) {
  return {
    load: async () => {
      const mj = JSON.parse(readFileSync(jsonPath, 'utf8'));
      const bin = readFileSync(binPath);
      return {
        modelTopology: mj.modelTopology,
        format: mj.format,
        generatedBy: mj.generatedBy,
        convertedBy: mj.convertedBy,
        signature: mj.signature,
        weightSpecs: mj.weightsManifest.flatMap((g) => g.weights),
        weightData: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength),
      };
    },
  };
}

async function runOne(model, inputSize, img) {
  const { width, height } = img;
  const input = tf.tensor4d(Float32Array.from(img.pixels), [1, height, width, 3], 'float32');
  const resized = tf.image.resizeBilinear(input, [inputSize, inputSize]);
  const [det, kp, wh] = model.execute(resized, ['tower_0/detections', 'tower_0/keypoints', 'tower_0/wh']);
  const detections = (await det.array())[0]; // 100 x 6
  // human's process(): NMS over the graph's 100 peaks
  const boxes = tf.tensor2d(detections.map((d) => [d[1], d[0], d[3], d[2]]));
  const scores = tf.tensor1d(detections.map((d) => d[4]));
  const nms = await tf.image.nonMaxSuppressionAsync(boxes, scores, CONFIG.maxDetected, CONFIG.iouThreshold, CONFIG.minConfidence);
  const kept = Array.from(await nms.data());
  const human = [];
  for (const id of kept) {
    const d = detections[id];
    const x = d[0] / inputSize; const y = d[1] / inputSize;
    const boxRaw = [x, y, d[2] / inputSize - x, d[3] / inputSize - y];
    human.push({
      id,
      score: Math.trunc(100 * d[4]) / 100,
      class: d[5],
      box: [Math.trunc(boxRaw[0] * width), Math.trunc(boxRaw[1] * height), Math.trunc(boxRaw[2] * width), Math.trunc(boxRaw[3] * height)],
      boxRaw,
      // the same detection in input pixels without human's truncation: (x1, y1, x2, y2)
      box_xyxy: [d[0] * width / inputSize, d[1] * height / inputSize, d[2] * width / inputSize, d[3] * height / inputSize],
      raw_score: d[4],
    });
  }
  const kpArr = (await kp.array())[0]; const whArr = (await wh.array())[0];
  const classMax = new Array(80).fill(-Infinity); let kpSum = 0;
  for (const row of kpArr) for (const cell of row) cell.forEach((v, c) => { classMax[c] = Math.max(classMax[c], v); kpSum += v; });
  let whSum = 0; for (const row of whArr) for (const cell of row) for (const v of cell) whSum += v;
  const personGrid = []; const whGrid = [];
  for (let i = 0; i < kpArr.length; i += GRID) {
    personGrid.push(kpArr[i].filter((_, j) => j % GRID === 0).map((cell) => cell[0]));
    whGrid.push(whArr[i].filter((_, j) => j % GRID === 0));
  }
  tf.dispose([input, resized, det, kp, wh, boxes, scores, nms]);
  return {
    detections, kept, human,
    keypoints: { shape: [kpArr.length, kpArr[0].length, 80], sum: kpSum, class_max: classMax, person_grid: personGrid },
    wh: { shape: [whArr.length, whArr[0].length, 4], sum: whSum, grid: whGrid },
  };
}

async function main() {
  const listing = JSON.parse(readFileSync(join(fixtures, 'inputs.json'), 'utf8'));
  const inputs = listing.inputs.map(({ name, file }) => {
    const png = readFileSync(join(fixtures, file));
    const img = decodePng(png, file);
    return { name, file, png_sha256: sha256(png), pixels_sha256: sha256(img.pixels), ...img };
  });
  const results = {};
  for (const backend of BACKENDS) {
    if (!(await tf.setBackend(backend))) throw new Error(`tfjs backend ${backend} failed to initialise`);
    await tf.ready();
    const model = await tf.loadGraphModel(fileHandler(MODEL_JSON, MODEL_BIN));
    const inputSize = parseInt(Object.values(model.modelSignature.inputs)[0].tensorShape.dim[2].size, 10);
    results[backend] = [];
    for (const img of inputs) results[backend].push(await runOne(model, inputSize, img));
    model.dispose();
  }
  let maxDet = 0; let maxHeat = 0;
  results.cpu.forEach((r, i) => {
    const w = results.wasm[i];
    r.detections.forEach((d, k) => d.forEach((v, j) => { maxDet = Math.max(maxDet, Math.abs(v - w.detections[k][j])); }));
    r.keypoints.class_max.forEach((v, c) => { maxHeat = Math.max(maxHeat, Math.abs(v - w.keypoints.class_max[c])); });
  });
  const out = {
    generator: 'tools/coco_reference/compute_reference.mjs',
    human_version: humanVersion,
    tfjs_version: tf.version_core,
    node_version: process.version,
    reference_backend: REFERENCE_BACKEND,
    backends: BACKENDS,
    max_abs_diff_between_backends: { detections: maxDet, keypoints_class_max: maxHeat },
    model_files: { 'centernet.json': sha256(readFileSync(MODEL_JSON)), 'centernet.bin': sha256(readFileSync(MODEL_BIN)) },
    config: CONFIG,
    grid_step: GRID,
    input_convention: 'PNG decoded to uint8 HWC RGB, fed as a float32 [1,H,W,3] tensor of 0..255 values, resized with '
      + 'tf.image.resizeBilinear to 512x512; port input = pixels / 255 (BCHW)',
    inputs: inputs.map((inp, i) => ({
      name: inp.name,
      file: inp.file,
      width: inp.width,
      height: inp.height,
      png_sha256: inp.png_sha256,
      pixels_sha256: inp.pixels_sha256,
      ...results[REFERENCE_BACKEND][i],
      wasm_human: results.wasm[i].human,
    })),
  };
  const target = join(fixtures, 'reference.json');
  writeFileSync(`${target}.tmp`, `${JSON.stringify(out)}\n`);
  renameSync(`${target}.tmp`, target);
  console.log(`wrote ${target}: ${inputs.length} images, human ${humanVersion}, tfjs ${out.tfjs_version}; `
    + `max |cpu - wasm| detections ${maxDet.toExponential(3)}, heat-map class max ${maxHeat.toExponential(3)}`);
  for (const r of out.inputs) {
    console.log(`${r.name}: ${r.human.map((h) => `${h.class}:${h.score}`).join(' ')}`);
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
