// Reference face descriptors computed by the ORIGINAL implementation: face-api 1.7.15's FaceRecognitionNet on
// tfjs 4.22.0 under node (no native binary: the pure-JS "cpu" backend, cross-checked with the "wasm" backend).
//
// Usage (from tools/face_reference, after `npm ci`):
//   node compute_reference.mjs [--fixtures ../../tests/fixtures/face_descriptor]
// Reads <fixtures>/inputs.json and its 150x150 RGB PNGs (written by make_inputs.py), feeds each one as an int32
// [150,150,3] tensor to FaceRecognitionNet.computeFaceDescriptor (150x150 input: no tfjs resize) and writes
// <fixtures>/descriptors.json. The model files are the ones inside the pinned npm package (sha256 recorded).
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { decodePng, sha256 } from './png.mjs';

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
// face-api's documented node entry point that needs no native tfjs-node binary (tfjs + wasm backend from npm).
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { tf } = faceapi;

const args = process.argv.slice(2);
const fixturesArg = args.indexOf('--fixtures');
const fixtures = resolve(fixturesArg >= 0 ? args[fixturesArg + 1] : join(here, '../../tests/fixtures/face_descriptor'));
const modelDir = join(dirname(require.resolve('@vladmandic/face-api/package.json')), 'model');
const BACKENDS = ['cpu', 'wasm'];
const REFERENCE_BACKEND = 'cpu';

async function main() {
  const listing = JSON.parse(readFileSync(join(fixtures, 'inputs.json'), 'utf8'));
  const inputs = listing.inputs.map(({ name, file }) => {
    const png = readFileSync(join(fixtures, file));
    const img = decodePng(png, file);
    if (img.width !== 150 || img.height !== 150) throw new Error(`${file}: expected 150x150, got ${img.width}x${img.height}`);
    return { name, file, png_sha256: sha256(png), pixels_sha256: sha256(img.pixels), pixels: img.pixels };
  });
  const results = {};
  for (const backend of BACKENDS) {
    if (!(await tf.setBackend(backend))) throw new Error(`tfjs backend ${backend} failed to initialise`);
    await tf.ready();
    const net = new faceapi.FaceRecognitionNet();
    await net.loadFromDisk(modelDir);
    results[backend] = [];
    for (const inp of inputs) {
      const x = tf.tensor3d(Int32Array.from(inp.pixels), [150, 150, 3], 'int32');
      const d = await net.computeFaceDescriptor(x);
      x.dispose();
      results[backend].push(Array.from(d));
    }
    net.dispose();
  }
  let maxDiff = 0;
  results[BACKENDS[0]].forEach((d, i) => d.forEach((v, j) => { maxDiff = Math.max(maxDiff, Math.abs(v - results[BACKENDS[1]][i][j])); }));
  const out = {
    generator: 'tools/face_reference/compute_reference.mjs',
    face_api_version: faceapi.version,
    tfjs_version: tf.version_core,
    node_version: process.version,
    reference_backend: REFERENCE_BACKEND,
    backends: BACKENDS,
    max_abs_diff_between_backends: maxDiff,
    model_files: Object.fromEntries(['face_recognition_model-weights_manifest.json', 'face_recognition_model.bin']
      .map((f) => [f, sha256(readFileSync(join(modelDir, f)))])),
    input_convention: 'PNG decoded to uint8 HWC RGB, fed as an int32 [150,150,3] tensor (no resize); port input = pixels / 255',
    inputs: inputs.map((inp, i) => ({
      name: inp.name,
      file: inp.file,
      png_sha256: inp.png_sha256,
      pixels_sha256: inp.pixels_sha256,
      descriptor: results[REFERENCE_BACKEND][i],
      descriptors_by_backend: Object.fromEntries(BACKENDS.map((b) => [b, results[b][i]])),
    })),
  };
  const target = join(fixtures, 'descriptors.json');
  writeFileSync(`${target}.tmp`, `${JSON.stringify(out, null, 1)}\n`);
  renameSync(`${target}.tmp`, target);
  console.log(`wrote ${target}: ${inputs.length} descriptors, face-api ${out.face_api_version}, tfjs ${out.tfjs_version}, `
    + `max |cpu - wasm| = ${maxDiff.toExponential(3)}`);
}

main().catch((err) => { console.error(err); process.exit(1); });
