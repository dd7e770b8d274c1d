// How sure is "recovers X% of the gap"? For a labelled data set, the share of the accuracy and loss gap
// between a baseline (e.g. the mean plugins) and the original that a candidate closes, with a bootstrap
// interval over the samples: every sample's correct tokens and summed loss are counted once per model, then
// the samples are drawn with replacement (seeded) and the share recomputed, --resamples times.
//
// A share of a small gap is noisy: on fixtures/mlm's eval/ the FFN k=4 accuracy gap is 70 masked tokens of
// 4,431, so one token moves the accuracy share by 1.4 points, while the loss share moves with every token.
//
//   npm run build && node dist/bench/recovery.js ORIGINAL BASELINE CANDIDATE... --data PATH [--resamples 4000]
import { parseArgs } from 'node:util';
import { describeInputs } from '../src/analysis/inputs.js';
import { quantile } from '../src/bench/paired.js';
import { loadModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { type DataSet, IGNORE_LABEL, openData } from '../src/runtime/data.js';
import { openSession, run } from '../src/runtime/session.js';
import { argmax, logSumExp } from '../src/verify/metrics.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { data: { type: 'string' }, resamples: { type: 'string', default: '4000' }, batch: { type: 'string', default: '16' } },
});
if (positionals.length < 3 || !values.data) throw new Error('usage: recovery.js ORIGINAL BASELINE CANDIDATE... --data PATH');

/** Per sample: labelled positions, correct top-1 predictions, summed negative log-likelihood. */
interface Tally {
  labelled: Float64Array;
  correct: Float64Array;
  loss: Float64Array;
}

async function tally(file: string, data: DataSet): Promise<Tally> {
  const t = { labelled: new Float64Array(data.size), correct: new Float64Array(data.size), loss: new Float64Array(data.size) };
  const session = await openSession(file);
  try {
    for (const batch of data.batches(Number(values.batch))) {
      const outputs = await run(session, batch.feeds);
      const logits = outputs[session.outputNames[0]!]!;
      const labels = batch.labels!.toNumbers();
      const x = logits.readFloat32();
      const width = logits.dims[logits.dims.length - 1]!;
      const perSample = labels.length / batch.samples.length;
      for (let i = 0; i < labels.length; i++) {
        const label = labels[i]!;
        if (label === IGNORE_LABEL) continue;
        const sample = batch.samples[Math.floor(i / perSample)]!;
        t.labelled[sample]! += 1;
        t.correct[sample]! += argmax(x, i * width, width) === label ? 1 : 0;
        t.loss[sample]! += logSumExp(x, i * width, width) - x[i * width + label]!;
      }
    }
  } finally {
    await session.release();
  }
  return t;
}

/** The candidate's share of the gap, accuracy and loss, over the samples `pick` draws. */
function shares(o: Tally, b: Tally, c: Tally, pick: (i: number) => number, n: number): [number, number] {
  const sum = { o: [0, 0], b: [0, 0], c: [0, 0] };
  for (let i = 0; i < n; i++) {
    const s = pick(i);
    for (const [key, t] of [
      ['o', o],
      ['b', b],
      ['c', c],
    ] as const) {
      sum[key][0]! += t.correct[s]!;
      sum[key][1]! += t.loss[s]!;
    }
  }
  return [(sum.c[0]! - sum.b[0]!) / (sum.o[0]! - sum.b[0]!), (sum.b[1]! - sum.c[1]!) / (sum.b[1]! - sum.o[1]!)];
}

// the models are compared on the same samples: the data is read and checked once, against the original
const data = openData(values.data, describeInputs(loadModel(positionals[0]!)));
if (!data.hasLabels) throw new Error(`${values.data}: no labels`);
const [original, baseline, ...candidates] = await Promise.all(positionals.map((file) => tally(file, data)));
const n = original!.labelled.length;
const labelled = original!.labelled.reduce((a, x) => a + x, 0);
const rate = (t: Tally) =>
  `${((100 * t.correct.reduce((a, x) => a + x, 0)) / labelled).toFixed(2)}% / ${(t.loss.reduce((a, x) => a + x, 0) / labelled).toFixed(4)}`;
console.log(
  `${values.data}: ${n} samples, ${labelled} labelled positions; bootstrap over samples, ${values.resamples} resamples, 90% intervals`,
);
console.log(`original ${positionals[0]}: ${rate(original!)}; baseline ${positionals[1]}: ${rate(baseline!)}`);
for (const [i, candidate] of candidates.entries()) {
  const [accuracy, loss] = shares(original!, baseline!, candidate, (j) => j, n);
  const rng = new Rng(0, 'recovery');
  const draws: [number[], number[]] = [[], []];
  for (let r = 0; r < Number(values.resamples); r++) {
    const indices = Array.from({ length: n }, () => rng.int(n));
    const [a, l] = shares(original!, baseline!, candidate, (j) => indices[j]!, n);
    if (Number.isFinite(a)) draws[0].push(a);
    draws[1].push(l);
  }
  const interval = (d: number[]) => `${(100 * quantile(d, 0.05)).toFixed(0)}-${(100 * quantile(d, 0.95)).toFixed(0)}%`;
  console.log(
    `${positionals[i + 2]}: ${rate(candidate)}; gap recovered: accuracy ${(100 * accuracy).toFixed(0)}% (${interval(draws[0])}), loss ${(100 * loss).toFixed(0)}% (${interval(draws[1])})`,
  );
}
