// What is added to attention scores, and what it means. Each term is evaluated on a small input
// (symbolic dims set to a probe length, every graph input all ones, so no padding) and read along its
// last two dims as [query, key]: a mask that hides exactly the later keys is causal; values that are
// neither 0 nor a large negative number make a position bias (T5's relative bias, ALiBi).
import type { Node, Value } from '../ir/graph.js';
import { DataType } from '../ir/types.js';
import { EvaluationError, evaluate, type NumTensor, tensorOf } from './evaluate.js';
import { type Context, dataInputs, isParameter } from './patterns.js';

export interface ScoreTerm {
  /** the Add / Sub / Where that applies the term to the scores */
  node: Node;
  value: Value;
  /** add / subtract: added to (subtracted from) the scores; select: Where(value, scores, fill) or Where(value, fill, scores) */
  mode: 'add' | 'subtract' | 'select';
  /** select only: whether scores are kept where `value` is true */
  keepWhen?: boolean;
  kind: 'mask' | 'positionBias' | 'unknown';
  /** graph inputs whose data the term reads (attention_mask for a padding mask) */
  inputs: Value[];
  /** learned tensors it is computed from (a relative position bias table) */
  weights: Value[];
  /** evaluated on a square input with padding all ones: masks exactly the later positions */
  causal: boolean;
  /** how the evaluation went: 'none' (masks nothing), 'causal', 'other', or why it could not run */
  pattern: string;
}

/** A term as found on the scores chain, before classification. */
export interface RawTerm {
  node: Node;
  value: Value;
  mode: ScoreTerm['mode'];
  keepWhen?: boolean;
}

/** Size used for every symbolic dim when a term is evaluated. */
const PROBE_LENGTH = 5;
/** Additive values at or below this count as masked. */
const MASKED = -1e4;

/** Classify a term by its origin (graph inputs, learned tensors) and by its values on a probe input. */
export function classifyTerm(raw: RawTerm, ctx: Context): ScoreTerm {
  const inputs = dataInputs(raw.value, ctx);
  const weights = learnedTensors(raw.value);
  const term: ScoreTerm = { ...raw, kind: 'unknown', inputs, weights, causal: false, pattern: 'not evaluated' };
  let value: NumTensor;
  try {
    value = evaluate([raw.value], probeFeeds(raw.value, ctx), { shapeOf: (v) => probeShape(v, ctx) })[0];
  } catch (error) {
    if (!(error instanceof EvaluationError)) throw error;
    term.pattern = `not evaluated: ${error.message}`;
    term.kind = raw.mode === 'select' || inputs.length ? 'mask' : weights.length ? 'positionBias' : 'unknown';
    return term;
  }
  const sign = raw.mode === 'subtract' ? -1 : 1;
  const masked = (x: number) => (raw.mode === 'select' ? !!x !== raw.keepWhen : sign * x <= MASKED);
  const onlyMask = raw.mode === 'select' || value.data.every((x) => x === 0 || sign * x <= MASKED);
  term.kind = onlyMask ? 'mask' : 'positionBias';
  term.pattern = maskPattern(value, masked);
  term.causal = term.pattern === 'causal';
  return term;
}

/** 'none', 'causal' or 'other', reading the last two dims as [query, key]. */
function maskPattern(t: NumTensor, masked: (x: number) => boolean): string {
  const rank = t.dims.length;
  const cols = rank >= 1 ? t.dims[rank - 1] : 1;
  const rows = rank >= 2 ? t.dims[rank - 2] : 1;
  let any = false;
  let triangle = rows === cols && rows > 1;
  for (let flat = 0; flat < t.data.length; flat++) {
    const j = flat % cols;
    const i = Math.floor(flat / cols) % rows;
    const m = masked(t.data[flat]);
    any ||= m;
    if (m !== j > i) triangle = false;
  }
  if (!any) return 'none';
  return triangle ? 'causal' : 'other';
}

/** Concrete inputs for evaluating a side computation: symbolic dims set small, data all ones (no padding). */
function probeFeeds(v: Value, ctx: Context): Map<Value, NumTensor> {
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
      feeds.set(cur, tensorOf(dims, new Float64Array(size).fill(1), ctx.shapes.get(cur).dtype ?? DataType.FLOAT));
      continue;
    }
    for (const input of cur.producer?.inputs ?? []) if (input) stack.push(input);
  }
  return feeds;
}

/** The inferred shape of `v` with every symbolic dim set to the probe length. */
function probeShape(v: Value, ctx: Context): number[] | undefined {
  const shape = ctx.shapes.shape(v);
  if (!shape || shape.some((d) => !d)) return undefined;
  return shape.map((d) => d!.evaluate(new Map([...d!.atoms()].map((a) => [a, PROBE_LENGTH]))) ?? PROBE_LENGTH);
}

/** Learned tensors (float, more than one element) that `v` is computed from. */
export function learnedTensors(v: Value): Value[] {
  const found: Value[] = [];
  const seen = new Set<Value>();
  const stack = [v];
  while (stack.length && seen.size < 2000) {
    const cur = stack.pop()!;
    if (seen.has(cur)) continue;
    seen.add(cur);
    if (isParameter(cur)) {
      found.push(cur);
      continue;
    }
    for (const input of cur.producer?.inputs ?? []) if (input) stack.push(input);
  }
  return found;
}
