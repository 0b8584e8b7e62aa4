// ONNX Runtime's own profiler on one model, for comparing with `kiln bench --profile-json`:
// WARMUP + RUNS runs with enableProfiling, then endProfiling() writes PREFIX_<date>.json (the
// same Chrome trace format). bench/profile_ops.py reads both.
// usage: node bench/ort_profile.js MODEL.onnx PREFIX [--threads N] [--warmup N] [--runs N]
//        [--input NAME=d0,d1,...]   (dynamic dims; integer inputs are filled with 0/1, floats
//        uniform [0, 1), like `kiln bench`)
// env: ORT_DIR (~/.cache/kiln-ort), where onnxruntime-node is installed.
'use strict';
const path = require('path');
const ortDir = process.env.ORT_DIR || path.join(process.env.HOME, '.cache/kiln-ort');
const ort = require(path.join(ortDir, 'node_modules/onnxruntime-node'));

const TYPED = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array };

async function main() {
  const a = process.argv.slice(2);
  const o = { threads: 1, warmup: 5, runs: 30, shapes: {} };
  const rest = [];
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--threads') o.threads = parseInt(a[++i], 10);
    else if (a[i] === '--warmup') o.warmup = parseInt(a[++i], 10);
    else if (a[i] === '--runs') o.runs = parseInt(a[++i], 10);
    else if (a[i] === '--input') { const [n, d] = a[++i].split('='); o.shapes[n] = d.split(',').map(Number); }
    else rest.push(a[i]);
  }
  if (rest.length !== 2) { console.error('usage: node ort_profile.js MODEL.onnx PREFIX [...]'); process.exit(2); }
  const sess = await ort.InferenceSession.create(rest[0], {
    executionProviders: ['cpu'], intraOpNumThreads: o.threads, interOpNumThreads: 1,
    graphOptimizationLevel: 'all', executionMode: 'sequential',
    enableProfiling: true, profileFilePrefix: rest[1],
  });
  const feeds = {};
  let seed = 1234;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  for (const m of sess.inputMetadata) {
    const shape = o.shapes[m.name] || m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : 1));
    const n = shape.reduce((x, y) => x * y, 1);
    const T = TYPED[m.type];
    if (!T) throw new Error(`input ${m.name}: type ${m.type} not handled`);
    const data = new T(n);
    for (let i = 0; i < n; i++) data[i] = m.type === 'int64' ? BigInt(rnd() < 0.5 ? 0 : 1) : (m.type === 'int32' ? (rnd() < 0.5 ? 0 : 1) : rnd());
    feeds[m.name] = new ort.Tensor(m.type, data, shape);
  }
  for (let i = 0; i < o.warmup + o.runs; i++) await sess.run(feeds);
  sess.endProfiling();
  await sess.release();
}
main().catch((e) => { console.error('ERROR', (e && e.stack) || e); process.exit(1); });
