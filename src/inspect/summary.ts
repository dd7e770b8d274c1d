// `vcompile inspect`: what a model is, at a glance: versions, interface, ops, weights, external files.
import type { Value } from '../ir/graph.js';
import type { Model } from '../ir/model.js';
import { isFloatType, type Tensor } from '../ir/tensor.js';
import { dataTypeName, formatDims } from '../ir/types.js';

export interface ValueSummary {
  name: string;
  type: string;
  shape: (number | string | null)[] | null;
}

export interface ModelSummary {
  irVersion: number | null;
  opsets: Record<string, number>;
  producer: string;
  graphName: string;
  inputs: ValueSummary[];
  outputs: ValueSummary[];
  nodes: number;
  ops: Record<string, number>;
  /** elements of floating-point weights (initializers and Constant nodes, subgraphs included) */
  parameters: number;
  /** bytes of every weight tensor, whatever its type */
  weightBytes: number;
  externalDataFiles: string[];
  functions: string[];
  metadata: Record<string, string>;
}

export function summarize(model: Model): ModelSummary {
  const ops: Record<string, number> = {};
  let nodes = 0;
  for (const graph of model.allGraphs()) {
    for (const node of graph.nodes) {
      ops[node.qualifiedOp] = (ops[node.qualifiedOp] ?? 0) + 1;
      nodes++;
    }
  }
  const weights = [...weightTensors(model)];
  return {
    irVersion: model.irVersion ?? null,
    opsets: Object.fromEntries(model.opsetImports.map((o) => [o.domain || 'ai.onnx', o.version])),
    producer: [model.producerName, model.producerVersion].filter(Boolean).join(' '),
    graphName: model.graph.name ?? '',
    inputs: model.graph.inputs.filter((v) => !v.initializer).map(describeValue),
    outputs: model.graph.outputs.map(describeValue),
    nodes,
    ops: Object.fromEntries(Object.entries(ops).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))),
    parameters: weights.filter((t) => isFloatType(t.dataType)).reduce((n, t) => n + t.size, 0),
    weightBytes: weights.reduce((n, t) => n + t.byteLength, 0),
    externalDataFiles: [...new Set(weights.flatMap((t) => (t.storage.kind === 'external' ? [t.storage.external.location] : [])))],
    functions: model.functions.map((f) => `${f.domain ?? ''}::${f.name}`),
    metadata: Object.fromEntries(model.metadataProps ?? []),
  };
}

/** Weights: initializers and the tensors of Constant nodes, in every graph of the model. */
export function* weightTensors(model: Model): Generator<Tensor> {
  for (const graph of model.allGraphs()) {
    for (const v of graph.initializers) yield v.initializer!;
    for (const node of graph.nodes) {
      if (node.opType === 'Constant' && !node.domain) {
        const t = node.attr('value')?.t;
        if (t) yield t;
      }
    }
  }
}

function describeValue(v: Value): ValueSummary {
  const t = v.type;
  if (t?.kind === 'tensor' || t?.kind === 'sparse_tensor') {
    return {
      name: v.name,
      type: `${t.kind === 'sparse_tensor' ? 'sparse ' : ''}${dataTypeName(t.elemType ?? 0)}`,
      shape: t.shape?.map((d) => d.value ?? d.param ?? null) ?? null,
    };
  }
  return { name: v.name, type: t?.kind ?? 'untyped', shape: null };
}

export function formatSummary(s: ModelSummary, file: string): string {
  const lines = [
    `${file}`,
    `  IR version ${s.irVersion ?? '?'}, opsets ${Object.entries(s.opsets)
      .map(([d, v]) => `${d} ${v}`)
      .join(', ')}`,
    `  producer   ${s.producer || '(none)'}`,
    `  inputs     ${s.inputs.map(formatValue).join('\n             ') || '(none)'}`,
    `  outputs    ${s.outputs.map(formatValue).join('\n             ') || '(none)'}`,
    `  weights    ${s.parameters.toLocaleString('en-US')} parameters, ${formatBytes(s.weightBytes)}`,
  ];
  if (s.externalDataFiles.length) lines.push(`  external   ${s.externalDataFiles.join(', ')}`);
  if (s.functions.length) lines.push(`  functions  ${s.functions.join(', ')}`);
  lines.push(
    `  nodes      ${s.nodes}: ${Object.entries(s.ops)
      .map(([op, n]) => `${op} ${n}`)
      .join(', ')}`,
  );
  return lines.join('\n');
}

function formatValue(v: ValueSummary): string {
  const shape = v.shape ? formatDims(v.shape.map((d) => (typeof d === 'number' ? { value: d } : d === null ? {} : { param: d }))) : '';
  return `${v.name}: ${v.type}${shape}`;
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}
