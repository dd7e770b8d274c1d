// The layer summary behind `vcompile inspect MODEL --layers`: plain JSON per layer, MACs evaluated at a
// chosen batch size and sequence length, and a text table of the same.
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import type { AttentionBlock } from './attention.js';
import { analyzeTransformer, type Layer, type TransformerAnalysis } from './layers.js';
import type { ShapeTable } from './shapes.js';
import type { Expr, SymDim } from './symbolic.js';

export interface DescribeOptions {
  /** sequence length for every symbolic sequence dim (default 128) */
  seq?: number;
  /** batch size (default 1) */
  batch?: number;
}

export interface LayerDescription {
  index: number;
  stack: 'encoder' | 'decoder';
  heads: number;
  headSize: number;
  causal: boolean;
  crossAttention: boolean;
  ffnInner: number;
  activation: string;
  norm: 'pre' | 'post';
  normKind: 'layernorm' | 'rmsnorm';
  /** the sequence length the MACs are counted at (fixed-length models ignore the seq option) */
  seq: number | null;
  /** multiply-accumulates of the layer's matrix products at `batch` and `seq`; null if not derivable */
  macs: number | null;
  params: number;
  fusedQkv: boolean;
  /** what is added to the attention scores: masks (and their origin) and position biases */
  scoreTerms: string[];
}

export interface ModelDescription {
  hidden: number | null;
  batch: number;
  seq: number;
  layers: LayerDescription[];
  /** total over the layers (embeddings, final norms and heads are not counted) */
  macs: number | null;
  params: number;
  notes: string[];
}

/** Analyze `model` and describe its layers; throws a VcompileError saying where the analysis stopped. */
export function describeLayers(model: Model, options: DescribeOptions = {}): ModelDescription {
  const analysis = analyzeTransformer(model);
  if (analysis.error) {
    const found = analysis.layers.length;
    throw new VcompileError(
      `transformer analysis stopped: ${analysis.error.message} (${found} layer${found === 1 ? '' : 's'} recognized before)`,
    );
  }
  return describeAnalysis(analysis, options);
}

export function describeAnalysis(analysis: TransformerAnalysis, options: DescribeOptions = {}): ModelDescription {
  const seq = options.seq ?? 128;
  const batch = options.batch ?? 1;
  const notes = [...analysis.notes];
  const binding = bindDims(analysis.layers, seq, batch, analysis);
  const layers = analysis.layers.map((layer) => describeLayer(layer, binding, analysis, notes));
  const macs = layers.every((l) => l.macs !== null) ? layers.reduce((s, l) => s + l.macs!, 0) : null;
  return {
    hidden: analysis.hidden ?? null,
    batch,
    seq,
    layers,
    macs,
    params: layers.reduce((s, l) => s + l.params, 0),
    notes,
  };
}

function describeLayer(layer: Layer, binding: Map<string, number>, analysis: TransformerAnalysis, notes: string[]): LayerDescription {
  const attn = layer.selfAttention;
  const macs = layer.macsUnknown.length ? undefined : layer.macs.evaluate(binding);
  if (layer.macsUnknown.length)
    notes.push(`layer ${layer.index}: MACs unknown, shapes of ${layer.macsUnknown.map((n) => n.name ?? n.opType).join(', ')} not inferred`);
  else if (macs === undefined) notes.push(`layer ${layer.index}: MACs ${layer.macs} depend on dims not bound to batch or seq`);
  const [seqDim] = sequenceDims(attn, analysis.context.shapes);
  return {
    index: layer.index,
    stack: layer.stack,
    heads: attn.heads,
    headSize: attn.headSize,
    causal: attn.causal,
    crossAttention: !!layer.crossAttention,
    ffnInner: layer.ffn.inner,
    activation: layer.ffn.activation,
    norm: layer.placement,
    normKind: layer.normKind,
    seq: seqDim?.evaluate(binding) ?? null,
    macs: macs ?? null,
    params: layer.paramCount,
    fusedQkv: attn.fusedQkv,
    scoreTerms: [...attn.terms, ...(layer.crossAttention?.terms ?? [])].map(describeTerm),
  };
}

function describeTerm(term: Layer['selfAttention']['terms'][number]): string {
  const origin = term.inputs.length
    ? ` from input ${term.inputs.map((v) => v.name).join(', ')}`
    : term.weights.length
      ? ' from learned weights'
      : ' computed';
  const how = term.mode === 'select' ? 'select' : term.mode === 'subtract' ? 'subtractive' : 'additive';
  const shape = term.causal ? ' causal' : term.pattern === 'none' || term.pattern === 'other' ? '' : ` (${term.pattern})`;
  return `${how}${shape} ${term.kind === 'positionBias' ? 'position bias' : term.kind}${origin}`;
}

/**
 * Bind symbolic dims: the query and key lengths of every attention (the last two dims of its scores) to
 * `seq`, solving `c*d + k = seq` for an opaque dim d as conv arithmetic produces; the stream's other
 * leading dims to `batch`. This holds for [batch, seq, d] and [seq, batch, d] streams alike.
 */
function bindDims(layers: Layer[], seq: number, batch: number, analysis: TransformerAnalysis): Map<string, number> {
  const binding = new Map<string, number>();
  const shapes = analysis.context.shapes;
  for (const layer of layers) {
    for (const attn of [layer.selfAttention, layer.crossAttention]) {
      if (attn) for (const d of sequenceDims(attn, shapes)) bindLinear(d, seq, binding);
    }
  }
  for (const layer of layers) {
    const [queryLength] = sequenceDims(layer.selfAttention, shapes);
    for (const d of (shapes.shape(layer.input) ?? []).slice(0, -1)) {
      if (!(queryLength && d?.equals(queryLength))) bindLinear(d, batch, binding);
    }
  }
  return binding;
}

/** Query and key lengths of an attention block, as symbolic dims. */
function sequenceDims(attn: AttentionBlock, shapes: ShapeTable): [SymDim, SymDim] {
  if (attn.scores.opType === 'Attention') {
    const length = shapes.dim(attn.input, 1);
    return [length, length];
  }
  const scores = attn.scores.outputs[0];
  return [shapes.dim(scores, -2), shapes.dim(scores, -1)];
}

function bindLinear(dim: Expr | undefined, target: number, binding: Map<string, number>): void {
  if (!dim || dim.isConstant) return;
  const atoms = [...dim.atoms()].filter((a) => !binding.has(a));
  if (atoms.length !== 1) return;
  const [atom] = atoms;
  // dim = c*atom + k with everything else bound: solve from two evaluations
  const at0 = dim.evaluate(new Map([...binding, [atom, 0]]));
  const at1 = dim.evaluate(new Map([...binding, [atom, 1]]));
  if (at0 === undefined || at1 === undefined || at1 === at0) return;
  const value = (target - at0) / (at1 - at0);
  if (Number.isInteger(value) && value >= 1 && dim.evaluate(new Map([...binding, [atom, 2]])) === at0 + 2 * (at1 - at0))
    binding.set(atom, value);
}

/** A text table: index, heads x headSize, causal, FFN inner, norm, MACs at seq, params. */
export function formatLayerTable(desc: ModelDescription): string {
  const header = [
    'layer',
    'stack',
    'heads x size',
    'causal',
    'cross',
    'FFN inner',
    'act',
    'norm',
    `MACs (b=${desc.batch}, seq=${desc.seq})`,
    'params',
  ];
  const rows = desc.layers.map((l) => [
    String(l.index),
    l.stack,
    `${l.heads} x ${l.headSize}`,
    l.causal ? 'yes' : 'no',
    l.crossAttention ? 'yes' : 'no',
    String(l.ffnInner),
    l.activation,
    `${l.norm} ${l.normKind}`,
    l.macs === null ? '?' : `${formatCount(l.macs)}${l.seq !== null && l.seq !== desc.seq ? ` (seq ${l.seq})` : ''}`,
    formatCount(l.params),
  ]);
  const total = ['total', '', '', '', '', '', '', '', desc.macs === null ? '?' : formatCount(desc.macs), formatCount(desc.params)];
  const all = [header, ...rows, total];
  const widths = header.map((_, c) => Math.max(...all.map((r) => r[c].length)));
  const numeric = new Set([0, 5, 8, 9]);
  const line = (r: string[]) =>
    r
      .map((cell, c) => (numeric.has(c) ? cell.padStart(widths[c]) : cell.padEnd(widths[c])))
      .join('  ')
      .trimEnd();
  const out = [`hidden ${desc.hidden ?? '?'}, ${desc.layers.length} layers`, line(header), ...rows.map(line), line(total)];
  for (const note of desc.notes) out.push(`note: ${note}`);
  return out.join('\n');
}

/** 1234567 -> "1.23 M"; exact below 10,000. */
export function formatCount(n: number): string {
  if (Math.abs(n) < 1e4) return String(n);
  const units: [number, string][] = [
    [1e12, 'T'],
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k'],
  ];
  const [scale, unit] = units.find(([s]) => Math.abs(n) >= s)!;
  return `${(n / scale).toPrecision(3)} ${unit}`;
}
