// What fitting a module to a span needs to see, as a model (the fit itself: src/decide/fit-modules.ts).
// The model is sliced at the span's input (the stream is a graph input), so its layer 0 is the span's
// first layer and layer `end` its last. Its own nodes give the teacher y, the stream leaving the span.
// The module candidate is the first layer's structure: for keep-first, layer 0 itself; for average, a
// copy of layer 0's nodes reading the span's mean weights (as the modular pass builds builtin:average).
// From the candidate's last (feed-forward) sublayer, with h its residual input, a the input of its down
// projection and inc = a W + b that projection's result:
//   pre-LN   out = h + inc                the target t = y - h
//   post-LN  out = Norm(z), z = h + inc   the target t = z* - h, with z* the pre-image of y through the
//            norm that keeps the candidate's own per-position statistics:
//              LayerNorm: z* = mean(z) + std(z) (y - beta) / gamma   (std(z) = sqrt(var(z) + eps))
//              RMSNorm:   z* = rms(z) y / gamma                      (rms(z) = sqrt(mean(z^2) + eps))
//            so that Norm(z*) = y exactly when y - beta over gamma has zero mean (unit rms), and nearly
//            otherwise; where |gamma| < 1e-6 the component keeps z (nothing there can be fitted).
// A fit that makes inc equal t per position makes out equal y (pre-LN), or puts z where y maps back
// (post-LN: the fitted module's error is measured in its output, after the norm, to choose a variant).
// Outputs: a [batch, seq, f], inc, t and y [batch, seq, d], keep [batch, seq] (1 at real positions, from
// the model's padding mask: passes/plugin/keep.ts), and with `context` the context features c [batch, seq,
// 3d] of h (passes/modular/context.ts). Everything else is dropped.
import { analyzeTransformer } from '../../src/analysis/index.js';
import type { GraphBuilder } from '../../src/ir/builder.js';
import { GraphBuilder as Builder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { NameAuthority } from '../../src/ir/names.js';
import { VersionedOps } from '../../src/ir/ops.js';
import { cloneNodes, eliminateDeadCode, toposort } from '../../src/ir/transforms.js';
import { DataType, type IrType, tensorType } from '../../src/ir/types.js';
import { findPaddingMask, keepOf } from '../plugin/keep.js';
import { averageLayers } from './average.js';
import { CONTEXT_PARTS, contextFeatures } from './context.js';
import { fitSite } from './fitted.js';
import { constantDerived, describeSpan } from './span.js';

/** The graph outputs of a module capture model, in this order. */
export const MODULE_CAPTURED = [
  'vcompile_capture_a',
  'vcompile_capture_inc',
  'vcompile_capture_target',
  'vcompile_capture_y',
  'vcompile_capture_keep',
] as const;
export const MODULE_CAPTURED_CONTEXT = 'vcompile_capture_context';

export type ModuleInit = 'keep-first' | 'average';
export const MODULE_INITS: readonly ModuleInit[] = ['keep-first', 'average'];

export interface ModuleCapture {
  a: Value;
  inc: Value;
  target: Value;
  y: Value;
  keep: Value;
  /** c [batch, seq, 3d], when asked for */
  context?: Value;
}

/** Below this |gamma| a post-LN target component keeps the candidate's own value. */
const TINY_GAMMA = 1e-6;

/**
 * Rewrite `model` (in place; sliced so that layer 0 starts the span and layer `end` ends it) into the
 * capture model of a module replacing layers 0..`end` that starts as `init`. The span was checked on
 * the whole model before (fitSite, averageLayers): a failure here is internal.
 */
export function captureModule(model: Model, end: number, init: ModuleInit, options: { context?: boolean } = {}): ModuleCapture {
  const analysis = analyzeTransformer(model);
  if (analysis.error) throw new Error(`internal: the sliced model does not analyze: ${analysis.error.message}`);
  const what = 'module capture';
  const site = fitSite(analysis, 0, what);
  const last = analysis.layers[end];
  if (!last) throw new Error(`internal: capture of layers 0-${end}, but the sliced model has ${analysis.layers.length}`);
  const names = NameAuthority.forModel(model);
  const b = new Builder(model.graph, names, { prefix: 'vcompile/capture/' });
  const ops = new VersionedOps(b, model.opsetVersion('') ?? 17);
  // the candidate's values: layer 0's own, or those of its copy with the span's mean weights
  const mapping = new Map<Value, Value>();
  if (init === 'average') {
    const constants = constantDerived(model.graph);
    const averaged = averageLayers(describeSpan(analysis, 0, end, constants, what), analysis, constants, what);
    for (const [weight, mean] of averaged.means) mapping.set(weight, b.initializer(weight.name, mean));
    cloneNodes(averaged.nodes, b, mapping);
  }
  const at = (v: Value) => mapping.get(v) ?? v;
  const h = at(site.ffn.streamIn);
  const a = at(site.down.input);
  const inc = at(site.ffn.ffn!.output);
  const y = last.output;
  let target: Value;
  if (site.ffn.placement === 'pre') {
    target = b.op.Sub(y, h);
  } else {
    const norm = site.ffn.norm;
    const z = at(norm.input);
    const mean = (v: Value) => ops.reduce('ReduceMean', v, [-1], true);
    const epsilon = b.scalar('epsilon', norm.epsilon ?? 1e-5);
    const gamma = norm.scale ? at(norm.scale) : undefined;
    const tiny = gamma && b.op.Less(b.op.Abs(gamma), b.scalar('tiny', TINY_GAMMA));
    const unscaled = (v: Value) => (gamma ? b.op.Div(v, b.op.Where(tiny!, b.scalar('one', 1), gamma)) : v);
    let preimage: Value;
    if (norm.kind === 'rmsnorm') {
      const rms = b.op.Sqrt(b.op.Add(mean(b.op.Mul(z, z)), epsilon));
      preimage = b.op.Mul(rms, unscaled(y));
    } else {
      const mu = mean(z);
      const centered = b.op.Sub(z, mu);
      const std = b.op.Sqrt(b.op.Add(mean(b.op.Mul(centered, centered)), epsilon));
      preimage = b.op.Add(mu, b.op.Mul(std, unscaled(norm.bias ? b.op.Sub(y, at(norm.bias)) : y)));
    }
    if (tiny) preimage = b.op.Where(tiny, z, preimage);
    target = b.op.Sub(preimage, h);
  }
  const stream = site.layer.input;
  const keep = keepOf(b, ops, findPaddingMask(site.layer.selfAttention, stream, analysis.context), stream);
  const d = site.hidden;
  const rows = (width: number) => tensorType(DataType.FLOAT, ['batch', 'seq', width]);
  const outputs = [
    named(b, a, MODULE_CAPTURED[0], rows(site.inner)),
    named(b, inc, MODULE_CAPTURED[1], rows(d)),
    named(b, target, MODULE_CAPTURED[2], rows(d)),
    named(b, y, MODULE_CAPTURED[3], rows(d)),
    named(b, keep, MODULE_CAPTURED[4], tensorType(DataType.FLOAT, ['batch', 'seq'])),
  ];
  const context = options.context
    ? named(b, contextFeatures(b, ops, h, keep, d), MODULE_CAPTURED_CONTEXT, rows(CONTEXT_PARTS * d))
    : undefined;
  model.graph.outputs = context ? [...outputs, context] : outputs;
  eliminateDeadCode(model.graph);
  toposort(model.graph);
  const [aOut, incOut, targetOut, yOut, keepOut] = outputs;
  return { a: aOut, inc: incOut, target: targetOut, y: yOut, keep: keepOut, context };
}

/** An Identity of `v` under the name `name` (graph outputs must not alias inputs or each other). */
function named(b: GraphBuilder, v: Value, name: string, type: IrType): Value {
  const out = b.op.Identity(v);
  b.names.claim(name);
  out.name = name;
  out.type = type;
  return out;
}
