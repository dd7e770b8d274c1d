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
