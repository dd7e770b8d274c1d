// Errors users see: one line, no stack trace.
//
// Code below the CLI says what went wrong in the library's own terms. Where a message names an option
// (the bad value, or what to pass instead) it holds a reference to the library option, not a command-line
// flag: the CLI (src/cli/errors.ts) writes the reference as the flag the user typed (`--ep cuda`), a
// library caller reads the option's name (`ep=cuda`) in `error.message`. Whether a failure is bad input or
// a failed check is the error's class; the exit codes those map to are the CLI's.

/** The library options a message can point at; the CLI knows the flag of each. */
export type OptionName =
  | 'ep'
  | 'inputsDir'
  | 'overwrite'
  | 'plugins'
  | 'layers'
  | 'compressCausal'
  | 'modules'
  | 'modulesDir'
  | 'switchable'
  | 'defaultRatio'
  | 'targetSpeedup'
  | 'ratios'
  | 'seqs'
  | 'batches'
  | 'dims'
  | 'data'
  | 'logits'
  | 'output'
  | 'dataLocation'
  | 'sizeThreshold'
  | 'sessions'
  | 'fitTarget'
  | 'speedupSeq'
  | 'units';

/** An option named inside a message, with the value given (if any) and optional prose for library readers. */
export interface OptionRef {
  option: OptionName;
  value?: string;
  /** how a library reader sees the reference instead of `option=value` */
  prose?: string;
}

export type MessagePart = string | OptionRef;

/** How a message names what it is about: text, an option reference, or parts of both. */
export type Label = string | OptionRef | readonly MessagePart[];

/** A reference to `name` (with `value`) for a message; `prose` replaces `name=value` for library readers. */
export function option(name: OptionName, value?: string | number, prose?: string): OptionRef {
  return { option: name, value: value === undefined ? undefined : String(value), prose };
}

/** A message as parts, written as a template: msg`layer ${i}: ... (${option('compressCausal', i)} forces it)`. */
export function msg(strings: TemplateStringsArray, ...values: unknown[]): MessagePart[] {
  const parts: MessagePart[] = [];
  strings.forEach((text, i) => {
    if (text) parts.push(text);
    if (i >= values.length) return;
    const value = values[i];
    if (Array.isArray(value)) parts.push(...(value as MessagePart[]));
    else parts.push(isOptionRef(value) ? value : String(value));
  });
  return parts;
}

function isOptionRef(value: unknown): value is OptionRef {
  return typeof value === 'object' && value !== null && 'option' in value;
}

/** A message with each option reference written by `write` (the library's `name=value`, or a flag). */
export function renderMessage(parts: readonly MessagePart[], write: (ref: OptionRef) => string = libraryOption): string {
  return parts.map((p) => (typeof p === 'string' ? p : write(p))).join('');
}

function libraryOption(ref: OptionRef): string {
  return ref.prose ?? (ref.value === undefined ? ref.option : `${ref.option}=${ref.value}`);
}

/** Bad input: an unreadable or invalid model, wrong options, a refused rewrite, a model ONNX Runtime cannot run. */
export class VcompileError extends Error {
  readonly parts: readonly MessagePart[];

  constructor(message: string | readonly MessagePart[]) {
    const parts = typeof message === 'string' ? [message] : [...message];
    super(renderMessage(parts));
    this.parts = parts;
  }

  /** The same kind of error with its message between `before` and `after`. */
  wrapped(before: string, after = ''): VcompileError {
    const Kind = this.constructor as new (message: readonly MessagePart[]) => VcompileError;
    return new Kind([before, ...this.parts, after].filter((p) => p !== ''));
  }

  /** The exit code the CLI gives this kind of error (kept for callers that read it). */
  get exitCode(): number {
    return 2;
  }
}

/** A check the caller asked for did not pass (a verification gate). */
export class CheckFailedError extends VcompileError {
  override get exitCode(): number {
    return 1;
  }
}
