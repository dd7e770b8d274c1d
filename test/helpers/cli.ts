// The command line as a user runs it: `node bin/vcompile ARGS` in a process of its own, waited for.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const BIN = path.resolve(import.meta.dirname, '../../bin/vcompile');

/** Runs `vcompile ...args` to its end; exit code (null when killed by a signal), stdout and stderr. */
export function vcompile(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
