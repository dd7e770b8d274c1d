// One model, many speeds: every wrapped block becomes one If node per ratio, side by side in the main
// graph, each computing, when the graph input `vcompile_ratio` (int64 scalar, with a default) equals its
// ratio, the block wrapped in the plugin of that ratio, or the block as it is (ratio 1). Branches read the
// backbone's weights from the main graph, so they are stored once; plugin weights and pooled masks live in
// the main graph too. Every weight is read exactly one If level deep: ONNX Runtime (1.30) prepacks the
// MatMul weights a branch reads from the main graph, but not those read two or more levels deep, which at
// batch 1 cost 13-20 ms per call on a BERT-base model. An unknown ratio fails at run time in a node whose
// name says which ratios the model has.
//
// For ratios r1 < ... < rN, per layer:
//   part_ri = If(ratio == ri, then: block at ri, else: an empty [batch, 0, d] slice)   for i < N
//   result  = If(ratio == rN, then: block at rN,
//                else: If(ratio in {r1..rN-1}, then: Concat(part_r1, ..., part_rN-1) on the sequence axis,
//                                              else: a Reshape that fails, named for the error))
// so an untaken ratio costs an If and an empty slice, and every ratio but the last one copy of the block's
// result. Every If output and branch output is typed (symbolic dims kept), so ONNX Runtime has no shapes
// to merge and prints no warning.
import type { ShapeTable, TransformerAnalysis } from '../../src/analysis/index.js';
import { msg, option, VcompileError } from '../../src/errors.js';
import { GraphBuilder } from '../../src/ir/builder.js';
import type { Graph, Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType, type Dim, type IrType, tensorType } from '../../src/ir/types.js';
import { analyzeFor } from '../common/blocks.js';
import type { Pass } from '../pipeline.js';
import type { Plugin } from './contract.js';
import {
  inInputNumbers,
  nothingCompressed,
  type Placement,
  type PluginLoader,
  type PluginPassOptions,
  type PluginRequest,
  PluginRewriter,
  plan,
  recordPlugins,
  summarizePlacements,
} from './index.js';

/** The graph input that selects the ratio of a switchable model. */
export const RATIO_INPUT = 'vcompile_ratio';

export interface SwitchableOptions extends PluginPassOptions {
  /** the ratio used when `vcompile_ratio` is not fed (default 1: the original computation) */
  defaultRatio?: number;
}

export interface SwitchableReport {
  ratios: number[];
  defaultRatio: number;
  layers: { layer: number; ratios: number[] }[];
}

export function switchablePass(options: SwitchableOptions, load: PluginLoader): Pass<SwitchableReport> {
  return {
    name: 'switchable-plugins',
    run(model, context) {
      const analysis = analyzeFor(model, 'plugins');
      const byRatio = planByRatio(model, analysis, { ...options, ...inInputNumbers(options, context) }, load);
      const ratios = [1, ...[...byRatio.keys()].sort((a, b) => a - b)];
      const defaultRatio = options.defaultRatio ?? 1;
      if (!ratios.includes(defaultRatio))
        throw new VcompileError(
          msg`${option('defaultRatio', defaultRatio)} is not among the ratios of the plugins given (${ratios.join(', ')})`,
        );
      if (model.graph.lookup(RATIO_INPUT)) throw new VcompileError(`the model already has a value named ${RATIO_INPUT}`);
      const layers = layersInOrder(byRatio);
      if (options.refuseNoop && layers.length === 0) throw nothingCompressed(analysis);
      const builder = new SwitchBuilder(model, ratios, defaultRatio, analysis.context.shapes);
      for (const placements of layers) builder.switchLayer(placements);
      builder.rewriter.finish();
      const all = [...byRatio.values()].flat();
      recordPlugins(model, all);
      model.setMetadata('vcompile.switchable', JSON.stringify({ input: RATIO_INPUT, ratios, default: defaultRatio }));
      return {
        model,
        modified: all.length > 0,
        summary: `vcompile_ratio in {${ratios.join(', ')}} (default ${defaultRatio}); ${[...byRatio.values()].map(summarizePlacements).join('; ')}`,
        report: {
          ratios,
          defaultRatio,
          layers: layers.map((l) => ({ layer: l.values().next().value!.layer.index, ratios: [...l.keys()] })),
        },
      };
    },
  };
}

/** The placements of each ratio, planned (and checked) as the single-ratio pass would; each plugin is loaded once. */
function planByRatio(
  model: Model,
  analysis: TransformerAnalysis & { hidden: number },
  options: SwitchableOptions,
  load: PluginLoader,
): Map<number, Placement[]> {
  const loaded = new Map<string, Plugin>();
  const once: PluginLoader = (source, target) => {
    if (!loaded.has(source)) loaded.set(source, load(source, target));
    return loaded.get(source)!;
  };
  const target = { hidden: analysis.hidden, opset: model.opsetVersion('') ?? 0 };
  const groups = new Map<number, PluginRequest[]>();
  for (const request of options.plugins) {
    const { ratio } = once(request.source, target);
    if (ratio === 1)
      throw new VcompileError(`plugin ${request.source}: ratio 1 is the original computation, which a switchable model always has`);
    const group = groups.get(ratio) ?? [];
    if (request.layer === undefined && group.some((r) => r.layer === undefined)) {
      throw new VcompileError(`two plugins for all layers have ratio ${ratio}; give one per ratio`);
    }
    groups.set(ratio, [...group, request]);
  }
  if (groups.size === 0) throw new VcompileError(msg`${option('switchable')} needs at least one ${option('plugins', undefined, 'plugin')}`);
  return new Map([...groups].map(([ratio, plugins]) => [ratio, plan(model, analysis, { ...options, plugins }, once)]));
}

/** For each wrapped layer, in order: its placement per ratio (all of one scope). */
function layersInOrder(byRatio: Map<number, Placement[]>): Map<number, Placement>[] {
  const layers = new Map<number, Map<number, Placement>>();
  for (const [ratio, placements] of byRatio) {
    for (const p of placements) {
      const perRatio = layers.get(p.layer.index) ?? new Map<number, Placement>();
      const other = perRatio.values().next().value;
      if (other && other.plugin.scope !== p.plugin.scope) {
        throw new VcompileError(
          `layer ${p.layer.index} gets plugins of different scopes (${other.plugin.scope}, ${p.plugin.scope}); a switchable layer needs one scope`,
        );
      }
      layers.set(p.layer.index, perRatio.set(ratio, p));
    }
  }
  return [...layers.entries()].sort((a, b) => a[0] - b[0]).map(([, perRatio]) => perRatio);
}

class SwitchBuilder {
  readonly rewriter: PluginRewriter;
  private readonly main: GraphBuilder;
  private readonly ratio: Value;
  private readonly conditions = new Map<number, Value>();
  private anyOfOthers: Value | undefined;

  constructor(
    model: Model,
    private readonly ratios: number[],
    defaultRatio: number,
    private readonly shapes: ShapeTable,
  ) {
    this.rewriter = new PluginRewriter(model);
    this.main = new GraphBuilder(model.graph, this.rewriter.names, { prefix: 'vcompile/switch/' });
    // An initializer of the same name is the input's default (ONNX IR >= 4).
    const defaultTensor = Tensor.fromArray(RATIO_INPUT, DataType.INT64, [], BigInt64Array.of(BigInt(defaultRatio)));
    this.ratio = this.main.input(RATIO_INPUT, tensorType(DataType.INT64, []), defaultTensor);
    if ((model.irVersion ?? 0) < 4) model.irVersion = 4;
  }

  /** Replace one layer's block by one If per ratio (see the header). */
  switchLayer(placements: Map<number, Placement>): void {
    const any = placements.values().next().value as Placement;
    const type = this.blockType(any);
    const last = this.ratios[this.ratios.length - 1];
    const parts = this.ratios.slice(0, -1).map((ratio) => {
      const node = this.main.node('If', [this.condition(ratio)], {
        then_branch: this.ratioBranch(ratio, placements, any, type),
        else_branch: this.emptyBranch(ratio, any, type),
      });
      return this.declare(this.main.graph, node.outputs[0]!, withSeq(type, {}));
    });
    const node = this.main.node('If', [this.condition(last)], {
      then_branch: this.ratioBranch(last, placements, any, type),
      else_branch: this.otherRatiosBranch(parts, any, type),
    });
    // Typed in value_info, so that ORT knows the rank after the If and keeps fusing what follows it.
    this.rewriter.replace(any.output, this.declare(this.main.graph, node.outputs[0]!, type));
  }

  /** The block at `ratio`: wrapped in that ratio's plugin, or as it is where the layer has none (ratio 1). */
  private ratioBranch(ratio: number, placements: Map<number, Placement>, any: Placement, type: IrType): Graph {
    const p = placements.get(ratio);
    const b = this.main.subgraph(`vcompile/L${any.layer.index}/ratio_${ratio}`, { prefix: `vcompile/plugin/L${any.layer.index}/` });
    b.output(p ? this.rewriter.compressedRun(p, b, this.main) : this.rewriter.uncompressedRun(any, b), undefined, type);
    return b.graph;
  }

  /** What an untaken ratio gives: the block's input sliced to length 0 on the sequence axis, no copy. */
  private emptyBranch(ratio: number, p: Placement, type: IrType): Graph {
    const b = this.main.subgraph(`vcompile/L${p.layer.index}/not_ratio_${ratio}`, { prefix: `vcompile/L${p.layer.index}/` });
    const zero = b.int64s('zero', [0]);
    const empty = b.op.Slice(this.rewriter.current(p.hidden), zero, zero, b.int64s('axis', [SEQ_AXIS]));
    b.output(empty, undefined, withSeq(type, { value: 0 }));
    return b.graph;
  }

  /** The result of the ratio that was taken among the others, or the unknown-ratio failure. */
  private otherRatiosBranch(parts: Value[], p: Placement, type: IrType): Graph {
    const b = this.main.subgraph(`vcompile/L${p.layer.index}/other_ratios`, { prefix: `vcompile/L${p.layer.index}/` });
    const taken = b.subgraph(`vcompile/L${p.layer.index}/taken_ratio`);
    // Exactly one part is not empty.
    taken.output(parts.length === 1 ? taken.op.Identity(parts[0]) : taken.op.Concat(...parts, { axis: SEQ_AXIS }), undefined, type);
    const node = b.node('If', [this.knownOthers()], { then_branch: taken.graph, else_branch: this.unknownRatioBranch(b, p, type) });
    b.output(this.declare(b.graph, node.outputs[0]!, type), undefined, type);
    return b.graph;
  }

  /** `ratio` equals one of the ratios but the last (computed once, in the main graph). */
  private knownOthers(): Value {
    if (!this.anyOfOthers) {
      const conditions = this.ratios.slice(0, -1).map((r) => this.condition(r));
      this.anyOfOthers = conditions.slice(1).reduce((a, c) => this.main.op.Or(a, c), conditions[0]);
    }
    return this.anyOfOthers;
  }

  /** A value of the main graph or a branch, typed there (value_info) as it is declared. */
  private declare(graph: Graph, value: Value, type: IrType): Value {
    value.type = type;
    graph.valueInfos.push(value);
    return value;
  }

  /** The wrapped block's result type: declared, else inferred ([batch, seq, d] with symbolic dims kept). */
  private blockType(p: Placement): IrType {
    if (p.output.type?.kind === 'tensor' && p.output.type.shape) return p.output.type;
    const shape = this.shapes.shape(p.output);
    const elemType = this.shapes.get(p.output).dtype ?? DataType.FLOAT;
    if (!shape) return { kind: 'tensor', elemType };
    return {
      kind: 'tensor',
      elemType,
      shape: shape.map((d) => (d?.constant !== undefined ? { value: d.constant } : d?.atomName ? { param: d.atomName } : {})),
    };
  }

  private condition(ratio: number): Value {
    const cached = this.conditions.get(ratio);
    if (cached) return cached;
    const cond = this.main.op.Equal(this.ratio, this.main.int64s(`ratio_${ratio}`, [ratio], []));
    this.conditions.set(ratio, cond);
    return cond;
  }

  /**
   * ONNX has no assertion op: this branch reshapes to a shape that cannot exist, computed from the ratio
   * at run time (so no optimizer folds it), in a node whose name ONNX Runtime prints in its error. The
   * shape has the block's rank, so the Reshape's inferred type agrees with the declared one.
   */
  private unknownRatioBranch(outer: GraphBuilder, p: Placement, type: IrType): Graph {
    const b = outer.subgraph(`vcompile/L${p.layer.index}/unknown_ratio`, { prefix: `vcompile/L${p.layer.index}/` });
    const impossible = b.op.Unsqueeze(
      b.op.Sub(b.op.Mul(this.ratio, b.int64s('zero', [0], [])), b.int64s('two', [2], [])),
      b.int64s('axes', [0]),
    );
    const rank = type.kind === 'tensor' && type.shape ? type.shape.length : 3;
    const shape = b.op.Concat(...Array.from({ length: rank }, () => impossible), { axis: 0 });
    const failing = b.node('Reshape', [this.rewriter.current(p.hidden), shape]);
    failing.name = this.rewriter.names.fresh(`${RATIO_INPUT} must be one of ${this.ratios.join(', ')} (layer ${p.layer.index})`);
    b.output(failing.outputs[0]!, undefined, type);
    return b.graph;
  }
}

/** The sequence axis of a block's [batch, seq, d] result, where parts of untaken ratios are empty. */
const SEQ_AXIS = 1;

/** `type` with its sequence dim replaced (an unknown dim, or 0); a type without a shape stays as it is. */
function withSeq(type: IrType, dim: Dim): IrType {
  if (type.kind !== 'tensor' || !type.shape || type.shape.length <= SEQ_AXIS) return type;
  return { ...type, shape: type.shape.map((d, i) => (i === SEQ_AXIS ? dim : d)) };
}
