// How the command line reports failures: one line on stderr and a documented exit code. Errors from the
// library name options by reference (src/errors.ts); here each reference becomes the flag a user types.
import { CheckFailedError, type MessagePart, type OptionName, type OptionRef, renderMessage, VcompileError } from '../errors.js';

export const ExitCode = {
  ok: 0,
  /** a check failed (verification gate) */
  checkFailed: 1,
  /** bad input: unreadable model, wrong arguments, refused rewrite */
  badInput: 2,
  /** a bug: the message says so, VCOMPILE_DEBUG=1 prints the stack */
  internal: 70,
} as const;

/** The flag of each library option. */
const FLAGS: Record<OptionName, string> = {
  ep: '--ep',
  inputsDir: '--inputs',
  overwrite: '--overwrite',
  plugins: '--plugin',
  layers: '--layers',
  compressCausal: '--compress-causal',
  modules: '--module',
  modulesDir: '--modules',
  switchable: '--switchable',
  defaultRatio: '--default-ratio',
  targetSpeedup: '--target-speedup',
  ratios: '--ratios',
  seqs: '--seq',
  batches: '--batch',
  dims: '--dim',
  data: '--data',
  logits: '--logits',
  output: '-o',
  dataLocation: '--data-location',
  sizeThreshold: '--size-threshold',
  sessions: '--sessions',
  fitTarget: '--fit-target',
  speedupSeq: '--speedup-seq',
  units: '--units',
};

function asFlag(ref: OptionRef): string {
  return ref.value === undefined ? FLAGS[ref.option] : `${FLAGS[ref.option]} ${ref.value}`;
}

/** A message with its option references written as flags. */
export function cliMessage(parts: readonly MessagePart[]): string {
  return renderMessage(parts, asFlag);
}

const noticesGiven = new Set<string>();

/** A library notice (e.g. the `--ep auto` fallback) on stderr, once per process, with flags for options. */
export function printNotice(_line: string, parts: readonly MessagePart[]): void {
  const text = cliMessage(parts);
  if (noticesGiven.has(text)) return;
  noticesGiven.add(text);
  process.stderr.write(`vcompile: note: ${text}\n`);
}

/** The line printed for a failure (without the `vcompile: ` prefix) and the exit code. */
export function describeFailure(error: unknown): { line: string; code: number; stack?: string } {
  if (error instanceof CheckFailedError) return { line: cliMessage(error.parts), code: ExitCode.checkFailed };
  if (error instanceof VcompileError) return { line: cliMessage(error.parts), code: ExitCode.badInput };
  const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
  return { line: `internal error: ${message} (set VCOMPILE_DEBUG=1 for details)`, code: ExitCode.internal, stack: (error as Error)?.stack };
}
