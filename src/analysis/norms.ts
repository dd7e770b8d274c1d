// Normalization layers, as an op (LayerNormalization, com.microsoft SimplifiedLayerNormalization) or
// spelled out the way exporters write them:
//   LayerNorm: (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta
//   RMSNorm:   x * 1/sqrt(mean(x^2) + eps) * gamma          (T5, LLaMA)
// with the inverse square root written as Div, Reciprocal, Pow(-0.5) or Div(1, Sqrt).
import type { Node, Value } from '../ir/graph.js';
import {
  type Context,
  dataUses,
  exclusiveCone,
  fail,
  isLearned,
  type Match,
  nodeLabel,
  ok,
  otherOperand,
  reducesLastAxis,
  scalarOf,
  skipBack,
} from './patterns.js';

export type NormKind = 'layernorm' | 'rmsnorm';

export interface NormMatch {
  kind: NormKind;
  /** 'op': one normalization node; 'spelled': ReduceMean/Sub/Pow/Sqrt/Div ... */
  form: 'op' | 'spelled';
  input: Value;
  output: Value;
  scale?: Value;
  bias?: Value;
  epsilon?: number;
  /** the nodes computing the norm, in graph order */
  nodes: Node[];
  /**
   * Set when the norm is fused with the residual add before it (com.microsoft SkipLayerNormalization):
   * `input` is then the node's sum output when it has one, else its first addend.
   */
  fusedResidual?: Node;
}

const OP_NORMS: Record<string, NormKind> = {
  LayerNormalization: 'layernorm',
  SimplifiedLayerNormalization: 'rmsnorm',
};
/** com.microsoft norms fused with a residual add: LN(input + skip + bias); output 3 is the sum. */
export const SKIP_NORMS: Record<string, NormKind> = {
  SkipLayerNormalization: 'layernorm',
  SkipSimplifiedLayerNormalization: 'rmsnorm',
};

/** Match a norm whose result is `output`. */
export function matchNorm(output: Value, ctx: Context): Match<NormMatch> {
  const end = skipBack(output);
  const p = end.producer;
  if (!p) return fail(`${output.name} is not computed by a norm (it is a graph input or constant)`);
  const opKind = OP_NORMS[p.opType];
  if (opKind && end === p.outputs[0]) {
    const axis = p.attrInt('axis', -1);
    const rank = ctx.shapes.rank(p.inputs[0]);
    if (axis !== -1 && axis !== (rank ?? 0) - 1)
      return fail(`${nodeLabel(p, ctx)} normalizes from axis ${axis}, not over the last axis only`, p);
    const epsilon = p.attr('epsilon')?.f ?? 1e-5;
    const norm: NormMatch = {
      kind: opKind,
      form: 'op',
      input: p.inputs[0]!,
      output,
      scale: p.inputs[1] ?? undefined,
      bias: p.inputs[2] ?? undefined,
      epsilon,
      nodes: [],
    };
    return ok(withNodes(norm, ctx));
  }
  const skipKind = p.domain === 'com.microsoft' ? SKIP_NORMS[p.opType] : undefined;
  if (skipKind && end === p.outputs[0]) {
    const epsilon = p.attr('epsilon')?.f ?? 1e-12;
    const hasBeta = p.opType === 'SkipLayerNormalization';
    return ok({
      kind: skipKind,
      form: 'op',
      input: p.outputs[3] ?? p.inputs[0]!,
      output,
      scale: p.inputs[2] ?? undefined,
      bias: hasBeta ? (p.inputs[3] ?? undefined) : undefined,
      epsilon,
      nodes: [p],
      fusedResidual: p,
    });
  }
  return matchSpelled(output, end, ctx);
}

function matchSpelled(output: Value, end: Value, ctx: Context): Match<NormMatch> {
  let v = end;
  // peel `* gamma + beta` (each optional): a binary op with a learned vector operand
  const peel = (op: string): Value | undefined => {
    const p = skipBack(v).producer;
    if (p?.opType !== op || p.domain) return undefined;
    const param = p.inputs.find((i) => isLearned(i));
    const rest = param && otherOperand(p, param);
    if (!param || !rest) return undefined;
    v = rest;
    return param;
  };
  const bias = peel('Add');
  const scale = peel('Mul');
  const core = matchNormalizedCore(skipBack(v), ctx);
  if (!core.ok) return core;
  const norm: NormMatch = {
    kind: core.value.kind,
    form: 'spelled',
    input: core.value.input,
    output,
    scale,
    bias,
    epsilon: core.value.epsilon,
    nodes: [],
  };
  return ok(withNodes(norm, ctx));
}

interface Core {
  kind: NormKind;
  input: Value;
  epsilon?: number;
}

/** `c / std` or `c * invstd`, where std is sqrt(mean(c^2) + eps) and c is x - mean(x) (LN) or x (RMS). */
function matchNormalizedCore(v: Value, ctx: Context): Match<Core> {
  const p = v.producer;
  if (!p || p.domain) return fail(`${v.name} is not a normalized value`, p ?? undefined);
  const [a, b] = p.inputs;
  if (!a || !b) return fail('missing operand', p);
  if (p.opType === 'Div') {
    const std = matchStd(skipBack(b), ctx, false);
    if (std.ok) return centered(skipBack(a), std.value, ctx, p);
    return fail(`${nodeLabel(p, ctx)} does not divide by a standard deviation: ${std.reason}`, p);
  }
  if (p.opType === 'Mul') {
    for (const [c, r] of [
      [a, b],
      [b, a],
    ] as const) {
      const inv = matchStd(skipBack(r), ctx, true);
      if (inv.ok) return centered(skipBack(c), inv.value, ctx, p);
    }
    return fail(`${nodeLabel(p, ctx)} does not multiply by an inverse standard deviation`, p);
  }
  return fail(`${nodeLabel(p, ctx)} is not the division of a norm`, p);
}

interface Std {
  /** the value whose mean square is taken */
  squared: Value;
  epsilon?: number;
}

/** sqrt(mean(c^2) + eps); with `inverse`, its reciprocal. */
function matchStd(v: Value, ctx: Context, inverse: boolean): Match<Std> {
  const p = v.producer;
  if (!p || p.domain) return fail(`${v.name} is not computed`);
  if (inverse) {
    if (p.opType === 'Reciprocal') return matchStd(skipBack(p.inputs[0]!), ctx, false);
    if (p.opType === 'Div' && scalarOf(p.inputs[0]) === 1) return matchStd(skipBack(p.inputs[1]!), ctx, false);
    if (p.opType === 'Pow' && scalarOf(p.inputs[1]) === -0.5) return matchVariance(skipBack(p.inputs[0]!), ctx);
    return fail(`${nodeLabel(p, ctx)} is not an inverse square root`, p);
  }
  if (p.opType === 'Sqrt') return matchVariance(skipBack(p.inputs[0]!), ctx);
  if (p.opType === 'Pow' && scalarOf(p.inputs[1]) === 0.5) return matchVariance(skipBack(p.inputs[0]!), ctx);
  return fail(`${nodeLabel(p, ctx)} is not a square root`, p);
}

/** mean(c^2) + eps, or mean(c^2) alone. */
function matchVariance(v: Value, ctx: Context): Match<Std> {
  let cur = v;
  let epsilon: number | undefined;
  const p = cur.producer;
  if (p?.opType === 'Add' && !p.domain) {
    const eps = p.inputs.find((i) => scalarOf(i) !== undefined);
    const rest = eps && otherOperand(p, eps);
    if (!eps || !rest) return fail(`${nodeLabel(p, ctx)} does not add an epsilon`, p);
    epsilon = scalarOf(eps);
    cur = skipBack(rest);
  }
  const mean = cur.producer;
  if (mean?.opType !== 'ReduceMean' || !reducesLastAxis(mean, ctx))
    return fail(`${cur.name} is not a mean over the last axis`, mean ?? undefined);
  const sq = skipBack(mean.inputs[0]!).producer;
  if (sq?.opType === 'Pow' && scalarOf(sq.inputs[1]) === 2) return ok({ squared: skipBack(sq.inputs[0]!), epsilon });
  if (sq?.opType === 'Mul' && sq.inputs[0] && sq.inputs[0] === sq.inputs[1]) return ok({ squared: skipBack(sq.inputs[0]), epsilon });
  return fail(`${nodeLabel(mean, ctx)} does not average a square`, mean);
}

/** Decide LayerNorm vs RMSNorm from what is squared: x - mean(x), or x itself. */
function centered(c: Value, std: Std, ctx: Context, at: Node): Match<Core> {
  if (std.squared !== c) return fail(`${nodeLabel(at, ctx)} divides ${c.name} by the deviation of another value (${std.squared.name})`, at);
  const sub = c.producer;
  if (sub?.opType === 'Sub' && !sub.domain) {
    const [x, m] = sub.inputs;
    const mean = m && skipBack(m).producer;
    if (x && mean?.opType === 'ReduceMean' && reducesLastAxis(mean, ctx) && skipBack(mean.inputs[0]!) === skipBack(x)) {
      return ok({ kind: 'layernorm', input: x, epsilon: std.epsilon });
    }
  }
  return ok({ kind: 'rmsnorm', input: c, epsilon: std.epsilon });
}

function withNodes(norm: NormMatch, ctx: Context): NormMatch {
  const boundaries = new Set([norm.input]);
  norm.nodes = exclusiveCone([norm.output], boundaries, ctx);
  return norm;
}

/**
 * The norm applied to `x`, found forward: the largest norm whose input is `x` among the values
 * reachable from it through a few elementwise and reduction nodes.
 */
export function findNormAfter(x: Value, ctx: Context): NormMatch | undefined {
  const fused = x.producer;
  if (fused && fused.domain === 'com.microsoft' && SKIP_NORMS[fused.opType] && x === fused.outputs[3] && fused.outputs[0]) {
    // the sum output of a SkipLayerNormalization: its normalized output is the norm of this stream
    const m = matchNorm(fused.outputs[0], ctx);
    return m.ok ? m.value : undefined;
  }
  let best: NormMatch | undefined;
  const seen = new Set<Value>();
  let frontier = [x];
  for (let depth = 0; depth < 12 && frontier.length; depth++) {
    const next: Value[] = [];
    for (const v of frontier) {
      for (const use of dataUses(v)) {
        if (!NORM_OPS.has(use.node.opType) || use.node.domain) continue;
        for (const out of use.node.outputs) {
          if (!out || seen.has(out)) continue;
          seen.add(out);
          next.push(out);
          const m = matchNorm(out, ctx);
          if (m.ok && skipBack(m.value.input) === skipBack(x) && (!best || m.value.nodes.length > best.nodes.length)) best = m.value;
        }
      }
    }
    frontier = next;
  }
  return best;
}

const NORM_OPS = new Set([
  'LayerNormalization',
  'SimplifiedLayerNormalization',
  'ReduceMean',
  'Sub',
  'Pow',
  'Mul',
  'Add',
  'Div',
  'Sqrt',
  'Reciprocal',
  'Cast',
  'Identity',
]);
