// vcompile as a library: the same operations as the CLI, as typed functions.

export { deadCodePass } from '../passes/dce/index.js';
export {
  MAX_ORT_OPSET,
  type OpsetUpgradePassOptions,
  type OpsetUpgradeReport,
  opsetUpgradePass,
  summarizeUpgrade,
  upgradeOpset,
} from '../passes/opset/index.js';
export { type Pass, type PassResult, type PipelineContext, runPasses } from '../passes/pipeline.js';
export {
  buildIdentityPlugin,
  buildMeanPlugin,
  buildVariatorPlugin,
  initVariatorWeights,
  type PluginShape,
  type Scope,
  type VariatorWeights,
} from '../passes/plugin/builtin.js';
export type { Plugin } from '../passes/plugin/contract.js';
export type { PluginPassOptions, PluginReport, PluginRequest } from '../passes/plugin/index.js';
export type { SwitchableOptions, SwitchableReport } from '../passes/plugin/switchable.js';
export {
  analyzeTransformer,
  describeLayers,
  formatLayerTable,
  inferShapes,
  type Layer,
  type TransformerAnalysis,
} from './analysis/index.js';
export { macsAt } from './analysis/macs.js';
export { type BenchOptions, type BenchReport, benchModels } from './bench/latency.js';
export { ExitCode } from './cli/errors.js';
export { checkPlugin, loadModule, loadPlugin } from './compile/load.js';
export { modularPass, pluginPass, switchablePass } from './compile/passes.js';
export { CheckFailedError, type MessagePart, type OptionName, type OptionRef, VcompileError } from './errors.js';
export { type ModelSummary, summarize } from './inspect/summary.js';
export { float, GraphBuilder, ModelBuilder } from './ir/builder.js';
export { type Attribute, AttributeType, Graph, Node, replaceAllUses, Value } from './ir/graph.js';
export { Model, ModelFunction, type OpsetId } from './ir/model.js';
export { NameAuthority } from './ir/names.js';
export { Tensor } from './ir/tensor.js';
export { eliminateDeadCode, spliceGraph, toposort } from './ir/transforms.js';
export { DataType, type Dim, type IrType, tensorType } from './ir/types.js';
export { assertValid, type Problem, verifyModel } from './ir/verify.js';
export {
  decodeModel,
  encodeModel,
  loadModel,
  type ProtectedFile,
  type SaveOptions,
  type SaveResult,
  saveModel,
  saveModelAsync,
} from './onnx/file.js';
export {
  AdaptiveSession,
  type CallContext,
  fixed,
  latencyBudget,
  type Policy,
  queueDepth,
  RATIO_INPUT,
  ratioTensor,
  switchableInfo,
  withFeedableRatio,
} from './runtime/adaptive.js';
export { type DimBinding, describeInputs, generateFeeds, type InputSpec, readFeedFolder } from './runtime/feeds.js';
export { decodeNpy, encodeNpy, readNpy, writeNpy } from './runtime/npy.js';
export { cudaProviderInstalled, type ExecutionProvider, openSession, run, type Session, type SessionOptions } from './runtime/session.js';
export { type VerifyOptions, type VerifyReport, verifyModels } from './verify/numeric.js';
export { VCOMPILE_VERSION } from './version.js';
