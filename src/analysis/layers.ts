// The layer walk: find every attention block, wrap each in its residual add and norm (pre-LN:
// x + attn(norm(x)); post-LN: norm(x + attn(x))), then follow the residual stream from block to block:
// self-attention, optional cross-attention, feed-forward, next layer. A walk that cannot go on stops
// with the layer and node where it stopped, and keeps the layers found before.
import type { Node, Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { type AttentionBlock, matchAttention, matchFusedAttention } from './attention.js';
import { type FfnBlock, matchFfn } from './ffn.js';
import { sumMacs } from './flops.js';
import { findNormAfter, matchNorm, type NormKind, type NormMatch, SKIP_NORMS } from './norms.js';
import {
  type Context,
  dataUses,
  dependsOn,
  fail,
  isParameter,
  type Match,
  makeContext,
  nodeLabel,
  ok,
  otherOperand,
  skipBack,
  skipForward,
} from './patterns.js';
import { regionBetween } from './region.js';
import type { Expr } from './symbolic.js';

export type Placement = 'pre' | 'post';

/** One residual branch: stream -> [norm] -> block -> residual add -> [norm] -> stream. */
export interface Sublayer {
  kind: 'self-attention' | 'cross-attention' | 'ffn';
  placement: Placement;
  /** the residual stream value entering and leaving the sublayer */
  streamIn: Value;
  streamOut: Value;
  /** the norm before the block (pre-LN) or after the residual add (post-LN) */
  norm: NormMatch;
  residualAdd: Node;
  attention?: AttentionBlock;
  ffn?: FfnBlock;
  /**
   * A term added to the feed-forward block's output before the residual add, computed from the sublayer's
   * stream but not by the block (a fitted module's context maps: passes/modular/context.ts): its Add, and
   * the value it adds.
   */
  side?: { add: Node; value: Value };
  /** block, norm and residual add nodes (and the side term's, from the stream on) */
  nodes: Node[];
}

export interface Layer {
  /** position over all stacks, in execution order */
  index: number;
  stack: 'encoder' | 'decoder';
  stackIndex: number;
  /** the residual stream value entering and leaving the layer */
  input: Value;
  output: Value;
  placement: Placement;
  normKind: NormKind;
  selfAttention: AttentionBlock;
  crossAttention?: AttentionBlock;
  ffn: FfnBlock;
  sublayers: Sublayer[];
  nodes: Node[];
  /** weights owned by the layer (a weight shared by several layers belongs to the first) */
  params: Value[];
  paramCount: number;
  /** MACs as a polynomial in the model's symbolic dims */
  macs: Expr;
  /** nodes whose MACs could not be derived from shapes */
  macsUnknown: Node[];
}

export interface Stack {
  kind: 'encoder' | 'decoder';
  layers: Layer[];
  input: Value;
  output: Value;
}

export interface AnalysisError {
  message: string;
  /** the layer being matched when the walk stopped */
  layer?: number;
  node?: Node;
}

export interface TransformerAnalysis {
  layers: Layer[];
  stacks: Stack[];
  hidden?: number;
  /** set when the walk stopped before understanding the whole graph */
  error?: AnalysisError;
  /** things looked at and set aside, e.g. a Softmax over logits */
  notes: string[];
  context: Context;
}

interface Pending {
  anchor: Node;
  /** a value the failed block reads, to place the failure on the stream */
  reads: Value;
  reason: string;
  node?: Node;
}

/** Find the transformer layers of `model`'s main graph. */
export function analyzeTransformer(model: Model): TransformerAnalysis {
  const ctx = makeContext(model);
  const notes: string[] = [];
  const skipped: Pending[] = [];
  const pending: Pending[] = [];
  const sublayers: Sublayer[] = [];
  for (const node of ctx.graph.nodes) {
    const isSoftmax = node.opType === 'Softmax' && !node.domain;
    const isFused = node.opType === 'Attention' && node.domain === 'com.microsoft';
    if (!isSoftmax && !isFused) continue;
    const block = isFused ? matchFusedAttention(node, ctx) : matchAttention(node, ctx);
    if (!block.ok) {
      if (block.unrelated) {
        const reason = `${nodeLabel(node, ctx)} is not an attention softmax: ${block.reason}`;
        notes.push(reason);
        skipped.push({ anchor: node, reads: node.inputs[0]!, reason, node });
      } else
        pending.push({
          anchor: node,
          reads: node.inputs[0]!,
          reason: `attention at ${nodeLabel(node, ctx)}: ${block.reason}`,
          node: block.node ?? node,
        });
      continue;
    }
    const wrapped = wrapAttention(block.value, ctx);
    if (wrapped.ok) sublayers.push(wrapped.value);
    else pending.push({ anchor: node, reads: block.value.input, reason: wrapped.reason, node: wrapped.node });
  }
  const result: TransformerAnalysis = { layers: [], stacks: [], notes, context: ctx };
  const walk = new Walk(ctx, sublayers, pending, skipped, result);
  walk.run();
  result.hidden = result.layers.length ? ctx.shapes.dim(result.layers[0].input, -1)?.constant : undefined;
  if (!result.error && result.layers.length === 0) {
    result.error = {
      message: `no transformer layer found: ${notes.length ? notes.join('; ') : 'the graph has no Softmax and no com.microsoft Attention node'}`,
    };
  }
  return result;
}

/** Put an attention block in its residual branch. */
function wrapAttention(block: AttentionBlock, ctx: Context): Match<Sublayer> {
  const kind = block.kind === 'self' ? 'self-attention' : 'cross-attention';
  const y = skipForward(block.output);
  const post = residualJoin(y, block.input, ctx);
  if (post) {
    const norm = post.norm ?? (post.sum && findNormAfter(post.sum, ctx));
    if (!norm) return fail(`no norm after the residual add ${nodeLabel(post.node, ctx)} of the ${kind} block`, post.node);
    block.outputProjection.bias ??= post.bias;
    return ok(sublayer(kind, 'post', block.input, norm.output, norm, post.node, { attention: block }, block.nodes));
  }
  const pre = matchNorm(block.input, ctx);
  const join = pre.ok ? residualJoin(y, pre.value.input, ctx) : undefined;
  if (pre.ok && join) {
    if (!join.sum)
      return fail(`the residual ${nodeLabel(join.node, ctx)} of the ${kind} block does not output the stream it computes`, join.node);
    block.outputProjection.bias ??= join.bias;
    return ok(sublayer(kind, 'pre', pre.value.input, join.sum, pre.value, join.node, { attention: block }, block.nodes));
  }
  const at = block.outputProjection.biasAdd ?? block.outputProjection.matmul;
  return fail(
    `no residual add after the ${kind} block at node ${nodeLabel(at, ctx)}: its output ${y.name} is used by ${usesOf(y, ctx)}`,
    at,
  );
}

/** Where a block's result `y` joins the stream: an Add, or a SkipLayerNormalization (add and norm fused). */
interface Join {
  node: Node;
  /** the new stream value (the Add's result, or the fused node's sum output if it has one) */
  sum?: Value;
  /** the fused norm */
  norm?: NormMatch;
  /** the block's output bias when the fused node adds it */
  bias?: Value;
}

function residualJoin(y: Value, stream: Value, ctx: Context): Join | undefined {
  for (const { node } of dataUses(y)) {
    if (node.opType === 'Add' && !node.domain && sameStream(otherOperand(node, y), stream)) return { node, sum: node.outputs[0]! };
    if (node.domain === 'com.microsoft' && SKIP_NORMS[node.opType]) {
      const [a, b] = node.inputs;
      const joins = (a === y && b && sameStream(b, stream)) || (b === y && a && sameStream(a, stream));
      if (!joins) continue;
      const norm = matchNorm(node.outputs[0]!, ctx);
      return { node, sum: node.outputs[3] ?? undefined, norm: norm.ok ? norm.value : undefined, bias: node.inputs[4] ?? undefined };
    }
  }
  return undefined;
}

function sameStream(a: Value | undefined, b: Value): boolean {
  return !!a && skipBack(a) === skipBack(b);
}

function usesOf(v: Value, ctx: Context): string {
  const list = dataUses(v).map((u) => nodeLabel(u.node, ctx));
  if (v.isGraphOutput) list.push('the graph output');
  return list.join(', ') || 'nothing';
}

function sublayer(
  kind: Sublayer['kind'],
  placement: Placement,
  streamIn: Value,
  streamOut: Value,
  norm: NormMatch,
  residualAdd: Node,
  block: { attention?: AttentionBlock; ffn?: FfnBlock },
  blockNodes: Node[],
): Sublayer {
  const nodes = [...new Set([...blockNodes, ...norm.nodes, residualAdd])];
  return { kind, placement, streamIn, streamOut, norm, residualAdd, ...block, nodes };
}

/** The feed-forward branch on stream `t`. */
function ffnSublayer(t: Value, placement: Placement, ctx: Context): Match<Sublayer> {
  let input = t;
  let preNorm: NormMatch | undefined;
  if (placement === 'pre') {
    preNorm = findNormAfter(t, ctx);
    if (!preNorm)
      return fail(`no norm before the feed-forward block: the stream ${t.name} is used by ${usesOf(t, ctx)}`, t.producer ?? undefined);
    input = preNorm.output;
  }
  const ffn = matchFfn(input, ctx);
  if (!ffn.ok) return fail(`feed-forward block: ${ffn.reason}`, ffn.node);
  const block = skipForward(ffn.value.output);
  const side = residualJoin(block, t, ctx) ? undefined : sideTerm(block, t, ctx);
  const y = side ? skipForward(side.add.outputs[0]!) : block;
  const join = residualJoin(y, t, ctx);
  const at = ffn.value.down.biasAdd ?? ffn.value.down.matmul;
  if (!join)
    return fail(
      `no residual add after the feed-forward block at node ${nodeLabel(at, ctx)}: its output ${y.name} is used by ${usesOf(y, ctx)}`,
      at,
    );
  if (!side) ffn.value.down.bias ??= join.bias;
  const nodes = side ? [...ffn.value.nodes, ...regionBetween(t, side.value, ctx.graph.nodes), side.add] : ffn.value.nodes;
  let made: Sublayer;
  if (placement === 'pre') {
    if (!join.sum)
      return fail(`the residual ${nodeLabel(join.node, ctx)} of the feed-forward block does not output the stream it computes`, join.node);
    made = sublayer('ffn', 'pre', t, join.sum, preNorm!, join.node, { ffn: ffn.value }, nodes);
  } else {
    const norm = join.norm ?? (join.sum && findNormAfter(join.sum, ctx));
    if (!norm) return fail(`no norm after the residual add ${nodeLabel(join.node, ctx)} of the feed-forward block`, join.node);
    made = sublayer('ffn', 'post', t, norm.output, norm, join.node, { ffn: ffn.value }, nodes);
  }
  return ok(side ? { ...made, side } : made);
}

/**
 * A side term between the feed-forward block's output `y` and the residual add: y's one use is a plain Add of
 * a value that does not depend on y, and that Add's result joins the stream `t`.
 */
function sideTerm(y: Value, t: Value, ctx: Context): Sublayer['side'] {
  const uses = dataUses(y);
  if (uses.length !== 1 || y.isGraphOutput) return undefined;
  const add = uses[0].node;
  if (add.opType !== 'Add' || add.domain) return undefined;
  const value = otherOperand(add, y);
  if (!value || value === y || dependsOn(value, y) || !residualJoin(skipForward(add.outputs[0]!), t, ctx)) return undefined;
  return { add, value };
}

/** Follows the stream stack by stack; records layers, or the first error, in `result`. */
class Walk {
  private readonly visited = new Set<Sublayer>();
  private readonly owned = new Set<Value>();

  constructor(
    private readonly ctx: Context,
    private readonly sublayers: Sublayer[],
    private readonly pending: Pending[],
    private readonly skipped: Pending[],
    private readonly result: TransformerAnalysis,
  ) {}

  run(): void {
    // stacks start at self-attention blocks, in graph order; a block that could not be matched and comes
    // before the next start (and was not met on a stack walked so far) is the first layer of a stack
    for (const start of this.sublayers) {
      if (this.visited.has(start) || start.kind !== 'self-attention') continue;
      const at = this.ctx.order.get(start.attention!.softmax)!;
      const before = this.pending.find((p) => this.ctx.order.get(p.anchor)! < at);
      if (before) {
        this.stop(`layer ${this.result.layers.length}: ${before.reason}`, before.node ?? before.anchor, this.result.layers.length);
        return;
      }
      if (!this.checkGap(start)) return;
      if (!this.walkStack(start.streamIn)) return;
    }
    const stray = this.sublayers.find((s) => !this.visited.has(s));
    if (stray) {
      const softmax = stray.attention!.softmax;
      this.stop(`the ${stray.kind} block at ${nodeLabel(softmax, this.ctx)} is not part of any layer`, softmax);
      return;
    }
    const left = this.pending[0];
    if (left) this.stop(`layer ${this.result.layers.length}: ${left.reason}`, left.node ?? left.anchor, this.result.layers.length);
  }

  /**
   * Before a stack starts: a Softmax set aside as "not attention" that the stack's input depends on
   * may be a layer the matcher missed, and starting the stack after it would be a guess. A stack that
   * continues from an earlier one otherwise (stages of a hierarchical model) is noted.
   */
  private checkGap(start: Sublayer): boolean {
    const begin = this.ctx.order.get(start.attention!.softmax)!;
    const walked = new Set(this.result.layers.flatMap((l) => l.nodes));
    const missed = this.skipped.find(
      (s) => this.ctx.order.get(s.anchor)! < begin && !walked.has(s.anchor) && dependsOn(start.streamIn, s.anchor.outputs[0]!),
    );
    const index = this.result.layers.length;
    if (missed)
      return this.stop(
        `layer ${index}: before the attention block at ${nodeLabel(start.attention!.softmax, this.ctx)}, ${missed.reason}`,
        missed.node,
        index,
      );
    const previous = this.result.stacks.filter((s) => dependsOn(start.streamIn, s.output)).pop();
    if (previous) {
      const from = this.result.stacks.indexOf(previous);
      this.result.notes.push(
        `stack ${this.result.stacks.length} continues from the output ${previous.output.name} of stack ${from} through nodes that are not transformer layers`,
      );
    }
    return true;
  }

  /** Walk one stack from stream value `t`; false when the walk stopped on an error. */
  private walkStack(streamIn: Value): boolean {
    const layers: Layer[] = [];
    let t = streamIn;
    for (;;) {
      const index = this.result.layers.length;
      const self = this.at(t, 'self-attention');
      if (!self.ok) return this.stop(`layer ${index}: ${self.reason}`, self.node, index);
      if (!self.value) break;
      const parts: Sublayer[] = [self.value];
      t = self.value.streamOut;
      for (;;) {
        const cross = this.at(t, 'cross-attention');
        if (!cross.ok) return this.stop(`layer ${index}: ${cross.reason}`, cross.node, index);
        if (!cross.value) break;
        parts.push(cross.value);
        t = cross.value.streamOut;
      }
      const ffn = ffnSublayer(t, self.value.placement, this.ctx);
      if (!ffn.ok) return this.stop(`layer ${index}: ${ffn.reason}`, ffn.node, index);
      parts.push(ffn.value);
      t = ffn.value.streamOut;
      const layer = this.makeLayer(index, parts);
      layers.push(layer);
      this.result.layers.push(layer);
    }
    if (layers.length === 0) return true;
    const kind = layers.some((l) => l.selfAttention.causal || l.crossAttention) ? 'decoder' : 'encoder';
    const stackIndex = this.result.stacks.length;
    for (const l of layers) {
      l.stack = kind;
      l.stackIndex = stackIndex;
    }
    this.result.stacks.push({ kind, layers, input: streamIn, output: t });
    return true;
  }

  /**
   * The unvisited attention branch of `kind` on stream `t`: ok(undefined) when there is none, a failure
   * when a block that could not be matched reads this stream next.
   */
  private at(t: Value, kind: Sublayer['kind']): Match<Sublayer | undefined> {
    const found = this.sublayers.filter((s) => s.kind === kind && s.streamIn === t && !this.visited.has(s));
    if (found.length > 1) return fail(`${found.length} ${kind} blocks read the stream ${t.name}`, found[1].attention!.softmax);
    if (found.length === 1) {
      this.visited.add(found[0]);
      return ok(found[0]);
    }
    if (kind === 'self-attention') {
      const blocked = this.pending.findIndex((p) => p.reads === t || dependsOn(p.reads, t));
      if (blocked >= 0 && this.nextOnStream(t, this.pending[blocked].anchor)) {
        const [p] = this.pending.splice(blocked, 1);
        return fail(p.reason, p.node ?? p.anchor);
      }
    }
    return ok(undefined);
  }

  /** Whether no recognized attention block on `t`'s stream comes before `anchor`. */
  private nextOnStream(t: Value, anchor: Node): boolean {
    const at = this.ctx.order.get(anchor)!;
    return !this.sublayers.some((s) => !this.visited.has(s) && this.ctx.order.get(s.attention!.softmax)! < at && dependsOn(s.streamIn, t));
  }

  private makeLayer(index: number, parts: Sublayer[]): Layer {
    const self = parts[0];
    const cross = parts.find((p) => p.kind === 'cross-attention');
    const ffn = parts[parts.length - 1];
    const nodes = [...new Set(parts.flatMap((p) => p.nodes))].sort((a, b) => this.ctx.order.get(a)! - this.ctx.order.get(b)!);
    const params = this.claimParams(nodes, parts);
    const { macs, unknown } = sumMacs(nodes, this.ctx.shapes);
    return {
      index,
      stack: 'encoder',
      stackIndex: 0,
      input: self.streamIn,
      output: ffn.streamOut,
      placement: self.placement,
      normKind: self.norm.kind,
      selfAttention: self.attention!,
      crossAttention: cross?.attention,
      ffn: ffn.ffn!,
      sublayers: parts,
      nodes,
      params,
      paramCount: params.reduce((sum, v) => sum + v.constTensor()!.size, 0),
      macs,
      macsUnknown: unknown,
    };
  }

  /** Learned tensors read by the layer's nodes or by its position bias, not claimed by an earlier layer. */
  private claimParams(nodes: Node[], parts: Sublayer[]): Value[] {
    const mine: Value[] = [];
    // A pre-LN branch ending in SkipLayerNormalization: the node's scale and shift normalize for the
    // next branch, which may be in the next layer or be the final norm; its bias is this block's.
    const notMine = new Set<Value>();
    const ownNorms = new Set(parts.map((p) => p.norm.fusedResidual));
    for (const part of parts) {
      const fused = part.residualAdd;
      if (part.placement === 'pre' && SKIP_NORMS[fused.opType] && fused.domain === 'com.microsoft' && !ownNorms.has(fused)) {
        for (const v of fused.inputs.slice(2, 4)) if (v) notMine.add(v);
      }
    }
    const claim = (v: Value) => {
      if (this.owned.has(v) || notMine.has(v) || !isParameter(v)) return;
      this.owned.add(v);
      mine.push(v);
    };
    for (const node of nodes) for (const input of node.inputs) if (input) claim(input);
    for (const part of parts) {
      for (const term of part.attention?.terms ?? []) if (term.kind === 'positionBias') term.weights.forEach(claim);
    }
    return mine;
  }

  private stop(message: string, node?: Node, layer?: number): false {
    this.result.error = { message, node, layer };
    return false;
  }
}
