// What every command does with its results: print to stdout, refuse an invalid graph in one line.
import * as path from 'node:path';
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { verifyModel } from '../ir/verify.js';
import type { ExternalFile } from '../onnx/file.js';

export function print(text: string): void {
  process.stdout.write(`${text}\n`);
}

/** The IR verifier's first problem as a one-line refusal naming `label` (for --verify-ir on input models). */
export function requireValid(model: Model, label: string): void {
  const problems = verifyModel(model);
  if (problems.length === 0) return;
  const first = problems[0];
  throw new VcompileError(
    `${label}: invalid graph: ${first.where}: ${first.message}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`,
  );
}

/** JSON has no Infinity or NaN: they are written as null (documented in the README). */
export function jsonNumbers(_key: string, value: unknown): unknown {
  return typeof value === 'number' && !Number.isFinite(value) ? null : value;
}

/**
 * Lines for the input's external data files an --overwrite write removed (OUT no longer uses them), each
 * named as the input names it (`input`'s folder and the location in `inputData`).
 */
export function describeRemoved(removed: readonly string[], input: string, inputData: readonly ExternalFile[]): string {
  const shown = (file: string) => {
    const data = inputData.find((d) => d.file === file);
    return data ? path.join(path.dirname(input), data.location) : file;
  };
  return removed.map((file) => `\nremoved ${shown(file)} (the input's external data; the output no longer uses it)`).join('');
}
