// Verification in a child process. ONNX Runtime is native code: a model it mishandles can kill the process
// (a segfault, not an exception). The check after a compile and `vcompile verify` therefore run in a child,
// so such a crash becomes one line naming the models, and the parent, which may hold the model it just
// wrote, keeps no ONNX Runtime session of its own.
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CheckFailedError, type MessagePart, VcompileError } from '../errors.js';
import type { SessionOptions } from '../runtime/session.js';
import type { Thresholds, VerifyReport } from './numeric.js';

/** verifyModels' options in a form that crosses a process boundary (data by path). */
export interface IsolatedOptions extends Thresholds {
  batches?: number[];
  seqs?: number[];
  dims?: Record<string, number>;
  seed?: number;
  inputsDir?: string;
  data?: { path: string; samples?: number; skip?: number; batchSize?: number };
  logits?: string[];
  perLayer?: boolean;
  ratio?: number;
  session?: Omit<SessionOptions, 'extraOutputs' | 'notify'>;
}

export interface IsolatedHooks {
  onProgress?: (done: number, total: number) => void;
  notify?: (line: string, parts: readonly MessagePart[]) => void;
  /** the child's entry point (default: child.js beside the built code) */
  childModule?: string;
}

export type ChildMessage =
  | { kind: 'progress'; done: number; total: number }
  | { kind: 'notice'; line: string; parts: MessagePart[] }
  | { kind: 'report'; report: VerifyReport }
  | { kind: 'error'; parts: MessagePart[]; check: boolean }
  | { kind: 'internal'; message: string; stack?: string };

/** Where the compiled child entry lives: beside this file when running from dist/, else in dist/. */
function childEntry(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return path.join(path.dirname(here), 'child.js');
  return path.resolve(path.dirname(here), '../../dist/src/verify/child.js');
}

/** Run verifyModels(original, rewritten, options) in a child process. */
export function verifyIsolated(
  original: string,
  rewritten: string,
  options: IsolatedOptions,
  hooks: IsolatedHooks = {},
): Promise<VerifyReport> {
  return new Promise((resolve, reject) => {
    const child = fork(hooks.childModule ?? childEntry(), [], {
      serialization: 'advanced',
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let settled = false;
    const settle = (f: () => void) => {
      if (settled) return;
      settled = true;
      f();
    };
    child.on('message', (m: ChildMessage) => {
      if (m.kind === 'progress') hooks.onProgress?.(m.done, m.total);
      else if (m.kind === 'notice') hooks.notify?.(m.line, m.parts);
      else if (m.kind === 'report') settle(() => resolve(m.report));
      else if (m.kind === 'error') settle(() => reject(m.check ? new CheckFailedError(m.parts) : new VcompileError(m.parts)));
      else settle(() => reject(Object.assign(new Error(m.message), { stack: m.stack })));
    });
    child.on('error', (error) => settle(() => reject(error)));
    child.on('exit', (code, signal) => {
      settle(() =>
        reject(
          new VcompileError(
            `onnxruntime crashed while comparing ${rewritten} with ${original} (${signal ? `signal ${signal}` : `exit code ${code}`}); the models were not compared`,
          ),
        ),
      );
    });
    try {
      child.send({ original, rewritten, options });
    } catch (error) {
      child.kill();
      settle(() => reject(error));
    }
  });
}
