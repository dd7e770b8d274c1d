// What skipping the pad and crop at run time would cost (not a test): the plugin pass pads the stream to a
// multiple of k and crops it back around every compressed block; with a dynamic length both copy the
// stream even when it is a multiple already (a zero-length Pad, a full-range Slice). This times, on a
// stream [batch, seq, d], 12 blocks of
//   none     x -> Add(x, 1) -> Mul(., 0.5)                                   (no plumbing)
//   pad      x -> Slice(Add(Pad(x), 1)) -> Mul(., 0.5)                       (what the pass writes)
//   branch   the Pad and the Slice each behind If(seq % k == 0): the then-branch passes the stream
//            through an Identity (ONNX Runtime refuses a branch that returns an outer value directly)
// in one process, runs interleaved and rotated, median ms per variant.
//
//   npm run build && node dist/bench/pad-branch.js [--batch 8] [--seq 256] [--hidden 768] [--k 4] [--runs 31]
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { median } from '../src/bench/latency.js';
import { type GraphBuilder, ModelBuilder } from '../src/ir/builder.js';
import type { Value } from '../src/ir/graph.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { encodeModel } from '../src/onnx/file.js';
import { openSession, prepareFeeds, runPrepared } from '../src/runtime/session.js';

const VARIANTS = ['none', 'pad', 'branch'] as const;
type Variant = (typeof VARIANTS)[number];
const BLOCKS = 12;

function build(variant: Variant, d: number, k: number): Uint8Array {
  const b = new ModelBuilder(17);
  const stream = (name: string) => tensorType(DataType.FLOAT, ['batch', name, d]);
  let x = b.input('x', stream('seq'));
  const length = b.op.Slice(b.op.Shape(x), b.int64s('start', [1]), b.int64s('end', [2]), b.int64s('axes', [0]));
  const ratio = b.int64s('k', [k]);
  const amount = b.op.Mod(b.op.Sub(ratio, b.op.Mod(length, ratio)), ratio);
  const pads = b.op.Concat(b.int64s('zeros', [0, 0, 0, 0]), amount, b.int64s('zero', [0]), { axis: 0 });
  const aligned = b.op.Equal(b.op.Squeeze(amount, b.int64s('axes', [0])), b.int64s('none', [0], []));
  const pad = (g: GraphBuilder, v: Value) => g.op.Pad(v, pads, b.scalar('fill', 0), { mode: 'constant' });
  const crop = (g: GraphBuilder, v: Value) => g.op.Slice(v, b.int64s('start', [0]), length, b.int64s('axes', [1]));
  /** If(aligned, Identity(v), otherwise(v)) */
  const branch = (v: Value, otherwise: (g: GraphBuilder, v: Value) => Value, name: string) => {
    const then = b.subgraph(`then_${name}`);
    then.output(then.op.Identity(v), undefined, stream(name));
    const other = b.subgraph(`else_${name}`);
    other.output(otherwise(other, v), undefined, stream(name));
    const out = b.node('If', [aligned], { then_branch: then.graph, else_branch: other.graph }).outputs[0]!;
    out.type = stream(name);
    b.graph.valueInfos.push(out);
    return out;
  };
  for (let i = 0; i < BLOCKS; i++) {
    let y: Value;
    if (variant === 'none') y = b.op.Add(x, b.scalar('one', 1));
    else if (variant === 'pad') y = crop(b, b.op.Add(pad(b, x), b.scalar('one', 1)));
    else y = branch(b.op.Add(branch(x, pad, 'padded'), b.scalar('one', 1)), crop, 'seq');
    x = b.op.Mul(y, b.scalar('half', 0.5));
  }
  b.output(x, 'y', stream('seq'));
  return encodeModel(b.model);
}

async function main(): Promise<void> {
  const args = await yargs(hideBin(process.argv))
    .option('batch', { type: 'number', default: 8 })
    .option('seq', { type: 'number', default: 256 })
    .option('hidden', { type: 'number', default: 768 })
    .option('k', { type: 'number', default: 4 })
    .option('runs', { type: 'number', default: 31 })
    .option('threads', { type: 'number' })
    .strict()
    .parseAsync();
  const sessions = [];
  for (const v of VARIANTS) sessions.push(await openSession(build(v, args.hidden, args.k), { spinning: false, threads: args.threads }));
  const size = args.batch * args.seq * args.hidden;
  const x = Tensor.fromArray(
    'x',
    DataType.FLOAT,
    [args.batch, args.seq, args.hidden],
    Float32Array.from({ length: size }, (_, i) => (i % 97) / 97),
  );
  const feeds = prepareFeeds({ x });
  const times: number[][] = VARIANTS.map(() => []);
  for (let r = -2; r < args.runs; r++) {
    for (let i = 0; i < VARIANTS.length; i++) {
      const v = (i + Math.max(r, 0)) % VARIANTS.length;
      const start = process.hrtime.bigint();
      await runPrepared(sessions[v]!, feeds);
      if (r >= 0) times[v]!.push(Number(process.hrtime.bigint() - start) / 1e6);
    }
  }
  for (const s of sessions) await s.release();
  const base = median(times[0]!);
  console.log(
    `[${args.batch}, ${args.seq}, ${args.hidden}], k ${args.k} (seq % k = ${args.seq % args.k}), ${BLOCKS} blocks, ${args.runs} runs`,
  );
  console.log('| variant | median ms | over none, per block ms |');
  console.log('|---|---:|---:|');
  VARIANTS.forEach((v, i) => {
    const ms = median(times[i]!);
    console.log(`| ${v} | ${ms.toFixed(1)} | ${((ms - base) / BLOCKS).toFixed(2)} |`);
  });
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
