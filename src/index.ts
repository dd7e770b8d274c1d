// vcompile as a library: the same operations as the CLI, as typed functions.
export { VcompileError, ExitCode } from './errors.js';
export { loadModel, saveModel, decodeModel, encodeModel, type SaveOptions } from './onnx/file.js';
export { Model, ModelFunction, type OpsetId } from './ir/model.js';
export { Graph, Node, Value, replaceAllUses, type Attribute, AttributeType } from './ir/graph.js';
export { Tensor } from './ir/tensor.js';
export { DataType, tensorType, type IrType, type Dim } from './ir/types.js';
export { NameAuthority } from './ir/names.js';
export { GraphBuilder, ModelBuilder, float } from './ir/builder.js';
export { toposort, eliminateDeadCode, spliceGraph } from './ir/transforms.js';
export { verifyModel, assertValid, type Problem } from './verify/ir.js';
export { summarize, type ModelSummary } from './inspect/summary.js';
export { runPasses, type Pass, type PassResult } from '../passes/pipeline.js';
export { deadCodePass } from '../passes/dce/index.js';
export { opsetUpgradePass, upgradeOpset, summarizeUpgrade, MAX_ORT_OPSET, type OpsetUpgradeReport, type OpsetUpgradePassOptions } from '../passes/opset/index.js';
export { openSession, run, cudaProviderInstalled, type Session, type SessionOptions, type ExecutionProvider } from './runtime/session.js';
export { describeInputs, generateFeeds, readFeedFolder, type InputSpec, type DimBinding } from './runtime/feeds.js';
export { readNpy, writeNpy, decodeNpy, encodeNpy } from './runtime/npy.js';
export { verifyModels, type VerifyOptions, type VerifyReport } from './verify/numeric.js';
export { benchModels, type BenchOptions, type BenchReport } from './bench/latency.js';
export { macsAt } from './bench/macs.js';
export { analyzeTransformer, describeLayers, formatLayerTable, inferShapes, type TransformerAnalysis, type Layer } from './analysis/index.js';
export { pluginPass, type PluginPassOptions, type PluginRequest } from '../passes/plugin/index.js';
export { switchablePass, type SwitchableOptions } from '../passes/plugin/switchable.js';
export { loadPlugin, checkPlugin, type Plugin } from '../passes/plugin/contract.js';
export {
  buildMeanPlugin, buildVariatorPlugin, buildIdentityPlugin, initVariatorWeights, type VariatorWeights, type PluginShape, type Scope,
} from '../passes/plugin/builtin.js';
export {
  AdaptiveSession, fixed, latencyBudget, queueDepth, withFeedableRatio, switchableInfo, ratioTensor, RATIO_INPUT, type Policy, type CallContext,
} from './runtime/adaptive.js';
