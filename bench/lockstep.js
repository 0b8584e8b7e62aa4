#!/usr/bin/env node
// Kiln and ONNX Runtime interleaved run by run, in one timeline, for a host whose speed changes
// in phases of a fraction of a second to a minute (bench/RESULTS.md, fifteenth and sixteenth
// sessions): separate processes one after the other compare phases as much as engines.
//   node bench/lockstep.js MODEL [--threads N] [--iters I] [--runs R] [--opt all|disabled]
//                          [--gap-ms MS] [--lockstep BUILD/lockstep] [--ort-dir DIR]
//                          [--lockstep-b OTHER_BUILD/lockstep]
// Each iteration: a floating-point throughput probe (in the Kiln process), then R runs of each
// engine, the order alternating between iterations, with a pause of --gap-ms between engines
// (default 100 with threads, 0 without: ORT's pool spins ~50 ms after its last run and would take
// a core from the engine after it). Prints p50/p99 of all runs of each engine
// and their ratio, the median of the per-iteration ratios of medians, and the same split at 1.25
// times the fastest probe (fast and slow phases), each with the medians by run position in a turn.
// --lockstep-b adds a second Kiln build (an A/B of two library versions against the same ORT
// timeline; all six turn orders rotate) and prints its figures and its ratio to the first.
// Kiln's side is bench/lockstep.c; ORT's latency
// is the wall time around `await session.run` (as in ortbench.js), Kiln's the time around
// kiln_session_run. Inputs: floats uniform in [0, 1), integers 0/1, symbolic dims 1 (128 for the
// second, a sequence length), as bench/lockstep.c fills them.
'use strict';
const path = require('path');
const os = require('os');
const { spawn } = require('child_process');
const readline = require('readline');

const o = { threads: 1, iters: 40, runs: 5, opt: 'all', gap: null,
            lockstep: path.join(__dirname, '..', 'build', 'lockstep'), lockstepB: null,
            ortDir: process.env.ORT_DIR || path.join(os.homedir(), '.cache', 'kiln-ort') };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--threads') o.threads = +args[++i];
  else if (a === '--iters') o.iters = +args[++i];
  else if (a === '--runs') o.runs = +args[++i];
  else if (a === '--opt') o.opt = args[++i];
  else if (a === '--gap-ms') o.gap = +args[++i];
  else if (a === '--lockstep') o.lockstep = args[++i];
  else if (a === '--lockstep-b') o.lockstepB = args[++i];
  else if (a === '--ort-dir') o.ortDir = args[++i];
  else o.model = a;
}
if (!o.model) { console.error('usage: node bench/lockstep.js MODEL [--threads N] [--iters I] [--runs R]'); process.exit(2); }
const ort = require(path.join(o.ortDir, 'node_modules', 'onnxruntime-node'));

const TYPED = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array };

function feedsFor(sess) {
  const feeds = {};
  let seed = 1234;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  for (const m of sess.inputMetadata) {
    const shape = m.shape.map((d, i) => (typeof d === 'number' && d > 0 ? d : (i === 1 ? 128 : 1)));
    const T = TYPED[m.type];
    if (!T) throw new Error(`input ${m.name}: type ${m.type} not handled`);
    const n = shape.reduce((x, y) => x * y, 1);
    const data = new T(n);
    for (let j = 0; j < n; j++) {
      if (m.type === 'float32') data[j] = rnd();
      else if (m.type === 'int64') data[j] = BigInt(j % 2);
      else data[j] = j % 2;
    }
    feeds[m.name] = new ort.Tensor(m.type, data, shape);
  }
  return feeds;
}

const median = (v) => { const s = v.slice().sort((x, y) => x - y); const n = s.length;
  return n ? (n % 2 ? s[(n - 1) / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2])) : NaN; };
const pct = (v, p) => { const s = v.slice().sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]; };

// A Kiln process (bench/lockstep.c) and a function that sends it one command and reads its line.
function kilnProcess(bin) {
  const proc = spawn(bin, [o.model, String(o.threads)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  const ask = async (cmd) => { proc.stdin.write(cmd + '\n'); const r = await lines.next();
    if (r.done) throw new Error(`${bin}: lockstep process ended`); return r.value.split(' ').map(Number); };
  return { ask, quit: () => proc.stdin.write('quit\n') };
}

async function main() {
  const sess = await ort.InferenceSession.create(o.model, {
    executionProviders: ['cpu'], intraOpNumThreads: o.threads, interOpNumThreads: 1,
    graphOptimizationLevel: o.opt, executionMode: 'sequential' });
  const feeds = feedsFor(sess);
  const kiln = kilnProcess(o.lockstep), kilnB = o.lockstepB ? kilnProcess(o.lockstepB) : null;
  const ortRuns = async (n) => { const t = [];
    for (let i = 0; i < n; i++) { const a = process.hrtime.bigint(); await sess.run(feeds);
      t.push(Number(process.hrtime.bigint() - a) / 1e3); } return t; };

  // With threads, each engine's pool spins a while after its runs and would take a core from the
  // other: ORT's by default for ~50 ms (its threads used ~1.1 CPUs for 45-50 ms after SqueezeNet
  // at 2 threads, bench/ort_spin.js, bench/RESULTS.md, seventeenth session), Kiln's for 50 us. A
  // pause of 20 ms left Kiln's first runs after ORT's turn competing with ORT's spin; 100 ms
  // outlasts it.
  const gap = o.gap !== null ? o.gap : (o.threads > 1 ? 100 : 0);
  const pause = () => (gap > 0 ? new Promise((res) => setTimeout(res, gap)) : Promise.resolve());
  await kiln.ask('run 5'); if (kilnB) await kilnB.ask('run 5'); await ortRuns(5); // warm-up
  // Turn orders: Kiln and ORT alternate first; with a second Kiln all six orders of the three.
  const orders = kilnB ? [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0], [0, 2, 1], [2, 0, 1]]
                       : [[0, 1], [1, 0]];
  const rows = [];
  for (let it = 0; it < o.iters; it++) {
    const row = { p: (await kiln.ask('probe'))[0] };
    for (const e of orders[it % orders.length]) {
      if (e === 0) row.k = await kiln.ask(`run ${o.runs}`);
      else if (e === 1) row.r = await ortRuns(o.runs);
      else row.b = await kilnB.ask(`run ${o.runs}`);
      await pause();
    }
    rows.push(row);
  }
  kiln.quit();
  if (kilnB) kilnB.quit();
  const cut = 1.25 * Math.min(...rows.map((x) => x.p));
  const f = (x) => (x / 1000).toFixed(3);
  console.log(`lockstep ${path.basename(o.model)} threads=${o.threads} opt=${o.opt} iters=${o.iters} runs=${o.runs} (ms)`);
  for (const [name, sel] of [['all', () => true], ['fast', (x) => x.p < cut], ['slow', (x) => x.p >= cut]]) {
    const s = rows.filter(sel);
    if (!s.length) continue;
    const K = s.flatMap((x) => x.k), R = s.flatMap((x) => x.r);
    const ratio = median(s.map((x) => median(x.k) / median(x.r)));
    console.log(`${name.padEnd(4)} n=${String(s.length).padStart(3)}  kiln p50 ${f(pct(K, 50))} p99 ${f(pct(K, 99))} min ${f(Math.min(...K))}` +
      `  ort p50 ${f(pct(R, 50))} p99 ${f(pct(R, 99))} min ${f(Math.min(...R))}` +
      `  p50 ratio ${(pct(K, 50) / pct(R, 50)).toFixed(3)}  median per-iteration ratio ${ratio.toFixed(3)}`);
    // Medians by position in a turn: the first runs after the other engine's turn pay for
    // caches, clocks and thread placement.
    const pos = (get) => [...Array(o.runs).keys()].map((i) => f(median(s.map((x) => get(x)[i])))).join(' ');
    console.log(`     by position  kiln ${pos((x) => x.k)}  ort ${pos((x) => x.r)}` +
                (kilnB ? `  kiln-b ${pos((x) => x.b)}` : ''));
    if (kilnB) {
      const B = s.flatMap((x) => x.b);
      console.log(`     kiln-b p50 ${f(pct(B, 50))} p99 ${f(pct(B, 99))} min ${f(Math.min(...B))}` +
        `  b/kiln p50 ${(pct(B, 50) / pct(K, 50)).toFixed(3)}  b/ort p50 ${(pct(B, 50) / pct(R, 50)).toFixed(3)}` +
        `  median per-iteration b/kiln ${median(s.map((x) => median(x.b) / median(x.k))).toFixed(3)}`);
    }
  }
}
main().catch((e) => { console.error('lockstep:', e && e.stack || e); process.exit(1); });
