// Full-length units: a few of a feed-forward block's own hidden units, computed at every position inside
// a fitted FFN-scope plugin (src/decide/fit-plugins.ts picks them and fits what they feed).
//
// A mean plugin runs the block on each group's mean, so what it loses is the block's curvature inside a
// group: the hidden units whose activation bends over the group's positions. A fitted restore linear in
// [u ; x] cannot give that back; a handful of the units that bend most, computed per position, can, for
// m·d MACs a position (the block itself costs about 2·f·d, gated 3·f·d).
//
// The units are a copy of columns S of the block's up projection (and of its gate, when gated), with
// their biases, and the activation rebuilt by name from standard ops: the analysis names it by evaluating
// the model's own nodes (src/analysis/ffn.ts), so any spelling of it, fused ops included, gives the same
// plugin. A block whose up projection is not one whole [d, f] matrix has no units (unitsRefusal says why).
import type { FfnBlock } from '../../src/analysis/ffn.js';
import type { Projection } from '../../src/analysis/projection.js';
import type { GraphBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';

/** Units copied out of a block: S, and the slices of its projections ([d, m] row-major, [m]). */
export interface Units {
  indices: number[];
  activation: string;
  up: UnitProjection;
  gate?: UnitProjection;
}

export interface UnitProjection {
  weight: Float32Array;
  bias?: Float32Array;
}

/** The activations a unit can be rebuilt with (the names src/analysis/ffn.ts gives). */
const ACTIVATIONS: Record<string, (b: GraphBuilder, p: Value) => Value> = {
  relu: (b, p) => b.op.Relu(p),
  // written as PyTorch exports it (x / sqrt 2, not x times 1 / sqrt 2), the spelling ONNX Runtime fuses into one Gelu
  gelu: (b, p) =>
    b.op.Mul(b.op.Mul(p, b.scalar('half', 0.5)), b.op.Add(b.op.Erf(b.op.Div(p, b.scalar('sqrt2', Math.SQRT2))), b.scalar('one', 1))),
  gelu_tanh: (b, p) => {
    const cubic = b.op.Add(p, b.op.Mul(b.op.Mul(b.op.Mul(p, p), p), b.scalar('c', 0.044715)));
    const t = b.op.Tanh(b.op.Mul(cubic, b.scalar('sqrt_2_pi', Math.sqrt(2 / Math.PI))));
    return b.op.Mul(b.op.Mul(p, b.scalar('half', 0.5)), b.op.Add(t, b.scalar('one', 1)));
  },
  swish: (b, p) => b.op.Mul(p, b.op.Sigmoid(p)),
  quick_gelu: (b, p) => b.op.Mul(p, b.op.Sigmoid(b.op.Mul(p, b.scalar('k', 1.702)))),
  sigmoid: (b, p) => b.op.Sigmoid(p),
  tanh: (b, p) => b.op.Tanh(p),
  hard_swish: (b, p) => b.op.Mul(p, b.op.HardSigmoid(p, { alpha: 1 / 6, beta: 0.5 })),
  identity: (_b, p) => p,
};

/** Why `ffn` can have no units (undefined when it can). */
export function unitsRefusal(ffn: FfnBlock, d: number): string | undefined {
  if (!ACTIVATIONS[ffn.activation]) return `its activation (${ffn.activation}) is not one vcompile can rebuild`;
  for (const p of ffn.gate ? [ffn.up, ffn.gate] : [ffn.up]) {
    const dims = p.weight.tensor.dims;
    const expected = p.weight.transposed ? [ffn.inner, d] : [d, ffn.inner];
    if (dims.length !== 2 || dims[0] !== expected[0] || dims[1] !== expected[1])
      return `its projection weight ${p.weight.value.name} [${dims.join(', ')}] is not one whole [${d}, ${ffn.inner}] matrix`;
    const bias = p.bias?.constTensor();
    if (p.bias && (!bias || bias.size !== ffn.inner)) return `the bias of ${p.weight.value.name} is not a constant of ${ffn.inner} values`;
  }
  return undefined;
}

/** Units `indices` of `ffn` (checked by unitsRefusal first). */
export function unitsOf(ffn: FfnBlock, d: number, indices: number[]): Units {
  const why = unitsRefusal(ffn, d);
  if (why) throw new Error(`internal: units of a block that has none: ${why}`);
  const slice = (p: Projection): UnitProjection => {
    const w = p.weight.tensor.toFloat32();
    const f = ffn.inner;
    const m = indices.length;
    const weight = new Float32Array(d * m);
    for (let i = 0; i < d; i++)
      for (let c = 0; c < m; c++) weight[i * m + c] = p.weight.transposed ? w[indices[c] * d + i] : w[i * f + indices[c]];
    const b = p.bias?.constTensor()?.toFloat32();
    return { weight, bias: b && Float32Array.from(indices, (j) => b[j]) };
  };
  return { indices: [...indices], activation: ffn.activation, up: slice(ffn.up), gate: ffn.gate && slice(ffn.gate) };
}

/** The units' activations at every position of `hidden` ([batch, seq, d] -> [batch, seq, m]). */
export function buildUnits(b: GraphBuilder, hidden: Value, units: Units): Value {
  const m = units.indices.length;
  const d = units.up.weight.length / m;
  const project = (p: UnitProjection, name: string) => {
    const out = b.op.MatMul(hidden, b.floats(`units_${name}_weight`, [d, m], p.weight));
    return p.bias ? b.op.Add(out, b.floats(`units_${name}_bias`, [m], p.bias)) : out;
  };
  const active = ACTIVATIONS[units.activation](b, project(units.up, 'up'));
  return units.gate ? b.op.Mul(active, project(units.gate, 'gate')) : active;
}
