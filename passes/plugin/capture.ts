// What fitting a plugin to a layer needs to see, as a model: for one layer's block (ffn, attention or the
// whole layer), its input x and its output y as the model computes them, u, what the mean plugin of ratio
// k restores in their place (the block run on the k-times shorter sequence), and which positions are real.
// A fitted restore is u + [u ; x] W: it is fitted to y from these (src/decide/fit-plugins.ts). Everything
// the four values do not need is dropped, so the model stops at the block's end.
//
// With the stream target, y is instead what the block must output for the stream leaving its sublayer to
// equal the ORIGINAL model's stream there (fed as the input vcompile_capture_target), given the current
// stream: y + (o - s) where s is the current stream after the residual add (pre-LN) and o the original's;
// post-LN, o is the original's output mapped back through the norm with the current pre-norm statistics
// (Norm^-1(o) = (o - beta) / gamma * sigma + mu; RMSNorm: o / gamma * rms), and s the current pre-norm sum,
// so that y* = Norm^-1(o) - stream_in. At layer scope the plugin's output is the stream: y* = o.
//
// With units (FFN scope), g is also captured: the block's own hidden units S at every position (columns S
// of the down projection's input), what the fitted plugin recomputes from x (passes/plugin/units.ts).
import type { Layer, NormMatch, Sublayer } from '../../src/analysis/index.js';
import type { GraphBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { VersionedOps } from '../../src/ir/ops.js';
import { DataType, type IrType, tensorType } from '../../src/ir/types.js';
import { analyzeFor } from '../common/blocks.js';
import { buildMeanPlugin, type Scope } from './builtin.js';
import { checkPluginContract } from './contract.js';
import { PluginRewriter, place } from './index.js';

/** The graph outputs of a capture model, in this order (the last only with units). */
export const CAPTURED = [
  'vcompile_capture_x',
  'vcompile_capture_u',
  'vcompile_capture_y',
  'vcompile_capture_keep',
  'vcompile_capture_g',
] as const;
/** With the stream target: the input taking the original model's stream at `streamAfter`. */
export const CAPTURE_TARGET = 'vcompile_capture_target';

/** What a restore is fitted to: the original block's output on the same input, or the original model's stream. */
export type FitTarget = 'block' | 'stream';
export const FIT_TARGETS: readonly FitTarget[] = ['block', 'stream'];

export interface CaptureOptions {
  /** the layer (as the model's analysis numbers them) */
  layer: number;
  scope: Scope;
  ratio: number;
  /** 'stream': y is the stream target, from the input vcompile_capture_target (default 'block') */
  target?: FitTarget;
  /** FFN scope: the hidden units captured as g */
  units?: readonly number[];
}

/** The stream the stream target reproduces: the one leaving the block's sublayer (the layer's output at layer scope). */
export function streamAfter(layer: Layer, scope: Scope): Value {
  return scope === 'layer' ? layer.output : sublayerOf(layer, scope).streamOut;
}

function sublayerOf(layer: Layer, scope: 'ffn' | 'attention'): Sublayer {
  const kind = scope === 'ffn' ? 'ffn' : 'self-attention';
  const sublayer = layer.sublayers.find((s) => s.kind === kind);
  if (!sublayer) throw new Error(`internal: layer ${layer.index} has no ${kind} sublayer`);
  return sublayer;
}

/** Rewrite `model` (in place) into the capture model of `options.layer`; returns its outputs. */
export function captureBlock(model: Model, options: CaptureOptions): { x: Value; u: Value; y: Value; keep: Value; g?: Value } {
  const analysis = analyzeFor(model, 'a capture');
  const layer = analysis.layers[options.layer];
  if (!layer) throw new Error(`internal: capture of layer ${options.layer}, but the model has ${analysis.layers.length}`);
  const opset = model.opsetVersion('') ?? 17;
  const mean = buildMeanPlugin({ ratio: options.ratio, hidden: analysis.hidden, scope: options.scope, opset });
  const plugin = checkPluginContract(mean, `builtin:mean:${options.ratio}:${options.scope}`, '');
  const p = place(layer, plugin, analysis);
  const rewriter = new PluginRewriter(model);
  const main = rewriter.builder(model.graph, p);
  const u = rewriter.compressedRun(p, main, main);
  const keep = rewriter.realPositions(p, main);
  const stream = tensorType(DataType.FLOAT, ['batch', 'seq', analysis.hidden]);
  const target =
    options.target === 'stream' ? streamTarget(main, new VersionedOps(main, opset), layer, options.scope, p.output, stream) : p.output;
  const outputs = [
    named(main, p.hidden, CAPTURED[0], stream),
    named(main, u, CAPTURED[1], stream),
    named(main, target, CAPTURED[2], stream),
    named(main, keep, CAPTURED[3], tensorType(DataType.FLOAT, ['batch', 'seq'])),
  ];
  const units = options.units?.length
    ? unitsAt(main, new VersionedOps(main, opset), layer, options.scope, options.units, p.hidden)
    : undefined;
  if (units) outputs.push(named(main, units, CAPTURED[4], tensorType(DataType.FLOAT, ['batch', 'seq', options.units!.length])));
  model.graph.outputs = outputs;
  rewriter.finish();
  const [x, uOut, y, keepOut, g] = outputs;
  return { x, u: uOut, y, keep: keepOut, ...(g ? { g } : {}) };
}

/** Columns `units` of the FFN's down projection input, as [batch, seq, m] (the block may work on [batch*seq, f]). */
function unitsAt(b: GraphBuilder, ops: VersionedOps, layer: Layer, scope: Scope, units: readonly number[], x: Value): Value {
  if (scope !== 'ffn') throw new Error(`internal: units at ${scope} scope`);
  const picked = b.op.Gather(layer.ffn.down.input, b.int64s('units', units), { axis: -1 });
  const rows = ops.slice(b.op.Shape(x), b.int64s('s', [0]), b.int64s('e', [2]), 0);
  return b.op.Reshape(picked, b.op.Concat(rows, b.int64s('m', [units.length]), { axis: 0 }));
}

/** The block output y* that makes the stream after the block's sublayer the original model's (fed as CAPTURE_TARGET). */
function streamTarget(b: GraphBuilder, ops: VersionedOps, layer: Layer, scope: Scope, y: Value, type: IrType): Value {
  const original = b.input(CAPTURE_TARGET, type);
  if (scope === 'layer') return original;
  const sublayer = sublayerOf(layer, scope);
  if (sublayer.placement === 'pre') return b.op.Add(y, b.op.Sub(original, sublayer.streamOut));
  const sum = preNorm(b, sublayer.norm);
  return b.op.Add(y, inverseNorm(b, ops, sublayer.norm, original, sum));
}

/** The norm's input: the residual sum (a fused SkipLayerNormalization without its sum output: input + skip + bias). */
function preNorm(b: GraphBuilder, norm: NormMatch): Value {
  const fused = norm.fusedResidual;
  if (!fused || norm.input !== fused.inputs[0]) return norm.input;
  const sum = b.op.Add(fused.inputs[0]!, fused.inputs[1]!);
  return fused.inputs[4] ? b.op.Add(sum, fused.inputs[4]) : sum;
}

/**
 * Norm^-1(o) - sum, Norm^-1 with the statistics of `sum`: ((o - beta) / gamma) * sigma + mu - sum (RMSNorm:
 * o / gamma * rms - sum). Where gamma is 0 the norm's output does not depend on its input: 0 there.
 */
function inverseNorm(b: GraphBuilder, ops: VersionedOps, norm: NormMatch, o: Value, sum: Value): Value {
  const mean = norm.kind === 'layernorm' ? ops.reduce('ReduceMean', sum, [-1], true) : undefined;
  const centred = mean ? b.op.Sub(sum, mean) : sum;
  const spread = b.op.Sqrt(
    b.op.Add(ops.reduce('ReduceMean', b.op.Mul(centred, centred), [-1], true), b.scalar('epsilon', norm.epsilon ?? 0)),
  );
  let normalized = norm.bias ? b.op.Sub(o, norm.bias) : o;
  let live: Value | undefined;
  if (norm.scale) {
    const zero = b.op.Equal(norm.scale, b.scalar('zero', 0));
    const [none, one] = [b.scalar('none', 0), b.scalar('one', 1)];
    normalized = b.op.Div(normalized, b.op.Where(zero, one, norm.scale));
    live = b.op.Where(zero, none, one);
  }
  const restored = b.op.Mul(normalized, spread);
  const delta = b.op.Sub(mean ? b.op.Add(restored, mean) : restored, sum);
  return live ? b.op.Mul(delta, live) : delta;
}

/** An Identity of `v` under the name `name` (graph outputs must not alias inputs or each other). */
function named(b: GraphBuilder, v: Value, name: string, type: IrType): Value {
  const out = b.op.Identity(v);
  b.names.claim(name);
  out.name = name;
  out.type = type;
  return out;
}
