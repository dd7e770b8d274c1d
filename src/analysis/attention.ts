// Attention blocks, found from their Softmax:
//   scores  = (Q·Kᵀ) [* scale] [+ position bias] [+ mask | Where(keep, ., fill)]
//   context = Softmax(scores) · V, heads merged, then the output projection.
// Q, K and V are traced back through layout ops (Reshape/Transpose/Split/Slice/...) to their projection
// MatMuls, which tells self from cross attention and separate from fused QKV. What is added to the
// scores is classified by evaluating it on a small input: a mask (and whether it is causal) or a
// position bias.
import type { Node, Value } from '../ir/graph.js';
import {
  type Context,
  dataInputs,
  dataUses,
  exclusiveCone,
  fail,
  isLearned,
  isPassThrough,
  type Match,
  nodeLabel,
  ok,
  scaling,
  skipBack,
  skipForward,
  weightOf,
} from './patterns.js';
import { isProjection, type Projection, projectionAt } from './projection.js';
import { classifyTerm, learnedTensors, type RawTerm, type ScoreTerm } from './scores.js';
import { product } from './symbolic.js';

export type { Projection, ScoreTerm };

export interface AttentionBlock {
  kind: 'self' | 'cross';
  /** query input (the normalized stream in pre-LN, the stream itself in post-LN) */
  input: Value;
  /** key/value input: `input` for self attention, the encoder output for cross attention */
  kvInput: Value;
  /** the result after the output projection and its bias */
  output: Value;
  query: Projection;
  key: Projection;
  value: Projection;
  outputProjection: Projection;
  fusedQkv: boolean;
  heads: number;
  headSize: number;
  /** product of constant factors applied to Q, K or the scores (1/sqrt(headSize) usually, 1 for T5) */
  scale: number;
  scores: Node;
  softmax: Node;
  context: Node;
  terms: ScoreTerm[];
  causal: boolean;
  /** the nodes the block owns (shared mask and bias computations excluded) */
  nodes: Node[];
}

const LAYOUT = new Set(['Transpose', 'Reshape', 'Squeeze', 'Unsqueeze', 'Flatten', 'Identity', 'Cast', 'Dropout']);

/** Match the attention block around `softmax`. */
export function matchAttention(softmax: Node, ctx: Context): Match<AttentionBlock> {
  const input = softmax.inputs[0];
  if (!input) return fail('Softmax without input', softmax);
  const rank = ctx.shapes.rank(input);
  const axis = softmax.attrInt('axis', (ctx.model.opsetVersion('') ?? 13) >= 13 ? -1 : 1);
  if (rank !== undefined && axis !== -1 && axis !== rank - 1) {
    return { ok: false, reason: `${nodeLabel(softmax, ctx)} normalizes axis ${axis}, not the last`, node: softmax, unrelated: true };
  }
  const chain = walkScores(input, ctx);
  if (!chain.ok) return { ...chain, unrelated: true };
  const { scores, terms, scale: scoreScale } = chain.value;
  const [qh, kh] = scores.inputs as Value[];
  const q = walkProjection(qh, ctx, 'query');
  if (!q.ok) return q;
  const k = walkProjection(kh, ctx, 'key');
  if (!k.ok) return k;
  const ctxMatMul = contextMatMul(softmax, ctx);
  if (!ctxMatMul.ok) return ctxMatMul;
  const v = walkProjection(ctxMatMul.value.inputs[1]!, ctx, 'value');
  if (!v.ok) return v;
  if (v.value.proj.input !== k.value.proj.input)
    return fail(`key and value of ${nodeLabel(softmax, ctx)} read different inputs`, v.value.proj.matmul);
  const out = outputProjection(ctxMatMul.value, ctx);
  if (!out.ok) return out;
  const heads = headsOf(qh, q.value.proj, ctx);
  if (!heads.ok) return fail(heads.reason, scores);
  const projections = new Set([q.value.proj.matmul, k.value.proj.matmul, v.value.proj.matmul]);
  const queryInput = beforeLayout(q.value.proj.input, projections);
  const kvInput = beforeLayout(k.value.proj.input, projections);
  const kind = kvInput === queryInput ? 'self' : 'cross';
  const classified = terms.map((t) => classifyTerm(t, ctx));
  const boundaries = new Set<Value>([queryInput, kvInput, ...classified.map((t) => t.value)]);
  const block: AttentionBlock = {
    kind,
    input: queryInput,
    kvInput,
    output: out.value.output,
    query: q.value.proj,
    key: k.value.proj,
    value: v.value.proj,
    outputProjection: out.value,
    fusedQkv: q.value.proj.matmul === k.value.proj.matmul,
    heads: heads.value.heads,
    headSize: heads.value.headSize,
    scale: scoreScale * q.value.scale * k.value.scale,
    scores,
    softmax,
    context: ctxMatMul.value,
    terms: classified,
    causal: kind === 'self' && classified.some((t) => t.causal),
    nodes: exclusiveCone([out.value.output], boundaries, ctx),
  };
  return ok(block);
}

/**
 * The stream value behind a projection input that was only transposed for the projections
 * (nn.MultiheadAttention turns [batch, seq, d] into [seq, batch, d] first): the block's input is
 * then the untransposed value, in the stream's own layout.
 */
function beforeLayout(v: Value, projections: ReadonlySet<Node>): Value {
  let cur = v;
  for (;;) {
    const p = cur.producer;
    if (!p || p.domain || !(p.opType === 'Transpose' || isPassThrough(p)) || !p.inputs[0]) return cur;
    if (!dataUses(cur).every((u) => projections.has(u.node))) return cur;
    cur = p.inputs[0];
  }
}

/** Walk back from the Softmax input to the Q·Kᵀ MatMul, collecting scale factors and added terms. */
function walkScores(start: Value, ctx: Context): Match<{ scores: Node; terms: RawTerm[]; scale: number }> {
  const terms: RawTerm[] = [];
  let scale = 1;
  let v = start;
  for (let step = 0; step < 24; step++) {
    v = skipBack(v);
    const p = v.producer;
    if (p && isScoresMatMul(p)) {
      // ORT folds the 1/sqrt(d) scale into FusedMatMul's alpha
      if (p.opType === 'FusedMatMul') scale *= p.attrFloat('alpha', 1);
      return ok({ scores: p, terms: terms.reverse(), scale });
    }
    if (!p || p.domain)
      return fail(
        `the scores before the Softmax come from ${p ? nodeLabel(p, ctx) : `input ${v.name}`}, not a Q·Kᵀ MatMul`,
        p ?? undefined,
      );
    const scaled = scaling(p, ctx);
    if (scaled) {
      scale *= scaled.factor;
      v = scaled.rest;
      continue;
    }
    if (p.opType === 'Add' || p.opType === 'Sub' || p.opType === 'Where') {
      const candidates = p.opType === 'Where' ? [1, 2] : [0, 1];
      const reach = candidates.map((i) => ({ i, depth: scoresDepth(p.inputs[i]!) }));
      const viable = reach.filter((r) => r.depth !== undefined).sort((x, y) => x.depth! - y.depth!);
      if (viable.length === 0) return fail(`neither operand of ${nodeLabel(p, ctx)} leads back to a Q·Kᵀ MatMul`, p);
      if (viable.length > 1 && viable[0].depth === viable[1].depth)
        return fail(`both operands of ${nodeLabel(p, ctx)} lead back to a Q·Kᵀ MatMul`, p);
      const chainIndex = viable[0].i;
      if (p.opType === 'Where') terms.push({ node: p, value: p.inputs[0]!, mode: 'select', keepWhen: chainIndex === 1 });
      else {
        if (p.opType === 'Sub' && chainIndex === 1) return fail(`${nodeLabel(p, ctx)} subtracts the scores from something`, p);
        terms.push({ node: p, value: p.inputs[1 - chainIndex]!, mode: p.opType === 'Sub' ? 'subtract' : 'add' });
      }
      v = p.inputs[chainIndex]!;
      continue;
    }
    return fail(`${nodeLabel(p, ctx)} between the scores and the Softmax is not a scale, an added term or a select`, p);
  }
  return fail('no Q·Kᵀ MatMul within 24 steps of the Softmax');
}

/** A MatMul of two computed tensors (not a projection by a weight). */
function isScoresMatMul(node: Node): boolean {
  const matmul = (node.opType === 'MatMul' && !node.domain) || (node.opType === 'FusedMatMul' && node.domain === 'com.microsoft');
  return matmul && !weightOf(node.inputs[0]) && !weightOf(node.inputs[1]);
}

/** Steps from `v` back to a Q·Kᵀ MatMul through score arithmetic, or undefined. */
function scoresDepth(v: Value): number | undefined {
  let frontier = [v];
  const seen = new Set<Value>();
  for (let depth = 0; depth < 12 && frontier.length; depth++) {
    const next: Value[] = [];
    for (const cur of frontier) {
      const p = skipBack(cur).producer;
      if (!p || seen.has(cur)) continue;
      seen.add(cur);
      if (isScoresMatMul(p)) return depth;
      if (['Add', 'Sub', 'Mul', 'Div', 'Where'].includes(p.opType) && !p.domain) next.push(...(p.inputs.filter(Boolean) as Value[]));
    }
    frontier = next;
  }
  return undefined;
}

/** Trace Q, K or V back to its projection, collecting scale factors on the way. */
function walkProjection(start: Value, ctx: Context, role: string): Match<{ proj: Projection; scale: number }> {
  let v = start;
  let scale = 1;
  let bias: Value | undefined;
  let biasAdd: Node | undefined;
  let part: Projection['part'];
  for (let step = 0; step < 32; step++) {
    const p = v.producer;
    if (!p) return fail(`the ${role} path reaches ${v.name}, which is not computed by a projection`);
    const [a, b] = p.inputs;
    if (p.domain && p.domain !== 'ai.onnx') return fail(`${nodeLabel(p, ctx)} on the ${role} path is not understood`, p);
    if (LAYOUT.has(p.opType) && a) {
      v = a;
      continue;
    }
    const scaled = scaling(p, ctx);
    if (scaled) {
      scale *= scaled.factor;
      v = scaled.rest;
      continue;
    }
    if (p.opType === 'Add' && a && b && !bias) {
      const param = [a, b].find((x) => isLearned(x));
      if (param) {
        bias = param;
        biasAdd = p;
        v = param === a ? b : a;
        continue;
      }
    }
    if ((p.opType === 'Split' || p.opType === 'Slice' || p.opType === 'Gather') && a && !part) {
      part = { node: p, index: partIndex(p, v, ctx) };
      v = a;
      continue;
    }
    if ((p.opType === 'MatMul' || p.opType === 'Gemm') && a && b) {
      if (!isProjection(p)) return fail(`${nodeLabel(p, ctx)} on the ${role} path has no constant weight`, p);
      const found = projectionAt(p, ctx);
      const proj: Projection = {
        ...found,
        bias: bias ?? found.bias,
        biasAdd: biasAdd ?? found.biasAdd,
        output: biasAdd?.outputs[0] ?? found.output,
        part,
      };
      return ok({ proj, scale });
    }
    return fail(`${nodeLabel(p, ctx)} on the ${role} path is not a projection or a layout op`, p);
  }
  return fail(`no projection within 32 steps on the ${role} path`);
}

/** Which part of a fused projection a Split output, Slice or Gather takes. */
function partIndex(node: Node, taken: Value, ctx: Context): number {
  if (node.opType === 'Split') return node.outputs.indexOf(taken);
  if (node.opType === 'Gather') return ctx.shapes.ints(node.inputs[1])?.[0] ?? -1;
  const starts = node.attr('starts') ? node.attrInts('starts') : ctx.shapes.ints(node.inputs[1]);
  const ends = node.attr('ends') ? node.attrInts('ends') : ctx.shapes.ints(node.inputs[2]);
  if (!starts || !ends || starts.length !== 1) return -1;
  const width = ends[0] - starts[0];
  return width > 0 && width < 2 ** 31 ? Math.round(starts[0] / width) : -1;
}

/** The MatMul multiplying the attention probabilities by V. */
function contextMatMul(softmax: Node, ctx: Context): Match<Node> {
  const probs = skipForward(softmax.outputs[0]!);
  const users = dataUses(probs);
  const matmuls = users.filter((u) => u.node.opType === 'MatMul' && u.index === 0 && !u.node.domain);
  if (matmuls.length !== 1 || users.length !== 1) {
    const list = users.map((u) => nodeLabel(u.node, ctx)).join(', ') || 'nothing';
    return fail(`the probabilities of ${nodeLabel(softmax, ctx)} should feed one MatMul with V, but are used by ${list}`, softmax);
  }
  return ok(matmuls[0].node);
}

/** From the context MatMul through the head merge to the output projection and its bias. */
function outputProjection(context: Node, ctx: Context): Match<Projection> {
  let v = context.outputs[0]!;
  for (let step = 0; step < 16; step++) {
    const uses = dataUses(v);
    if (uses.length !== 1) {
      return fail(`the attention context ${v.name} is used ${uses.length} times before any output projection`, context);
    }
    const { node, index } = uses[0];
    if (LAYOUT.has(node.opType) && !node.domain && index === 0) {
      v = node.outputs[0]!;
      continue;
    }
    if ((node.opType === 'MatMul' || node.opType === 'Gemm') && !node.domain && index === 0) {
      if (!isProjection(node)) return fail(`${nodeLabel(node, ctx)} after the attention context has no constant weight`, node);
      return ok(projectionAt(node, ctx, true));
    }
    return fail(`${nodeLabel(node, ctx)} follows the attention context where an output projection was expected`, node);
  }
  return fail('no output projection within 16 steps of the attention context', context);
}

/** Heads and head size from the shape of Q as it enters Q·Kᵀ. */
function headsOf(qh: Value, q: Projection, ctx: Context): Match<{ heads: number; headSize: number }> {
  const shape = ctx.shapes.shape(qh);
  const headSize = ctx.shapes.dim(qh, -1)?.constant;
  if (!shape || headSize === undefined) return fail(`the head size is unknown (shape of ${qh.name} not inferred)`);
  if (shape.length === 4 && shape[1]?.constant !== undefined) return ok({ heads: shape[1].constant, headSize });
  if (shape.length === 3 && shape[0] && shape[1]) {
    // heads folded into the batch: [batch*heads, seq, headSize]; the batch is what the input's dims
    // other than the sequence and the hidden size multiply to (the input may be [seq, batch, hidden])
    const outer = [...(ctx.shapes.shape(q.input) ?? [])].slice(0, -1);
    const seqAt = outer.findIndex((d) => d?.equals(shape[1]!));
    if (seqAt >= 0) outer.splice(seqAt, 1);
    const batch = product(outer);
    const folded = batch ? shape[0].divExact(batch)?.constant : undefined;
    if (folded !== undefined) return ok({ heads: folded, headSize });
  }
  return fail(`cannot tell the number of heads from ${qh.name} with shape of rank ${shape.length}`);
}

/**
 * com.microsoft Attention: QKV projection, scores, softmax and context in one node (inputs: x,
 * fused QKV weight [d, 3*inner], bias, mask_index, past, attention_bias). Its output still goes
 * through a separate output projection.
 */
export function matchFusedAttention(node: Node, ctx: Context): Match<AttentionBlock> {
  const [input, weights, bias, mask, past, attentionBias] = node.inputs;
  if (!input || !weights) return fail(`${nodeLabel(node, ctx)} lacks its input or weights`, node);
  if (past) return fail(`${nodeLabel(node, ctx)} reads a past key/value state (incremental decoding is not analyzed)`, node);
  const weight = weightOf(weights);
  const weightDims = ctx.shapes.shape(weights)?.map((d) => d?.constant);
  if (!weight || weightDims?.length !== 2 || weightDims[1] === undefined)
    return fail(`${nodeLabel(node, ctx)} has no constant 2-D QKV weight`, node);
  const heads = node.attrInt('num_heads');
  const sizes = node.attr('qkv_hidden_sizes')?.ints?.map(Number) ?? Array(3).fill(weightDims[1] / 3);
  const headSize = sizes[0] / heads;
  if (!Number.isInteger(headSize))
    return fail(`${nodeLabel(node, ctx)}: hidden size ${sizes[0]} is not a multiple of ${heads} heads`, node);
  const out = outputProjection(node, ctx);
  if (!out.ok) return out;
  const part = (index: number): Projection => ({
    matmul: node,
    input,
    weight,
    bias: bias ?? undefined,
    output: node.outputs[0]!,
    outFeatures: sizes[index],
    part: { node, index },
  });
  const terms: ScoreTerm[] = [];
  if (mask) {
    terms.push({
      node,
      value: mask,
      mode: 'select',
      keepWhen: true,
      kind: 'mask',
      inputs: dataInputs(mask, ctx),
      weights: [],
      causal: false,
      pattern: 'key padding (mask_index)',
    });
  }
  if (attentionBias) {
    terms.push({
      node,
      value: attentionBias,
      mode: 'add',
      kind: 'positionBias',
      inputs: dataInputs(attentionBias, ctx),
      weights: learnedTensors(attentionBias),
      causal: false,
      pattern: 'not evaluated',
    });
  }
  const causal = node.attrInt('unidirectional', 0) === 1;
  const scale = node.attrFloat('scale', 0) || 1 / Math.sqrt(headSize);
  const boundaries = new Set<Value>([input, ...terms.map((t) => t.value)]);
  return ok({
    kind: 'self',
    input,
    kvInput: input,
    output: out.value.output,
    query: part(0),
    key: part(1),
    value: part(2),
    outputProjection: out.value,
    fusedQkv: true,
    heads,
    headSize,
    scale,
    scores: node,
    softmax: node,
    context: node,
    terms,
    causal,
    nodes: exclusiveCone([out.value.output], boundaries, ctx),
  });
}
