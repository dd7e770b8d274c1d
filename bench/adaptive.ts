// A bursty workload served by one switchable model under three policies: always k=1, always k=4, and
// latencyBudget. Arrivals are simulated on a virtual clock (bursts, then quiet gaps, seeded); every
// request really runs in ONNX Runtime and its measured service time advances the clock, so queueing
// comes from real latencies. Reports p50/p95 end-to-end latency and the share served uncompressed.
//   node dist/bench/adaptive.js --model SWITCHABLE.onnx [--requests 120] [--batch 1] [--seq 128] [--budget MS]
import { parseArgs } from 'node:util';
import { median, percentile, timePaired } from '../src/bench/paired.js';
import { loadModel } from '../src/onnx/file.js';
import { Rng } from '../src/random.js';
import { AdaptiveSession, fixed, latencyBudget, type Policy } from '../src/runtime/adaptive.js';
import { describeInputs, generateFeeds } from '../src/runtime/feeds.js';

interface Served {
  arrivalMs: number;
  latencyMs: number;
  ratio: number;
}

/** Bursts of 8-16 requests arriving faster than the model serves them, separated by quiet gaps. */
function burstyArrivals(count: number, serviceMs: number, seed: number): number[] {
  const rng = new Rng(seed);
  const times: number[] = [];
  let t = 0;
  while (times.length < count) {
    const burst = 8 + Math.floor(rng.next() * 9);
    for (let i = 0; i < burst && times.length < count; i++) {
      t += rng.next() * serviceMs * 0.5;
      times.push(t);
    }
    t += serviceMs * (10 + rng.next() * 20);
  }
  return times;
}

async function serve(
  session: AdaptiveSession,
  policy: Policy,
  arrivals: number[],
  feeds: Parameters<AdaptiveSession['run']>[0],
): Promise<Served[]> {
  session.setPolicy(policy);
  const served: Served[] = [];
  let clock = 0;
  for (let i = 0; i < arrivals.length; i++) {
    const start = Math.max(clock, arrivals[i]);
    const queued = arrivals.filter((a, j) => j >= i && a <= start).length;
    const result = await session.run(feeds, { pending: queued, waitedMs: start - arrivals[i] });
    clock = start + result.ms;
    served.push({ arrivalMs: arrivals[i], latencyMs: clock - arrivals[i], ratio: result.ratio });
  }
  return served;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      requests: { type: 'string', default: '120' },
      batch: { type: 'string', default: '1' },
      seq: { type: 'string', default: '128' },
      budget: { type: 'string' },
      seed: { type: 'string', default: '1' },
      threads: { type: 'string' },
    },
  });
  if (!values.model) throw new Error('--model SWITCHABLE.onnx is required (vcompile MODEL --switchable --plugin ... -o SWITCHABLE.onnx)');
  const model = loadModel(values.model);
  const feeds = generateFeeds(
    describeInputs(model).filter((s) => s.name !== 'vcompile_ratio'),
    { batch: Number(values.batch), seq: Number(values.seq) },
    0,
  );
  const session = await AdaptiveSession.create(model, fixed(1), { threads: values.threads ? Number(values.threads) : undefined });
  // service time per ratio: 5 paired rounds (order rotated each round) after one warm-up call each
  const ratios = session.info.ratios;
  const timing = await timePaired(ratios.length, (i) => session.runAt(ratios[i], feeds).then(() => undefined), { warmup: 1, rounds: 5 });
  const service: Record<number, number> = Object.fromEntries(ratios.map((r, i) => [r, median(timing.entries[i].wallMs)]));
  const budget = values.budget ? Number(values.budget) : 2 * service[1];
  const arrivals = burstyArrivals(Number(values.requests), service[1], Number(values.seed));
  const top = Math.max(...session.info.ratios);
  const learning = latencyBudget(budget);
  session.setPolicy(learning);
  await session.warmUp(feeds);
  const rows = [];
  for (const policy of [fixed(1), fixed(top), learning]) {
    const served = await serve(session, policy, arrivals, feeds);
    const latencies = served.map((s) => s.latencyMs);
    rows.push({
      policy: policy.name,
      p50Ms: median(latencies),
      p95Ms: percentile(latencies, 0.95),
      uncompressedShare: served.filter((s) => s.ratio === 1).length / served.length,
      meanRatio: served.reduce((a, s) => a + s.ratio, 0) / served.length,
    });
  }
  await session.release();
  const fmt = (n: number) => n.toFixed(1);
  console.log(
    `service time per call (median of 5 paired rounds): ${ratios
      .map(
        (r, i) =>
          `k=${r} ${fmt(service[r])} ms (${timing.entries[i].speedup.median.toFixed(2)}x over k=${ratios[0]}, IQR ${timing.entries[i].speedup.iqr.map((q) => q.toFixed(2)).join('-')})`,
      )
      .join(', ')}`,
  );
  console.log(
    `${arrivals.length} requests in bursts, batch ${values.batch}, seq ${values.seq}, budget ${fmt(budget)} ms (end to end, waiting included)`,
  );
  console.log('| policy | p50 ms | p95 ms | served uncompressed | mean k |');
  console.log('|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.policy} | ${fmt(r.p50Ms)} | ${fmt(r.p95Ms)} | ${(100 * r.uncompressedShare).toFixed(0)}% | ${r.meanRatio.toFixed(2)} |`,
    );
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
