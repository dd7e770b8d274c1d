// Property: a random chain of convertible ops, written in the form of a random old opset (7-16, all of
// which ONNX Runtime runs), upgraded to a random newer opset (up to 21), passes the IR verifier and gives
// the same outputs on ONNX Runtime. The chain keeps a rank-4 float tensor whose shape it tracks, so every
// op can be given valid attributes; each op is written the way its opset spells it (attributes before
// they became inputs, legacy Upsample and Resize, BatchNormalization's spatial, Dropout's ratio).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { upgradeOpset } from '../passes/opset/index.js';
import { float, type ModelBuilder } from '../src/ir/builder.js';
import type { Value } from '../src/ir/graph.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { assertValid } from '../src/ir/verify.js';
import { encodeModel } from '../src/onnx/file.js';
import { floats, modelAt, runModel } from './helpers/opset.js';

interface Draw {
  kind: number;
  a: number;
  b: number;
  c: number;
}

interface Chain {
  opset: number;
  up: number;
  seed: number;
  steps: Draw[];
}

const draw = fc.record({ kind: fc.nat(), a: fc.nat(1000), b: fc.nat(1000), c: fc.nat(1000) });
const chain = fc.record({
  opset: fc.integer({ min: 7, max: 16 }),
  up: fc.integer({ min: 1, max: 14 }),
  seed: fc.integer({ min: 1, max: 1000 }),
  steps: fc.array(draw, { minLength: 1, maxLength: 5 }),
});

type Op = (b: ModelBuilder, x: Value, dims: number[], o: number, d: Draw) => { y: Value; dims: number[] } | undefined;

const int64s = (b: ModelBuilder, name: string, values: number[]) => b.int64s(name, values);

const OPS: Op[] = [
  // Softmax, LogSoftmax, Hardmax along any axis (negative ones from 11)
  (b, x, dims, o, d) => {
    const op = ['Softmax', 'LogSoftmax', 'Hardmax'][d.a % 3];
    const axis = (d.b % 4) - (o >= 11 && d.c % 2 ? 4 : 0);
    return { y: b.op[op](x, d.c % 5 === 0 ? {} : { axis }), dims };
  },
  // Clip with one or two bounds
  (b, x, dims, o, d) => {
    const min = -(d.a % 5) / 2;
    const max = (d.b % 5) / 2 + 0.5;
    const withMin = d.c % 3 !== 0;
    if (o < 11) return { y: b.op.Clip(x, withMin ? { min: float(min), max: float(max) } : { max: float(max) }), dims };
    return { y: b.op.Clip(x, withMin ? b.scalar('min', min) : null, b.scalar('max', max)), dims };
  },
  // Pad the last two axes with a constant
  (b, x, dims, o, d) => {
    const pads = [0, 0, d.a % 2, d.b % 2, 0, 0, (d.a >> 1) % 2, (d.b >> 1) % 2];
    const value = (d.c % 3) - 1;
    const y = o < 11 ? b.op.Pad(x, { pads, value: float(value) }) : b.op.Pad(x, int64s(b, 'pads', pads), b.scalar('value', value));
    return { y, dims: dims.map((n, i) => n + pads[i] + pads[i + 4]) };
  },
  // Slice one axis
  (b, x, dims, o, d) => {
    const axis = d.a % 4;
    const start = d.b % dims[axis];
    const end = start + 1 + (d.c % (dims[axis] - start));
    const y =
      o < 10
        ? b.op.Slice(x, { starts: [start], ends: [end], axes: [axis] })
        : b.op.Slice(x, int64s(b, 'starts', [start]), int64s(b, 'ends', [end]), int64s(b, 'axes', [axis]));
    return { y, dims: dims.map((n, i) => (i === axis ? end - start : n)) };
  },
  // A Reduce op over one axis, keeping it
  (b, x, dims, o, d) => {
    const op = ['ReduceSum', 'ReduceMean', 'ReduceMax', 'ReduceMin', 'ReduceL2', 'ReduceSumSquare', 'ReduceL1', 'ReduceLogSumExp'][d.a % 8];
    const axis = d.b % 4;
    const y = op === 'ReduceSum' && o >= 13 ? b.op.ReduceSum(x, int64s(b, 'axes', [axis])) : b.op[op](x, { axes: [axis] });
    return { y, dims: dims.map((n, i) => (i === axis ? 1 : n)) };
  },
  // Unsqueeze a new axis, then Squeeze it again
  (b, x, dims, o, d) => {
    const axis = d.a % 5;
    const u = o < 13 ? b.op.Unsqueeze(x, { axes: [axis] }) : b.op.Unsqueeze(x, int64s(b, 'axes', [axis]));
    const y = o < 13 ? b.op.Squeeze(u, { axes: [axis] }) : b.op.Squeeze(u, int64s(b, 'axes', [axis]));
    return { y, dims };
  },
  // Split an axis in two and concatenate the parts the other way round
  (b, x, dims, o, d) => {
    const axis = d.a % 4;
    const n = dims[axis];
    if (n < 2) return undefined;
    const even = d.c % 2 === 1 && n % 2 === 0;
    const first = even ? n / 2 : 1 + (d.b % (n - 1));
    const attrs = even ? { axis } : o < 13 ? { axis, split: [first, n - first] } : { axis };
    const inputs = !even && o >= 13 ? [x, int64s(b, 'split', [first, n - first])] : [x];
    const [p, q] = b.multi('Split', inputs, attrs, 2);
    return { y: b.op.Concat(q, p, { axis }), dims };
  },
  // TopK along an axis
  (b, x, dims, o, d) => {
    const axis = d.a % 4;
    const k = 1 + (d.b % dims[axis]);
    const [values] = o < 10 ? b.multi('TopK', [x], { k, axis }, 2) : b.multi('TopK', [x, int64s(b, 'k', [k])], { axis }, 2);
    return { y: values, dims: dims.map((n, i) => (i === axis ? k : n)) };
  },
  // Upsample (7-9) or Resize-10 (enlarging or shrinking) on the last two axes
  (b, x, dims, o, d) => {
    if (o > 10 || dims[2] * dims[3] > 48) return undefined;
    const mode = d.a % 2 ? 'linear' : 'nearest';
    const choices = o === 10 && d.c % 2 ? [1, 0.5, 0.75] : [1, 1.5, 2];
    const scales = [1, 1, choices[d.b % 3], choices[(d.b >> 2) % 3]];
    if (o === 10 && scales.slice(2).some((s, i) => Math.floor(dims[2 + i] * s) < 1)) return undefined;
    const y =
      o === 7 || o === 8
        ? b.op.Upsample(x, { scales: float(scales), mode })
        : b.op[o === 10 ? 'Resize' : 'Upsample'](x, b.floats('scales', [4], scales), { mode });
    return { y, dims: dims.map((n, i) => Math.floor(n * scales[i])) };
  },
  // Dropout in inference, with its old ratio attribute
  (b, x, dims, o, d) => ({ y: b.op.Dropout(x, o < 12 ? { ratio: float((d.a % 9) / 10) } : {}), dims }),
  // BatchNormalization, per channel (or per activation before 9)
  (b, x, dims, o, d) => {
    const perActivation = o < 9 && d.c % 2 === 1;
    const shape = perActivation ? dims.slice(1) : [dims[1]];
    const size = shape.reduce((p, n) => p * n, 1);
    const stat = (name: string, offset: number, positive: boolean) =>
      b.floats(
        name,
        shape,
        Array.from({ length: size }, (_, i) => (positive ? 0.5 : -1) + (((i + offset) * 37 + d.a) % 11) / 7),
      );
    const attrs = o < 9 ? { spatial: perActivation ? 0 : 1, epsilon: float(1e-3) } : { epsilon: float(1e-3) };
    return {
      y: b.op.BatchNormalization(x, stat('scale', 1, true), stat('bias', 2, false), stat('mean', 3, false), stat('var', 4, true), attrs),
      dims,
    };
  },
  // Transpose
  (b, x, dims, _o, d) => {
    const perms = [
      [0, 1, 3, 2],
      [0, 2, 1, 3],
      [1, 0, 2, 3],
      [0, 3, 2, 1],
    ];
    const perm = perms[d.a % perms.length];
    return { y: b.op.Transpose(x, { perm }), dims: perm.map((p) => dims[p]) };
  },
  // Element-wise with a broadcast constant, or unary
  (b, x, dims, _o, d) => {
    const op = [
      'Add',
      'Mul',
      'Sub',
      'Div',
      'PRelu',
      'Relu',
      'Sigmoid',
      'Tanh',
      'Abs',
      'LeakyRelu',
      'Elu',
      'Selu',
      'HardSigmoid',
      'Softsign',
    ][d.a % 14];
    if (['Relu', 'Sigmoid', 'Tanh', 'Abs', 'LeakyRelu', 'Elu', 'Selu', 'HardSigmoid', 'Softsign'].includes(op))
      return { y: b.op[op](x), dims };
    const perChannel = op === 'PRelu' || d.b % 2 === 1;
    const shape = perChannel ? [dims[1], 1, 1] : [dims[3]];
    const n = shape[0];
    return {
      y: b.op[op](
        x,
        b.floats(
          'k',
          shape,
          Array.from({ length: n }, (_, i) => 0.25 + ((i * 5 + d.c) % 7) / 4),
        ),
      ),
      dims,
    };
  },
  // LRN, Flatten and Reshape back, or a Cast round trip through int32
  (b, x, dims, _o, d) => {
    if (d.a % 3 === 0) return { y: b.op.LRN(x, { size: 1 + 2 * (d.b % 2), alpha: float(1e-3), beta: float(0.75), bias: float(1) }), dims };
    if (d.a % 3 === 1) return { y: b.op.Reshape(b.op.Flatten(x, { axis: d.b % 4 }), int64s(b, 'shape', dims)), dims };
    return { y: b.op.Cast(b.op.Cast(x, { to: DataType.INT32 }), { to: DataType.FLOAT }), dims };
  },
];

function build(c: Chain) {
  const start = [2, 3, 4, 5];
  let dims = start;
  const model = modelAt(c.opset, (b) => {
    let x = b.input('x', tensorType(DataType.FLOAT, start));
    for (const step of c.steps) {
      const out = OPS[step.kind % OPS.length](b, x, dims, c.opset, step);
      if (!out) continue;
      x = out.y;
      dims = out.dims;
    }
    b.output(b.op.Identity(x), 'y', tensorType(DataType.FLOAT, dims));
  });
  return model;
}

/** Relative difference, NaN equal to NaN. */
function close(a: Float32Array, b: Float32Array): string | undefined {
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) && Number.isNaN(b[i])) continue;
    if (a[i] === b[i]) continue;
    if (!(Math.abs(a[i] - b[i]) <= 1e-5 * Math.max(1, Math.abs(a[i])))) return `[${i}] ${a[i]} vs ${b[i]}`;
  }
  return undefined;
}

describe('opset upgrade: random chains of convertible ops', () => {
  it('give the same outputs on ONNX Runtime before and after', { timeout: 60_000 }, async () => {
    const seen = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(chain, async (c) => {
        const target = Math.min(21, c.opset + c.up);
        const model = build(c);
        const x = floats('x', [2, 3, 4, 5], c.seed);
        const before = await runModel(encodeModel(model), { x });
        const report = upgradeOpset(model, target);
        assertValid(model, `upgrade ${c.opset} -> ${target}`);
        const after = await runModel(model, { x });
        expect(after.y.dims).toEqual(before.y.dims);
        expect(close(before.y.toFloat32(), after.y.toFloat32()), `opset ${c.opset} -> ${target}`).toBeUndefined();
        for (const op of Object.keys(report.converted)) seen.set(op, (seen.get(op) ?? 0) + 1);
      }),
      { numRuns: 300, seed: 20261130 },
    );
    console.log(`converted in random chains: ${[...seen].map(([op, n]) => `${op} ${n}`).join(', ')}`);
    expect([...seen.keys()]).toEqual(
      expect.arrayContaining([
        'Softmax',
        'Clip',
        'Pad',
        'Slice',
        'ReduceSum',
        'Unsqueeze',
        'Squeeze',
        'Split',
        'TopK',
        'Upsample',
        'BatchNormalization',
        'Dropout',
      ]),
    );
  });
});
