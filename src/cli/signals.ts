// Ctrl-C (SIGINT), SIGTERM and SIGHUP while a command writes: the temporary files of the write (and a
// kept original, see --overwrite) are removed, one line says so, and the process exits with 128 + the
// signal number (130, 143, 129).
//
// The handlers go in just before a command creates its first temporary file. Until then the default
// applies (the process ends at once: there is nothing to clean up), so an interrupt during a long load or
// rewrite, which runs without pausing, is not held back. JavaScript handles a signal only when the event
// loop runs: saveModelAsync pauses every few megabytes for that, and renames only after the last byte, so a
// signal finds either no output written or all of it.
import { removeTemporaryFiles } from '../onnx/file.js';

const SIGNALS = [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
] as const;

let enabled = false;
let installed = false;

/** Called by the command line's entry point: commands called from elsewhere (tests) leave signals alone. */
export function enableSignalCleanup(): void {
  enabled = true;
}

/** Installs the handlers (once) when the entry point enabled them; call before the first temporary file. */
export function beforeWriting(): void {
  if (!enabled || installed) return;
  installed = true;
  for (const [signal, code] of SIGNALS) process.on(signal, () => interrupted(signal, code));
}

/** What the handlers do, apart from exiting: remove the temporary files and say so in one line. */
function interruptedLine(signal: string): string {
  const removed = removeTemporaryFiles();
  const count = (n: number, what: string) => (n ? [`${n} temporary ${what}${n === 1 ? '' : 's'}`] : []);
  const folders = removed.filter((r) => r.folder).length;
  const parts = [...count(removed.length - folders, 'file'), ...count(folders, 'folder')];
  return `vcompile: interrupted by ${signal}${parts.length ? ` (removed ${parts.join(' and ')})` : ''}\n`;
}

/** Quit now on a signal (e.g. a second Ctrl-C a command caught itself): the same cleanup and line as the handlers. */
export function interrupted(signal: string, code: number): never {
  process.stderr.write(interruptedLine(signal));
  process.exit(code);
}
