// Finding the transformer inside an exported graph: shapes with symbolic dims (shapes.ts), block
// matchers (attention.ts, ffn.ts, norms.ts, scores.ts), the layer walk along the residual stream
// (layers.ts), MACs (flops.ts) and the layer summary for `vcompile inspect --layers` (describe.ts).
// An analysis holds the model's own Values and Nodes: it is read-only, and stale once the graph changes.
export { analyzeTransformer } from './layers.js';
export type { AnalysisError, Layer, Placement, Stack, Sublayer, TransformerAnalysis } from './layers.js';
export { matchAttention, matchFusedAttention } from './attention.js';
export type { AttentionBlock, Projection, ScoreTerm } from './attention.js';
export { matchFfn } from './ffn.js';
export type { FfnBlock } from './ffn.js';
export { findNormAfter, matchNorm } from './norms.js';
export type { NormKind, NormMatch } from './norms.js';
export { makeContext } from './patterns.js';
export type { Context, Match } from './patterns.js';
export { describeAnalysis, describeLayers, formatCount, formatLayerTable } from './describe.js';
export type { DescribeOptions, LayerDescription, ModelDescription } from './describe.js';
export { ShapeTable, inferShapes } from './shapes.js';
export type { ValueInfo } from './shapes.js';
export { Expr, formatSymShape } from './symbolic.js';
export type { SymDim } from './symbolic.js';
export { nodeMacs, sumMacs } from './flops.js';
export { type MacCount, concreteShape, macsAt, macsOf, shapesAt, shapesWithInputs } from './macs.js';
export { type DimBinding, type InputRole, type InputSpec, bindDims, describeInputs, dimKey, dimKind, shapeOf, vocabularyBounds } from './inputs.js';
