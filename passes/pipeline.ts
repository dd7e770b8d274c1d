// A pass takes a model and returns a result; passes compose in a list, and the verifier can run after each.
// Passes are pure graph rewrites: they read no files and run no models (plugins and modules are handed in
// as IR models, see src/compile). What one pass tells a later one travels in the pipeline context.
import type { Model } from '../src/ir/model.js';
import { assertValid } from '../src/ir/verify.js';

/** What passes tell the passes after them. */
export interface PipelineContext {
  /**
   * For each layer of the current model (as analyzeTransformer numbers them), its index in the model the
   * pipeline started from, or null for a layer inside a module. Set by passes that renumber layers; passes
   * that take layer numbers read them as the input model's and translate them through this.
   */
  readonly layerMap?: readonly (number | null)[];
}

export interface PassResult<R = unknown> {
  model: Model;
  modified: boolean;
  /** what the pass did, for the CLI's report and --json */
  report: R;
  /** the same in one line for people, when the report is not self-explanatory */
  summary?: string;
  /** the context for the passes that follow (unchanged when absent) */
  context?: PipelineContext;
}

export interface Pass<R = unknown> {
  readonly name: string;
  run(model: Model, context?: PipelineContext): PassResult<R>;
}

export interface PassRecord {
  name: string;
  modified: boolean;
  report: unknown;
  summary?: string;
}

export interface PipelineResult {
  model: Model;
  modified: boolean;
  passes: PassRecord[];
  context: PipelineContext;
}

/** Run passes in order; with `verify`, the IR verifier checks the model after each one. */
export function runPasses(
  model: Model,
  passes: readonly Pass[],
  options: { verify?: boolean; context?: PipelineContext } = {},
): PipelineResult {
  const results: PassRecord[] = [];
  let current = model;
  let context = options.context ?? {};
  for (const pass of passes) {
    const result = pass.run(current, context);
    if (options.verify) assertValid(result.model, pass.name);
    results.push({ name: pass.name, modified: result.modified, report: result.report, summary: result.summary });
    current = result.model;
    context = result.context ?? context;
  }
  return { model: current, modified: results.some((r) => r.modified), passes: results, context };
}
