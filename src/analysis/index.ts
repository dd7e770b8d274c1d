// Finding the transformer inside an exported graph: shapes with symbolic dims (shapes.ts), block
// matchers (attention.ts, ffn.ts, norms.ts, scores.ts), the layer walk along the residual stream
// (layers.ts), MACs (flops.ts) and the layer summary for `vcompile inspect --layers` (describe.ts).
// An analysis holds the model's own Values and Nodes: it is read-only, and stale once the graph changes.

export type { AttentionBlock, Projection, ScoreTerm } from './attention.js';
export { matchAttention, matchFusedAttention } from './attention.js';
export type { DescribeOptions, LayerDescription, ModelDescription } from './describe.js';
export { describeAnalysis, describeLayers, formatCount, formatLayerTable } from './describe.js';
export type { FfnBlock } from './ffn.js';
export { matchFfn } from './ffn.js';
export { nodeMacs, sumMacs } from './flops.js';
export {
  bindDims,
  type DimBinding,
  describeInputs,
  dimKey,
  dimKind,
  type InputRole,
  type InputSpec,
  shapeOf,
  vocabularyBounds,
} from './inputs.js';
export type { AnalysisError, Layer, Placement, Stack, Sublayer, TransformerAnalysis } from './layers.js';
export { analyzeTransformer } from './layers.js';
export { concreteShape, type MacCount, macsAt, macsOf, shapesAt, shapesWithInputs } from './macs.js';
export type { NormKind, NormMatch } from './norms.js';
export { findNormAfter, matchNorm } from './norms.js';
export type { Context, Match } from './patterns.js';
export { makeContext } from './patterns.js';
export type { ValueInfo } from './shapes.js';
export { inferShapes, ShapeTable } from './shapes.js';
export type { SymDim } from './symbolic.js';
export { Expr, formatSymShape } from './symbolic.js';
