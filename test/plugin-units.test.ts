// Full-length units (passes/plugin/units.ts): the graph a fitted plugin computes a block's hidden units
// with equals, under ONNX Runtime, each activation written out in float64 here, plain and gated; and the
// units are the model's own (columns of its up projection), refused when the block cannot give them.
import { describe, expect, it } from 'vitest';
import { buildUnits, type Units, unitsOf, unitsRefusal } from '../passes/plugin/units.js';
import { erf } from '../src/analysis/evaluate.js';
import { analyzeTransformer } from '../src/analysis/index.js';
import { ModelBuilder } from '../src/ir/builder.js';
import { Tensor } from '../src/ir/tensor.js';
import { DataType, tensorType } from '../src/ir/types.js';
import { Rng } from '../src/random.js';
import { openSession, run } from '../src/runtime/session.js';
import { buildTransformer } from './helpers/transformer-gen.js';

const REFERENCE: Record<string, (x: number) => number> = {
  relu: (x) => Math.max(0, x),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
  swish: (x) => x / (1 + Math.exp(-x)),
  quick_gelu: (x) => x / (1 + Math.exp(-1.702 * x)),
  sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  tanh: Math.tanh,
  hard_swish: (x) => x * Math.min(1, Math.max(0, x / 6 + 0.5)),
  identity: (x) => x,
};

const [D, M, ROWS] = [4, 3, 10];
const rng = new Rng(7, 'units');
const draw = (n: number, scale = 1) => Float32Array.from({ length: n }, () => (rng.next() * 2 - 1) * scale);

async function unitsUnderOrt(units: Units, x: Float32Array): Promise<Float32Array> {
  const b = new ModelBuilder(17);
  const hidden = b.input('hidden', tensorType(DataType.FLOAT, [1, ROWS, D]));
  b.output(buildUnits(b, hidden, units), 'g');
  const session = await openSession(b.model);
  try {
    const out = await run(session, { hidden: Tensor.fromArray('hidden', DataType.FLOAT, [1, ROWS, D], x) });
    return out.g.toFloat32();
  } finally {
    await session.release();
  }
}

function reference(units: Units, x: Float32Array): number[] {
  const project = (w: Float32Array, bias: Float32Array | undefined, row: number, c: number) => {
    let s = bias?.[c] ?? 0;
    for (let i = 0; i < D; i++) s += x[row * D + i] * w[i * M + c];
    return s;
  };
  const out: number[] = [];
  for (let row = 0; row < ROWS; row++)
    for (let c = 0; c < M; c++) {
      const a = REFERENCE[units.activation](project(units.up.weight, units.up.bias, row, c));
      out.push(units.gate ? a * project(units.gate.weight, units.gate.bias, row, c) : a);
    }
  return out;
}

describe('full-length units', () => {
  for (const activation of Object.keys(REFERENCE)) {
    for (const gated of [false, true]) {
      it(`compute ${gated ? 'gated ' : ''}${activation} as the float64 reference does`, async () => {
        const units: Units = {
          indices: [0, 1, 2],
          activation,
          up: { weight: draw(D * M, 2), bias: draw(M) },
          gate: gated ? { weight: draw(D * M), bias: undefined } : undefined,
        };
        const x = draw(ROWS * D, 3);
        const got = await unitsUnderOrt(units, x);
        const want = reference(units, x);
        for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i])).toBeLessThan(1e-5 * (1 + Math.abs(want[i])));
      });
    }
  }

  it("are the model's own columns of the up projection, and a block that cannot give them is refused", () => {
    const model = buildTransformer({
      layers: 1,
      hidden: 8,
      heads: 2,
      ffnInner: 12,
      norm: 'pre',
      activation: 'gelu',
      bias: true,
      mask: false,
      causal: false,
      vocab: 20,
      seed: 3,
    });
    const ffn = analyzeTransformer(model).layers[0].ffn;
    expect(unitsRefusal(ffn, 8)).toBeUndefined();
    const units = unitsOf(ffn, 8, [2, 7]);
    const w = ffn.up.weight.tensor.toFloat32();
    const bias = ffn.up.bias!.constTensor()!.toFloat32();
    expect(units.activation).toBe('gelu');
    for (let i = 0; i < 8; i++) expect([units.up.weight[i * 2], units.up.weight[i * 2 + 1]]).toEqual([w[i * 12 + 2], w[i * 12 + 7]]);
    expect([...units.up.bias!]).toEqual([bias[2], bias[7]]);
    expect(unitsRefusal({ ...ffn, activation: 'softsign' }, 8)).toBe('its activation (softsign) is not one vcompile can rebuild');
    expect(unitsRefusal(ffn, 6)).toMatch(/^its projection weight \S+ \[8, 12\] is not one whole \[6, 12\] matrix$/);
  });
});
