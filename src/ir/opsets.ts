// Merging a plugin's opset imports into a model's. The model keeps its own default-domain opset: every
// op the plugin uses must exist there and mean the same as at the plugin's opset. `OP_VERSIONS` lists,
// from ONNX's operator changelog, when each op appeared and the versions at which its form or meaning
// changed (attributes that became inputs, broadcasting, negative axes); type-only additions are not listed.
import { VcompileError } from '../errors.js';
import type { Model } from './model.js';

interface OpHistory {
  since: number;
  breaking?: number[];
}

const unary: OpHistory = { since: 1, breaking: [6] };
const binary: OpHistory = { since: 1, breaking: [7] };
const reduceTo18: OpHistory = { since: 1, breaking: [11, 18] };

const OP_VERSIONS: Record<string, OpHistory> = {
  Add: binary,
  Sub: binary,
  Mul: binary,
  Div: binary,
  Pow: binary,
  Equal: binary,
  Less: binary,
  Greater: binary,
  And: binary,
  Or: binary,
  Tanh: unary,
  Sigmoid: unary,
  Relu: unary,
  Exp: unary,
  Sqrt: unary,
  Neg: unary,
  Abs: unary,
  Log: unary,
  Reciprocal: unary,
  Erf: { since: 9 },
  Sign: { since: 9 },
  Not: { since: 1 },
  MatMul: { since: 1 },
  Gemm: { since: 1, breaking: [7] },
  Einsum: { since: 12 },
  Softmax: { since: 1, breaking: [13] },
  LogSoftmax: { since: 1, breaking: [13] },
  Reshape: { since: 1, breaking: [5] },
  Concat: { since: 1, breaking: [4, 11] },
  Transpose: { since: 1 },
  Identity: { since: 1 },
  Flatten: { since: 1, breaking: [11] },
  Unsqueeze: { since: 1, breaking: [11, 13] },
  Squeeze: { since: 1, breaking: [11, 13] },
  Expand: { since: 8 },
  Tile: { since: 1, breaking: [6] },
  Gather: { since: 1, breaking: [11] },
  Shape: { since: 1 },
  Slice: { since: 1, breaking: [10, 11] },
  Pad: { since: 2, breaking: [11] },
  Split: { since: 1, breaking: [11, 13, 18] },
  ReduceMean: reduceTo18,
  ReduceMax: reduceTo18,
  ReduceMin: reduceTo18,
  ReduceProd: reduceTo18,
  ReduceL2: reduceTo18,
  ReduceSum: { since: 1, breaking: [11, 13] },
  Cast: { since: 1, breaking: [6] },
  Constant: { since: 1 },
  ConstantOfShape: { since: 9 },
  Range: { since: 11 },
  Mod: { since: 10 },
  Where: { since: 9 },
  Max: { since: 1, breaking: [8] },
  Min: { since: 1, breaking: [8] },
  Sum: { since: 1, breaking: [8] },
  Mean: { since: 1, breaking: [8] },
  Clip: { since: 1, breaking: [11] },
  CumSum: { since: 11 },
  LayerNormalization: { since: 17 },
  Gelu: { since: 20 },
  HardSigmoid: { since: 1, breaking: [6] },
};

/**
 * Check that `plugin` (or, with `what` = 'module', a module) can join `model`; returns the non-default
 * domain imports the model must add.
 */
export function checkOpsetMerge(
  plugin: Model,
  model: Model,
  source: string,
  what: 'plugin' | 'module' = 'plugin',
): { domain: string; version: number }[] {
  const refuse = (why: string) => new VcompileError(`${what} ${source}: ${why}`);
  if (plugin.functions.length) throw refuse(`model-local functions in ${what}s are not supported; inline them when exporting`);
  const modelDefault = model.opsetVersion('') ?? 0;
  const pluginDefault = plugin.opsetVersion('') ?? modelDefault;
  const additions: { domain: string; version: number }[] = [];
  for (const { domain = '', version } of plugin.opsetImports) {
    if (domain === '' || domain === 'ai.onnx') continue;
    const theirs = model.opsetVersion(domain);
    if (theirs === undefined) additions.push({ domain, version });
    else if (theirs !== version) throw refuse(`imports ${domain} version ${version} but the model uses version ${theirs}`);
  }
  for (const graph of plugin.allGraphs()) {
    for (const node of graph.nodes) {
      if (node.domain && node.domain !== 'ai.onnx') continue;
      checkOp(node.opType, pluginDefault, modelDefault, refuse, what);
    }
  }
  return additions;
}

function checkOp(op: string, pluginOpset: number, modelOpset: number, refuse: (why: string) => Error, what: string): void {
  if (pluginOpset === modelOpset) return;
  const history = OP_VERSIONS[op];
  const fix = `export the ${what} at opset ${modelOpset}`;
  if (!history)
    throw refuse(`uses ${op}, which vcompile cannot check between opset ${pluginOpset} (${what}) and ${modelOpset} (model): ${fix}`);
  if (history.since > modelOpset) throw refuse(`uses ${op}, which needs opset >= ${history.since}; the model declares opset ${modelOpset}`);
  const [low, high] = pluginOpset < modelOpset ? [pluginOpset, modelOpset] : [modelOpset, pluginOpset];
  const change = history.breaking?.find((v) => v > low && v <= high);
  if (change !== undefined)
    throw refuse(`uses ${op}, whose form changed at opset ${change} (${what} opset ${pluginOpset}, model opset ${modelOpset}): ${fix}`);
}
