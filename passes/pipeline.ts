// A pass takes a model and returns a result; passes compose in a list, and the verifier can run after each.
import type { Model } from '../src/ir/model.js';
import { assertValid } from '../src/verify/ir.js';

export interface PassResult {
  model: Model;
  modified: boolean;
  /** what the pass did, for the CLI's report and --json */
  report: Record<string, unknown>;
  /** the same in one line for people, when the report is not self-explanatory */
  summary?: string;
}

export interface Pass {
  readonly name: string;
  run(model: Model): PassResult;
}

export interface PipelineResult {
  model: Model;
  modified: boolean;
  passes: { name: string; modified: boolean; report: Record<string, unknown>; summary?: string }[];
}

/** Run passes in order; with `verify`, the IR verifier checks the model after each one. */
export function runPasses(model: Model, passes: readonly Pass[], options: { verify?: boolean } = {}): PipelineResult {
  const results: PipelineResult['passes'] = [];
  let current = model;
  for (const pass of passes) {
    const result = pass.run(current);
    if (options.verify) assertValid(result.model, pass.name);
    results.push({ name: pass.name, modified: result.modified, report: result.report, summary: result.summary });
    current = result.model;
  }
  return { model: current, modified: results.some((r) => r.modified), passes: results };
}
