// What fitting a plugin to a layer needs to see, as a model: for one layer's block (ffn, attention or the
// whole layer), its input x and its output y as the model computes them, u, what the mean plugin of ratio
// k restores in their place (the block run on the k-times shorter sequence), and which positions are real.
// A fitted restore is u + [u ; x] W: it is fitted to y from these (src/decide/fit-plugins.ts). Everything
// the four values do not need is dropped, so the model stops at the block's end.
import type { GraphBuilder } from '../../src/ir/builder.js';
import type { Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { DataType, type IrType, tensorType } from '../../src/ir/types.js';
import { analyzeFor } from '../common/blocks.js';
import { buildMeanPlugin, type Scope } from './builtin.js';
import { checkPluginContract } from './contract.js';
import { PluginRewriter, place } from './index.js';

/** The graph outputs of a capture model, in this order. */
export const CAPTURED = ['vcompile_capture_x', 'vcompile_capture_u', 'vcompile_capture_y', 'vcompile_capture_keep'] as const;

export interface CaptureOptions {
  /** the layer (as the model's analysis numbers them) */
  layer: number;
  scope: Scope;
  ratio: number;
}

/** Rewrite `model` (in place) into the capture model of `options.layer`; returns the four outputs. */
export function captureBlock(model: Model, options: CaptureOptions): { x: Value; u: Value; y: Value; keep: Value } {
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
  const outputs = [
    named(main, p.hidden, CAPTURED[0], stream),
    named(main, u, CAPTURED[1], stream),
    named(main, p.output, CAPTURED[2], stream),
    named(main, keep, CAPTURED[3], tensorType(DataType.FLOAT, ['batch', 'seq'])),
  ];
  model.graph.outputs = outputs;
  rewriter.finish();
  const [x, uOut, y, keepOut] = outputs;
  return { x, u: uOut, y, keep: keepOut };
}

/** An Identity of `v` under the name `name` (graph outputs must not alias inputs or each other). */
function named(b: GraphBuilder, v: Value, name: string, type: IrType): Value {
  const out = b.op.Identity(v);
  b.names.claim(name);
  out.name = name;
  out.type = type;
  return out;
}
