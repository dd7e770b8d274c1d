// One model, many speeds: every wrapped block becomes a chain of If nodes that picks, from the graph input
// `vcompile_ratio` (int64 scalar, with a default), the block wrapped in the plugin of that ratio, or the
// block as it is (ratio 1). Branches read the backbone's weights from the enclosing graph, so they are
// stored once; plugin weights and pooled masks live in the main graph too. An unknown ratio fails at run
// time in a node whose name says which ratios the model has.
import type { ShapeTable, TransformerAnalysis } from '../../src/analysis/index.js';
import { msg, option, VcompileError } from '../../src/errors.js';
import { GraphBuilder } from '../../src/ir/builder.js';
import type { Graph, Value } from '../../src/ir/graph.js';
import type { Model } from '../../src/ir/model.js';
import { Tensor } from '../../src/ir/tensor.js';
import { DataType, type IrType, tensorType } from '../../src/ir/types.js';
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

  /** Replace one layer's block by If(ratio == r1, [r1], If(ratio == r2, [r2], ... [unknown ratio error])). */
  switchLayer(placements: Map<number, Placement>): void {
    const any = placements.values().next().value as Placement;
    let fallback = this.unknownRatioBranch(any);
    for (const ratio of [...this.ratios].reverse()) {
      const p = placements.get(ratio);
      const b = this.main.subgraph(`vcompile/L${any.layer.index}/ratio_${ratio}`, { prefix: `vcompile/plugin/L${any.layer.index}/` });
      const type = this.blockType(any);
      b.output(p ? this.rewriter.compressedRun(p, b, this.main) : this.rewriter.uncompressedRun(any, b), undefined, type);
      const chosen = b.graph;
      if (ratio === this.ratios[0]) {
        const node = this.main.node('If', [this.condition(ratio)], { then_branch: chosen, else_branch: fallback });
        // Typed in value_info, so that ORT knows the rank after the If and keeps fusing what follows it.
        const result = typed(node.outputs[0]!, type);
        this.main.graph.valueInfos.push(result);
        this.rewriter.replace(any.output, result);
        return;
      }
      fallback = this.nest(ratio, chosen, fallback, any);
    }
  }

  /** A graph holding If(ratio == r, then, else), to be the else branch of the next check out. */
  private nest(ratio: number, then: Graph, otherwise: Graph, p: Placement): Graph {
    const b = this.main.subgraph(`vcompile/L${p.layer.index}/not_ratio_${ratio}`, { prefix: `vcompile/L${p.layer.index}/` });
    const node = b.node('If', [this.condition(ratio)], { then_branch: then, else_branch: otherwise });
    b.output(node.outputs[0]!, undefined, this.blockType(p));
    return b.graph;
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
   * at run time (so no optimizer folds it), in a node whose name ONNX Runtime prints in its error.
   */
  private unknownRatioBranch(p: Placement): Graph {
    const b = this.main.subgraph(`vcompile/L${p.layer.index}/unknown_ratio`, { prefix: `vcompile/L${p.layer.index}/` });
    const impossible = b.op.Unsqueeze(
      b.op.Sub(b.op.Mul(this.ratio, b.int64s('zero', [0], [])), b.int64s('two', [2], [])),
      b.int64s('axes', [0]),
    );
    const failing = b.node('Reshape', [this.rewriter.current(p.hidden), impossible]);
    failing.name = this.rewriter.names.fresh(`${RATIO_INPUT} must be one of ${this.ratios.join(', ')} (layer ${p.layer.index})`);
    b.output(failing.outputs[0]!, undefined, this.blockType(p));
    return b.graph;
  }
}

/** Branch outputs carry the block result's type, as If requires. */
function typed(value: Value, type: IrType): Value {
  value.type = type;
  return value;
}
