// A model's memory, measured in a process of its own: a fresh `node` runs src/bench/memory-child.ts
// (compiled, under dist/), which creates the model's session and runs it once, and reports how far that
// raised its resident memory. Measured in the benchmarking process instead, every model after the first
// would find the peak already raised by the models before it, and the figures would depend on the order.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DimBinding, InputSpec } from '../analysis/inputs.js';
import { ModelBuilder } from '../ir/builder.js';
import { DataType, tensorType } from '../ir/types.js';
import { encodeModel, loadModel } from '../onnx/file.js';
import { RATIO_INPUT, ratioTensor, withFeedableRatio } from '../runtime/adaptive.js';
import { generateFeeds } from '../runtime/feeds.js';
import { openSession, prepareFeeds, runPrepared, type SessionOptions } from '../runtime/session.js';

export const MEMORY_NOTE =
  'memory: in a fresh process for each model, after ONNX Runtime has been set up with a one-node model, the ' +
  'peak resident set size while the session is created and run once at the largest batch x seq, minus the ' +
  'resident size just before (Linux getrusage maxrss; when that window did not raise the process peak, the ' +
  'resident size after the run, a lower bound): weights as ONNX Runtime holds them, its arena and ' +
  'activations, independent of the order of the models.';

/** What the child needs: the model, its inputs at the largest point, and the session settings. */
export interface MemoryJob {
  file: string;
  /** vcompile_ratio to feed (a switchable model, opened without the input's default), or null */
  ratio: number | null;
  specs: InputSpec[];
  at: DimBinding;
  seed: number;
  session: Omit<SessionOptions, 'notify' | 'extraOutputs' | 'externalData'>;
}

export interface MemoryResult {
  /** MiB, or null where the platform has no peak RSS (not Linux) */
  memoryMiB: number | null;
}

/** The child's work: open, run once, measure. */
export async function probeMemory(job: MemoryJob): Promise<MemoryResult> {
  // A switchable model is opened from bytes without the ratio's default; the bytes exist before the
  // window opens, as a file read by ONNX Runtime would not.
  const model = job.ratio === null ? job.file : encodeModel(withFeedableRatio(loadModel(job.file)));
  const generated = generateFeeds(job.specs, job.at, job.seed);
  const feeds = prepareFeeds(job.ratio === null ? generated : { ...generated, [RATIO_INPUT]: ratioTensor(job.ratio) });
  // ONNX Runtime's one-time set-up in a process (its environment, libraries paged in: some 25 MiB) is
  // not the model's: a one-node model pays it first.
  await (await openSession(encodeModel(oneNode()), job.session)).release();
  const rssBefore = process.memoryUsage.rss();
  const peakBefore = process.resourceUsage().maxRSS * 1024;
  const session = await openSession(model, job.session);
  await runPrepared(session, feeds);
  const rssAfter = process.memoryUsage.rss();
  const peakAfter = process.resourceUsage().maxRSS * 1024;
  await session.release();
  if (process.platform !== 'linux') return { memoryMiB: null };
  const peak = peakAfter > peakBefore ? peakAfter : rssAfter;
  return { memoryMiB: Math.max(0, peak - rssBefore) / 2 ** 20 };
}

function oneNode() {
  const b = new ModelBuilder(13);
  const x = b.input('x', tensorType(DataType.FLOAT, [1]));
  b.output(b.op.Identity(x), 'y', tensorType(DataType.FLOAT, [1]));
  return b.model;
}

/** The compiled child script, found from this file whether it runs from dist/src/bench or src/bench (tests). */
export function memoryChildScript(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const root = path.resolve(here, '..', '..');
  return path.basename(root) === 'dist' ? path.join(here, 'memory-child.js') : path.join(root, 'dist', 'src', 'bench', 'memory-child.js');
}

/** Run `job` in a fresh node process; an error says why the child gave no figure. */
export function measureInChild(job: MemoryJob, script = memoryChildScript()): Promise<MemoryResult> {
  if (!fs.existsSync(script)) return Promise.reject(new Error(`${script} is missing (npm run build)`));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) {
        try {
          resolve(JSON.parse(stdout) as MemoryResult);
          return;
        } catch {
          // falls through to the error below
        }
      }
      const why = stderr.trim().split('\n').at(-1) || `exit code ${code}`;
      reject(new Error(why));
    });
    child.stdin.end(JSON.stringify(job));
  });
}
