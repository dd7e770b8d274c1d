// I/O benchmark: read + write a BERT-base-shaped model with no pass, against `cp`, Python's onnx and
// protobufjs + onnx-proto. Each contender runs in its own child process so its peak RSS is its own;
// repetitions are interleaved (and their order rotated) so drift on the machine hits everyone alike.
//
//   npm run bench:io [-- --model PATH] [--reps N] [--json]
//
// 'node readFileSync + writeFileSync' is the floor for any design that holds the model in memory:
// cp copies inside the kernel (copy_file_range), while a process that reads the file pays for a
// second copy and for faulting in fresh pages.
//
// Targets (vcompile, inline): within 2x of cp, at least 2x faster than onnx.load + onnx.save, and a
// peak RSS under 1.3x the model file's size.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const THIS_FILE = fileURLToPath(import.meta.url);
const REPO_ROOT = path.resolve(path.dirname(THIS_FILE), '../..');
const DEFAULT_MODEL = path.join(REPO_ROOT, 'bench/out/bert_base.onnx');
const PYTHON = '/usr/bin/python3';
const TIME = '/usr/bin/time';

const TARGET_VS_CP = 2;
const TARGET_VS_PYTHON = 2;
const TARGET_RSS_RATIO = 1.3;

/** What a child reports: the load + save wall and CPU (user + system) time measured inside it, and its peak RSS. */
interface ChildResult {
  seconds: number;
  cpuSeconds: number;
  maxRssKiB: number;
}

interface Contender {
  id: string;
  label: string;
  /** output files besides `out` itself (removed after each run) */
  sidecars: (out: string) => string[];
  /** whether the output should equal the input byte for byte */
  compare: boolean;
  run: (model: string, out: string) => ChildResult;
}

interface Sample extends ChildResult {
  /** wall time of the whole child process, start-up and imports included, as the parent saw it */
  processSeconds: number;
  identical?: boolean;
}

// ------------------------------------------------------------------------------------ children
// `node io.js --child NAME MODEL OUT` does one contender's work and prints a ChildResult as JSON.

async function runChild(name: string, model: string, out: string): Promise<void> {
  let work: () => void;
  if (name === 'vcompile' || name === 'vcompile-external') {
    const { loadModel, saveModel } = await import('../src/onnx/file.js');
    const externalData = name === 'vcompile' ? 'never' : 'always';
    work = () => saveModel(loadModel(model), out, { externalData });
  } else if (name === 'node-floor') {
    work = () => fs.writeFileSync(out, fs.readFileSync(model));
  } else if (name === 'protobufjs') {
    const { onnx } = (await import('onnx-proto')).default;
    work = () => {
      const message = onnx.ModelProto.decode(fs.readFileSync(model));
      fs.writeFileSync(out, onnx.ModelProto.encode(message).finish());
    };
  } else {
    throw new Error(`unknown child contender ${name}`);
  }
  const cpuStart = cpuSeconds();
  const start = process.hrtime.bigint();
  work();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const result: ChildResult = { seconds, cpuSeconds: cpuSeconds() - cpuStart, maxRssKiB: process.resourceUsage().maxRSS };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function cpuSeconds(): number {
  const usage = process.resourceUsage();
  return (usage.userCPUTime + usage.systemCPUTime) / 1e6;
}

const PYTHON_CHILD = `
import json, resource, sys, time
import onnx
src, dst = sys.argv[1], sys.argv[2]
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
cpu_start = cpu()
start = time.perf_counter()
onnx.save(onnx.load(src), dst)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "cpuSeconds": cpu() - cpu_start,
                  "maxRssKiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
`;

function spawnOrFail(command: string, args: string[]): { stdout: string; stderr: string; seconds: number } {
  const start = process.hrtime.bigint();
  const r = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 1 << 20 });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${r.status ?? r.signal}:\n${r.stderr}`);
  return { stdout: r.stdout, stderr: r.stderr, seconds };
}

function lastJsonLine(text: string): ChildResult {
  const lines = text.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as ChildResult;
}

function nodeChild(name: string): Contender['run'] {
  return (model, out) => lastJsonLine(spawnOrFail(process.execPath, [THIS_FILE, '--child', name, model, out]).stdout);
}

/** cp has no hooks inside, so it runs under GNU time; its start-up is a millisecond or two. */
function runCp(model: string, out: string): ChildResult {
  const r = spawnOrFail(TIME, ['-f', '%U %S %M', 'cp', model, out]);
  const lines = r.stderr.trim().split('\n');
  const [user, system, rss] = lines[lines.length - 1].split(' ').map(Number);
  return { seconds: r.seconds, cpuSeconds: user + system, maxRssKiB: rss };
}

const CONTENDERS: Contender[] = [
  { id: 'cp', label: 'cp', sidecars: () => [], compare: true, run: runCp },
  {
    id: 'node-floor',
    label: 'node readFileSync + writeFileSync (floor)',
    sidecars: () => [],
    compare: true,
    run: nodeChild('node-floor'),
  },
  { id: 'vcompile', label: 'vcompile load+save (inline)', sidecars: () => [], compare: true, run: nodeChild('vcompile') },
  {
    id: 'vcompile-external',
    label: "vcompile load+save (externalData: 'always')",
    sidecars: (out) => [`${out}.data`],
    compare: false,
    run: nodeChild('vcompile-external'),
  },
  {
    id: 'python-onnx',
    label: 'python3 onnx.load + onnx.save',
    sidecars: () => [],
    compare: true,
    run: (model, out) => lastJsonLine(spawnOrFail(PYTHON, ['-c', PYTHON_CHILD, model, out]).stdout),
  },
  { id: 'protobufjs', label: 'protobufjs + onnx-proto', sidecars: () => [], compare: true, run: nodeChild('protobufjs') },
];

// ------------------------------------------------------------------------------------ driver

interface Summary {
  id: string;
  label: string;
  medianSeconds: number;
  minSeconds: number;
  maxSeconds: number;
  medianProcessSeconds: number;
  medianCpuSeconds: number;
  peakRssMiB: number;
  rssOverModel: number;
  vsCp: number;
  vsPython: number;
  /** every repetition's output equals the input (undefined where the layout differs by design) */
  identical?: boolean;
  samples: Sample[];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function sameBytes(a: string, b: string): boolean {
  const r = spawnSync('cmp', ['-s', a, b]);
  if (r.status === 0) return true;
  if (r.status === 1) return false;
  throw new Error(`cmp ${a} ${b} failed: ${r.stderr}`);
}

function ensureModel(model: string, explicit: boolean): void {
  if (fs.existsSync(model)) return;
  if (explicit) throw new Error(`${model}: no such file`);
  console.error(`generating ${model} (once; it is gitignored) ...`);
  fs.mkdirSync(path.dirname(model), { recursive: true });
  spawnOrFail(PYTHON, [path.join(REPO_ROOT, 'bench/models/bert_base.py'), model]);
}

/** Reads the model once so every contender starts from a warm page cache. */
function warmCache(model: string): void {
  const fd = fs.openSync(model, 'r');
  const buf = Buffer.allocUnsafe(1 << 24);
  try {
    while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The external-data output cannot be compared with cmp; instead it is read back and re-encoded inline,
 * which must give the input's bytes again. Runs in this (unmeasured) process.
 */
async function externalRoundTripIdentical(model: string, scratch: string): Promise<boolean> {
  const { loadModel, encodeModel } = await import('../src/onnx/file.js');
  const out = path.join(scratch, 'external-check.onnx');
  nodeChild('vcompile-external')(model, out);
  try {
    const again = encodeModel(loadModel(out));
    return Buffer.compare(Buffer.from(again.buffer, again.byteOffset, again.byteLength), fs.readFileSync(model)) === 0;
  } finally {
    fs.rmSync(out, { force: true });
    fs.rmSync(`${out}.data`, { force: true });
  }
}

async function measure(model: string, reps: number): Promise<{ summaries: Summary[]; externalIdentical: boolean }> {
  const scratch = fs.mkdtempSync(path.join(REPO_ROOT, 'bench/out/io-'));
  const samples = new Map<string, Sample[]>(CONTENDERS.map((c) => [c.id, []]));
  try {
    warmCache(model);
    for (let rep = 0; rep < reps; rep++) {
      // Rotate the order each repetition so no contender always runs right after the same neighbour.
      const order = CONTENDERS.map((_, i) => CONTENDERS[(i + rep) % CONTENDERS.length]);
      for (const c of order) {
        const out = path.join(scratch, `${c.id}.onnx`);
        const start = process.hrtime.bigint();
        const result = c.run(model, out);
        const processSeconds = Number(process.hrtime.bigint() - start) / 1e9;
        const sample: Sample = { ...result, processSeconds };
        if (c.compare) sample.identical = sameBytes(model, out);
        samples.get(c.id)!.push(sample);
        for (const f of [out, ...c.sidecars(out)]) fs.rmSync(f, { force: true });
        console.error(`rep ${rep + 1}/${reps} ${c.id}: ${result.seconds.toFixed(3)} s, ${(result.maxRssKiB / 1024).toFixed(0)} MiB`);
      }
    }
    const externalIdentical = await externalRoundTripIdentical(model, scratch);
    return { summaries: summarize(model, samples), externalIdentical };
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

function summarize(model: string, samples: Map<string, Sample[]>): Summary[] {
  const modelMiB = fs.statSync(model).size / 2 ** 20;
  const medianOf = (id: string) => median(samples.get(id)!.map((s) => s.seconds));
  const cp = medianOf('cp');
  const python = medianOf('python-onnx');
  return CONTENDERS.map((c) => {
    const list = samples.get(c.id)!;
    const seconds = list.map((s) => s.seconds);
    const peakRssMiB = Math.max(...list.map((s) => s.maxRssKiB)) / 1024;
    const m = median(seconds);
    return {
      id: c.id,
      label: c.label,
      medianSeconds: m,
      minSeconds: Math.min(...seconds),
      maxSeconds: Math.max(...seconds),
      medianProcessSeconds: median(list.map((s) => s.processSeconds)),
      medianCpuSeconds: median(list.map((s) => s.cpuSeconds)),
      peakRssMiB,
      rssOverModel: peakRssMiB / modelMiB,
      vsCp: m / cp,
      vsPython: m / python,
      identical: c.compare ? list.every((s) => s.identical) : undefined,
      samples: list,
    };
  });
}

function table(summaries: Summary[], externalIdentical: boolean): string {
  const header = [
    'contender',
    'median s',
    'min–max s',
    'process s',
    'CPU s',
    'peak RSS MiB',
    'RSS / model',
    'vs cp',
    'vs python',
    'same bytes',
  ];
  const rows = summaries.map((s) => [
    s.label,
    s.medianSeconds.toFixed(3),
    `${s.minSeconds.toFixed(3)}–${s.maxSeconds.toFixed(3)}`,
    s.medianProcessSeconds.toFixed(3),
    s.medianCpuSeconds.toFixed(3),
    s.peakRssMiB.toFixed(0),
    s.rssOverModel.toFixed(2),
    `${s.vsCp.toFixed(2)}x`,
    `${s.vsPython.toFixed(2)}x`,
    s.identical === undefined ? (externalIdentical ? 'yes (re-inlined)' : 'NO (re-inlined)') : s.identical ? 'yes' : 'NO',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n');
}

function verdicts(summaries: Summary[]): string[] {
  const v = summaries.find((s) => s.id === 'vcompile')!;
  const mark = (ok: boolean) => (ok ? 'met' : 'MISSED');
  return [
    `within ${TARGET_VS_CP}x of cp: ${v.vsCp.toFixed(2)}x -> ${mark(v.vsCp <= TARGET_VS_CP)}`,
    `at least ${TARGET_VS_PYTHON}x faster than python onnx: ${(1 / v.vsPython).toFixed(2)}x -> ${mark(1 / v.vsPython >= TARGET_VS_PYTHON)}`,
    `peak RSS under ${TARGET_RSS_RATIO}x the model: ${v.rssOverModel.toFixed(2)}x -> ${mark(v.rssOverModel < TARGET_RSS_RATIO)}`,
    `output identical to input: ${v.identical ? 'yes' : 'NO'}`,
  ];
}

/** Load average is part of the record: on a shared 2-core machine it explains most of the spread. */
function machineLine(loadBefore: number, loadAfter: number): string {
  const cpus = os.cpus();
  const python = spawnSync(PYTHON, ['-c', 'import onnx, sys; print(onnx.__version__, sys.version.split()[0])'], { encoding: 'utf8' });
  return [
    `${cpus.length} x ${cpus[0]?.model ?? 'unknown CPU'}`,
    `${(os.totalmem() / 2 ** 30).toFixed(0)} GiB`,
    `node ${process.versions.node}`,
    `python onnx/python ${python.stdout.trim() || '?'}`,
    `load average ${loadBefore.toFixed(1)} -> ${loadAfter.toFixed(1)}`,
  ].join(', ');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv[0] === '--child') return runChild(argv[1], argv[2], argv[3]);
  const { values } = parseArgs({
    args: argv,
    options: { model: { type: 'string' }, reps: { type: 'string', default: '5' }, json: { type: 'boolean', default: false } },
  });
  const model = path.resolve(values.model ?? DEFAULT_MODEL);
  const reps = Number(values.reps);
  if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps ${values.reps} is not a positive integer`);
  ensureModel(model, values.model !== undefined);
  fs.mkdirSync(path.join(REPO_ROOT, 'bench/out'), { recursive: true });
  const bytes = fs.statSync(model).size;
  const loadBefore = os.loadavg()[0];
  const { summaries, externalIdentical } = await measure(model, reps);
  const machine = machineLine(loadBefore, os.loadavg()[0]);
  if (values.json) {
    console.log(JSON.stringify({ model, bytes, reps, machine, externalIdentical, summaries, verdicts: verdicts(summaries) }, null, 2));
    return;
  }
  console.log(`model: ${model} (${bytes} bytes, ${(bytes / 2 ** 20).toFixed(1)} MiB), ${reps} repetitions, warm page cache`);
  console.log(`machine: ${machine}`);
  console.log('median s / CPU s: load + save inside the child, wall / user + system (start-up and imports excluded;');
  console.log('cp: whole process); process s: the whole child as the parent saw it; peak RSS: highest of the runs');
  console.log(table(summaries, externalIdentical));
  for (const line of verdicts(summaries)) console.log(line);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
});
