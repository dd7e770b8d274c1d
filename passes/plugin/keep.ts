// Which positions are real, for plugins that declare the optional `keep` input ([batch, seq] float, 1 at
// real positions): the model's own padding mask, found through the attention scores it is applied to,
// padded with zeros where the pass pads `hidden` to a multiple of k. A model without a padding mask keeps
// every position it was given.
//
// The mask is a graph input of shape [batch, seq] (the hidden stream's batch and sequence dims) that a term
// of the layer's self-attention scores reads. Which of its values mean "real" is not assumed (HF's
// attention_mask is 1 for real tokens, PyTorch's key_padding_mask is true for padding): the term is
// evaluated on a probe mask, and the keys it masks must be exactly the probe's zeros, or its non-zeros.
//
// A fitted module's context maps (passes/modular/context.ts) need the same positions inside a module, whose
// only mask is attention_bias: `biasKeepRule` finds, on the same probe, the rule that reads them off it.

import { EvaluationError, evaluate, type NumTensor, tensorOf } from '../../src/analysis/evaluate.js';
import type { AttentionBlock, ShapeTable } from '../../src/analysis/index.js';
import type { Context } from '../../src/analysis/patterns.js';
import type { ScoreTerm } from '../../src/analysis/scores.js';
import type { GraphBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { VersionedOps } from '../../src/ir/ops.js';
import { DataType } from '../../src/ir/types.js';
import { leadingDims } from './sequence.js';

export interface PaddingMask {
  /** the graph input, [batch, seq] */
  input: Value;
  /** whether real positions are its non-zero values (attention_mask) or its zeros (key_padding_mask) */
  realWhen: 'nonzero' | 'zero';
  elemType: number;
}

/** Which keys of the probe mask are real (the rest padding), repeated along its length. */
const PROBE_REAL = [1, 1, 0, 1, 0, 0];
/** Length of every symbolic dim when a term is probed. */
const PROBE_LENGTH = PROBE_REAL.length;
const probeReal = (key: number) => PROBE_REAL[key % PROBE_REAL.length];
/** Additive score terms at or below this mask (as the analysis classifies them). */
const MASKED = -1e4;

/** The padding mask that `attention`'s score terms read, for a hidden stream `hidden` [batch, seq, d]. */
export function findPaddingMask(attention: AttentionBlock, hidden: Value, ctx: Context): PaddingMask | undefined {
  const batch = ctx.shapes.dim(hidden, 0);
  const seq = ctx.shapes.dim(hidden, 1);
  if (!batch || !seq) return undefined;
  for (const term of attention.terms) {
    for (const input of term.inputs) {
      const shape = ctx.shapes.shape(input);
      if (shape?.length !== 2 || !shape[0]?.equals(batch) || !shape[1]?.equals(seq)) continue;
      const realWhen = polarity(term, input, ctx);
      if (realWhen) return { input, realWhen, elemType: ctx.shapes.get(input).dtype ?? DataType.FLOAT };
    }
  }
  return undefined;
}

/** keep [batch, seq] as float: the mask's real positions as 1, or all ones (from `hidden`'s shape) without a mask. */
export function keepOf(b: GraphBuilder, ops: VersionedOps, mask: PaddingMask | undefined, hidden: Value): Value {
  if (!mask) {
    return b.op.Expand(b.floats('one', [1, 1], [1]), leadingDims(b, ops, hidden, 2));
  }
  const nonzero = mask.elemType === DataType.BOOL ? mask.input : b.op.Cast(mask.input, { to: DataType.BOOL });
  return b.op.Cast(mask.realWhen === 'nonzero' ? nonzero : b.op.Not(nonzero), { to: DataType.FLOAT });
}

/**
 * How a module reads real keys off its attention_bias (no mask input of its own): `zero` where the bias is 0
 * (an additive 0 / -10000 bias, a key_padding_mask), `nonzero` where it is not (an attention_mask), `above`
 * where it is above MASKED (an additive bias with finite values at real keys).
 */
export type BiasKeep = 'zero' | 'nonzero' | 'above';
const BIAS_KEEPS: readonly BiasKeep[] = ['zero', 'nonzero', 'above'];

/**
 * Which rule gives `mask`'s real positions from `bias` (a value computed from the mask): the bias is evaluated
 * for the probe mask, and must be one value per key ([batch, 1, ..., 1, seq]) that the rule maps to exactly
 * the probe's real keys; else why no rule does.
 */
export function biasKeepRule(bias: Value, mask: PaddingMask, ctx: Context): { rule: BiasKeep } | { why: string } {
  let value: NumTensor;
  try {
    value = evaluate([bias], probeFeeds(bias, mask.input, ctx), { shapeOf: (v) => probeShape(v, ctx.shapes) })[0];
  } catch (error) {
    if (error instanceof EvaluationError) return { why: `its value for a probe mask cannot be worked out (${error.message})` };
    throw error;
  }
  const dims = value.dims;
  if (dims.length < 2 || dims.slice(1, -1).some((n) => n !== 1) || dims[dims.length - 1] !== PROBE_LENGTH)
    return {
      why: `it has shape [${dims.join(', ')}] for a [${PROBE_LENGTH}, ${PROBE_LENGTH}] mask, not one value per key ([batch, 1, ..., 1, seq])`,
    };
  const real = (rule: BiasKeep, x: number) => (rule === 'zero' ? x === 0 : rule === 'nonzero' ? x !== 0 : x > MASKED);
  const rule = BIAS_KEEPS.find((r) => value.data.every((x, flat) => real(r, x) === (probeReal(flat % PROBE_LENGTH) !== 0)));
  return rule ? { rule } : { why: "the keys it masks are not the padding mask's" };
}

/** keep [batch, seq, 1] as float from a module's attention_bias, by `rule` (biasKeepRule checked it). */
export function keepFromBias(b: GraphBuilder, bias: Value, rule: BiasKeep): Value {
  const perKey = b.op.Reshape(bias, b.int64s('per_key', [0, -1, 1]));
  const real =
    rule === 'above'
      ? b.op.Greater(b.op.Cast(perKey, { to: DataType.FLOAT }), b.scalar('masked', MASKED))
      : rule === 'nonzero'
        ? b.op.Cast(perKey, { to: DataType.BOOL })
        : b.op.Not(b.op.Cast(perKey, { to: DataType.BOOL }));
  return b.op.Cast(real, { to: DataType.FLOAT });
}

/** Evaluate `term` with `input` set to the probe: which values of `input` leave a key unmasked. */
function polarity(term: ScoreTerm, input: Value, ctx: Context): PaddingMask['realWhen'] | undefined {
  let value: NumTensor;
  try {
    value = evaluate([term.value], probeFeeds(term.value, input, ctx), { shapeOf: (v) => probeShape(v, ctx.shapes) })[0];
  } catch (error) {
    if (error instanceof EvaluationError) return undefined;
    throw error;
  }
  const cols = value.dims[value.dims.length - 1];
  if (value.dims.length < 2 || cols !== probeShape(input, ctx.shapes)?.[1]) return undefined;
  const sign = term.mode === 'subtract' ? -1 : 1;
  const masked = (x: number) => (term.mode === 'select' ? !!x !== term.keepWhen : sign * x <= MASKED);
  // a key is padding when every query (batch row, head) has it masked; a causal triangle leaves the last query
  const padding = Array.from({ length: cols }, (_, key) => {
    for (let flat = key; flat < value.data.length; flat += cols) if (!masked(value.data[flat])) return false;
    return true;
  });
  if (padding.every((p, key) => p === (probeReal(key) === 0))) return 'nonzero';
  if (padding.every((p, key) => p === (probeReal(key) !== 0))) return 'zero';
  return undefined;
}

/** Every graph input `v` reads, all ones with symbolic dims at the probe length; `mask` holds the probe pattern. */
function probeFeeds(v: Value, mask: Value, ctx: Context): Map<Value, NumTensor> {
  const feeds = new Map<Value, NumTensor>();
  const seen = new Set<Value>();
  const stack = [v];
  while (stack.length) {
    const cur = stack.pop()!;
    if (seen.has(cur)) continue;
    seen.add(cur);
    if (cur.isGraphInput && cur.graph === ctx.graph) {
      const dims = (ctx.shapes.shape(cur) ?? []).map((d) => d?.constant ?? PROBE_LENGTH);
      const size = dims.reduce((a, b) => a * b, 1);
      const data = Float64Array.from({ length: size }, (_, i) => (cur === mask ? probeReal(i % dims[1]) : 1));
      feeds.set(cur, tensorOf(dims, data, ctx.shapes.get(cur).dtype ?? DataType.FLOAT));
      continue;
    }
    for (const input of cur.producer?.inputs ?? []) if (input) stack.push(input);
  }
  return feeds;
}

/** The inferred shape of `v` with every symbolic dim at the probe length. */
function probeShape(v: Value, shapes: ShapeTable): number[] | undefined {
  const shape = shapes.shape(v);
  if (!shape || shape.some((d) => !d)) return undefined;
  return shape.map((d) => d!.evaluate(new Map([...d!.atoms()].map((a) => [a, PROBE_LENGTH]))) ?? PROBE_LENGTH);
}
