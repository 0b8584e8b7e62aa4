#!/usr/bin/env node
// How long ONNX Runtime's intra-op pool keeps its threads busy after a run: runs MODEL a few
// times at --threads N, then samples the process's CPU time (all threads, /proc/self/task/*/
// schedstat) every 5 ms for 60 ms. Linux only. Used to size bench/lockstep.js's --gap-ms.
//   node bench/ort_spin.js MODEL.onnx [--threads 2]
'use strict';
const path = require('path');
const os = require('os');
const fs = require('fs');

const args = process.argv.slice(2);
let model = null, threads = 2;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--threads') threads = +args[++i];
  else model = args[i];
}
if (!model) { console.error('usage: node bench/ort_spin.js MODEL.onnx [--threads N]'); process.exit(2); }
const ortDir = process.env.ORT_DIR || path.join(os.homedir(), '.cache', 'kiln-ort');
const ort = require(path.join(ortDir, 'node_modules', 'onnxruntime-node'));

function cpuNs() { // run time of every thread of this process, by thread id
  const out = {};
  for (const t of fs.readdirSync('/proc/self/task')) {
    try { out[t] = +fs.readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ')[0]; } catch (e) { /* exited */ }
  }
  return out;
}

(async () => {
  const s = await ort.InferenceSession.create(model, { intraOpNumThreads: threads, interOpNumThreads: 1,
                                                      executionMode: 'sequential' });
  const feeds = {};
  for (const m of s.inputMetadata) {
    const shape = m.shape.map((d, i) => (typeof d === 'number' && d > 0 ? d : (i === 1 ? 128 : 1)));
    const n = shape.reduce((a, b) => a * b, 1);
    feeds[m.name] = m.type === 'int64' ? new ort.Tensor('int64', new BigInt64Array(n), shape)
                                       : new ort.Tensor('float32', new Float32Array(n).fill(0.5), shape);
  }
  for (let i = 0; i < 10; i++) await s.run(feeds);
  console.log(`ms after the last run : CPU ms used by the process in the preceding ~5 ms (threads=${threads})`);
  for (let rep = 0; rep < 3; rep++) {
    for (let i = 0; i < 5; i++) await s.run(feeds);
    let prev = cpuNs();
    const t0 = process.hrtime.bigint(), row = [];
    for (let k = 0; k < 12; k++) {
      await new Promise((r) => setTimeout(r, 5));
      const cur = cpuNs();
      let d = 0;
      for (const t in cur) d += cur[t] - (prev[t] || 0);
      prev = cur;
      row.push(`${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(0)}:${(d / 1e6).toFixed(2)}`);
    }
    console.log(row.join(' '));
  }
})().catch((e) => { console.error('ort_spin:', e && e.stack || e); process.exit(1); });
