// What each CLI command does, on top of the library. Output goes to stdout; --json prints one object.
import { runPasses } from '../../passes/pipeline.js';
import { deadCodePass } from '../../passes/dce/index.js';
import { ExitCode, VcompileError } from '../errors.js';
import { formatSummary, summarize } from '../inspect/summary.js';
import { loadModel, saveModel } from '../onnx/file.js';
import { verifyModel } from '../verify/ir.js';

export function inspectFile(file: string, options: { json: boolean }): number {
  const summary = summarize(loadModel(file));
  print(options.json ? JSON.stringify({ file, ...summary }, null, 2) : formatSummary(summary, file));
  return ExitCode.ok;
}

export interface CompileOptions {
  output: string;
  externalData: 'auto' | 'always' | 'never';
  dataLocation?: string;
  sizeThreshold: number;
  overwrite: boolean;
  eliminateDeadCode: boolean;
  verifyIr: boolean;
  json: boolean;
}

export function compileFile(file: string, options: CompileOptions): number {
  const model = loadModel(file);
  if (options.verifyIr) requireValid(verifyModel(model), file);
  const passes = options.eliminateDeadCode ? [deadCodePass] : [];
  const result = runPasses(model, passes, { verify: options.verifyIr });
  const written = saveModel(result.model, options.output, {
    externalData: options.externalData,
    location: options.dataLocation,
    sizeThreshold: options.sizeThreshold,
    protect: [file],
    overwrite: options.overwrite,
  });
  const report = { input: file, output: options.output, bytes: written.bytes, externalData: written.externalFile ?? null, passes: result.passes };
  print(options.json ? JSON.stringify(report, null, 2) : describeWrite(report));
  return ExitCode.ok;
}

function requireValid(problems: ReturnType<typeof verifyModel>, file: string): void {
  if (problems.length === 0) return;
  const first = problems[0];
  throw new VcompileError(`${file}: invalid graph: ${first.where}: ${first.message}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`);
}

function describeWrite(report: { output: string; bytes: number; externalData: string | null; passes: { name: string; report: object }[] }): string {
  const lines = report.passes.map((p) => `${p.name}: ${JSON.stringify(p.report)}`);
  lines.push(`wrote ${report.output} (${report.bytes} bytes${report.externalData ? `, weights in ${report.externalData}` : ''})`);
  return lines.join('\n');
}

function print(text: string): void {
  process.stdout.write(`${text}\n`);
}
