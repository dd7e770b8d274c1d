// Errors users see: one line, no stack trace, a documented exit code.

export const ExitCode = {
  ok: 0,
  /** a check failed (verification gate) */
  checkFailed: 1,
  /** bad input: unreadable model, wrong arguments, refused rewrite */
  badInput: 2,
} as const;

export class VcompileError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = ExitCode.badInput,
  ) {
    super(message);
  }
}
