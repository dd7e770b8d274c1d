// Assembling to a target speed-up from modules fitted on the user's data (`--target-speedup R
// --fit-modules --data PATH`): every 2- and 3-layer span of non-causal layers that a module can replace
// gets a fitted module (fit-modules.ts, each on the original model's stream); the assembler (assemble.ts)
// enumerates the placements with the fewest layers replaced that reach R, as it does for a folder of
// modules, and ranks them by fidelity measured on the data: the top-1 agreement of the class outputs with
// the original's when the model has class outputs (e.g. a masked LM's logits), else the smallest output
// cosine. It runs on the calibration samples the fits held out (every fifth). The chosen plan's spans are
// then refitted in sequence (each on the stream the earlier fitted modules produce) before the model is
// written. A fitted module costs at most its span's first layer plus the context maps (when asked for:
// passes/modular/context.ts), so the placements are known before any fit, from stand-ins of that cost: only
// the spans some tied placement uses are fitted, and an unreachable target is refused at once. (A module
// whose fit chose no context maps costs less than its stand-in: the plan is then faster than planned.)
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ModuleInit } from '../../passes/modular/capture.js';
import { addContextMaps, CONTEXT_PARTS } from '../../passes/modular/context.js';
import { checkModuleContract, type Module } from '../../passes/modular/contract.js';
import { extractModule } from '../../passes/modular/extract.js';
import { fitSite } from '../../passes/modular/fitted.js';
import { checkRemovable, spanName } from '../../passes/modular/span.js';
import { analyzeTransformer, type TransformerAnalysis } from '../analysis/index.js';
import type { FoundModule } from '../compile/load.js';
import { msg, option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { decodeModel, encodeModel, saveModel } from '../onnx/file.js';
import type { DataSet } from '../runtime/data.js';
import { verifyModels } from '../verify/numeric.js';
import { type AssembleOptions, type AssembleResult, assemble, type Candidate, type Fidelity } from './assemble.js';
import { fitModules, type ModuleFitProgress, type SpanFit, type SpanRequest } from './fit-modules.js';

export interface FittedAssembleOptions extends Omit<AssembleOptions, 'modulesDir' | 'modules' | 'fidelity' | 'refit' | 'bytes'> {
  init?: ModuleInit;
  /** fit context maps too (default true) */
  context?: boolean;
  /** samples per run (default 8) */
  batchSize?: number;
  onFitProgress?: (event: ModuleFitProgress) => void;
}

export interface FittedAssembleResult extends AssembleResult {
  /** every candidate's fit (on the original stream), and the chosen spans' fits in sequence */
  fits: { candidates: SpanFit[]; chosen: SpanFit[]; skipped: string[] };
}

/** Fit candidate modules for `file` (its bytes at opset >= 11) on `data`, then assemble them to the target. */
export async function assembleFitted(
  file: string,
  bytes: Uint8Array,
  data: DataSet,
  options: FittedAssembleOptions,
): Promise<FittedAssembleResult> {
  if (!(options.target > 1)) throw new VcompileError(msg`${option('targetSpeedup')} must be a number > 1, got ${options.target}`);
  const model = decodeModel(bytes, { label: file });
  const { spans: all, skipped, analysis } = candidateSpans(model);
  const describe = `modules fitted for its 2- and 3-layer spans (${all.map((s) => `${s.start}-${s.end}`).join(', ')})`;
  // the placements, from unfitted stand-ins of the same cost: which spans to fit
  const d = analysis.hidden!;
  const standIns = all.map((s) => {
    const label = `fitted L${s.start}-${s.end}`;
    const { module, values } = extractModule(model, s.start, s.start, analysis, { replaces: s.end - s.start + 1, label });
    if (options.context !== false)
      addContextMaps(module, values, fitSite(analysis, s.start, label), new Float32Array(CONTEXT_PARTS * d * d), 'all');
    return { file: label, module: contract(module, label), start: s.start, end: s.end, startFrom: 'metadata' as const };
  });
  const dry = await assemble(file, {
    ...options,
    bytes,
    timingRuns: 0,
    onProgress: undefined,
    modules: { found: standIns, describe: `the ${standIns.length} ${describe}` },
    fidelity: { measure: async () => ({ fidelity: 0, cosine: 0, metric: 'none' }) },
  });
  const used = new Set(dry.tied.flatMap((plan) => plan.candidates.map((c) => c.file)));
  const spans = all.filter((s) => used.has(`fitted L${s.start}-${s.end}`));
  const fitOptions = {
    init: options.init,
    context: options.context,
    batchSize: options.batchSize,
    threads: options.threads,
    onProgress: options.onFitProgress,
  };
  options.onProgress?.(`fitting ${spans.map((s) => spanName(s.start, s.end)).join(', ')} (the spans the tied placements use)`);
  const candidates = await fitModules(file, bytes, data, { ...fitOptions, spans, mode: 'independent' });
  const found: FoundModule[] = candidates.spans.map((fit) => {
    const key = `L${fit.start}-${fit.end}`;
    const label = `fitted ${key}`;
    return { file: label, module: contract(candidates.modules.get(key)!, label), start: fit.start, end: fit.end, startFrom: 'metadata' };
  });
  let chosen: SpanFit[] = [];
  const held = data.subset([...Array(data.size).keys()].filter((i) => i % 5 === 4));
  const result = await assemble(file, {
    ...options,
    bytes,
    modules: { found, describe: `the ${found.length} ${describe}` },
    fidelity: dataFidelity(file, held, options),
    refit: async (plan: Candidate[]): Promise<Module[]> => {
      options.onProgress?.(`refitting ${plan.map((c) => spanName(c.start, c.end)).join(', ')} in sequence`);
      const spans: SpanRequest[] = plan.map((c) => ({ start: c.start, end: c.end }));
      const refitted = await fitModules(file, bytes, data, { ...fitOptions, spans, mode: 'sequence' });
      chosen = refitted.spans;
      return plan.map((c) => contract(refitted.modules.get(`L${c.start}-${c.end}`)!, `fitted L${c.start}-${c.end}`));
    },
  });
  return { ...result, fits: { candidates: candidates.spans, chosen, skipped } };
}

/** Every 2- and 3-layer span of consecutive non-causal layers of one stack that a fitted module can replace. */
function candidateSpans(model: Model): { spans: SpanRequest[]; skipped: string[]; analysis: TransformerAnalysis } {
  const analysis = analyzeTransformer(model);
  if (analysis.error) throw new VcompileError(`cannot fit modules: transformer analysis stopped: ${analysis.error.message}`);
  const spans: SpanRequest[] = [];
  const skipped: string[] = [];
  for (const layer of analysis.layers) {
    for (const length of [2, 3]) {
      const end = layer.index + length - 1;
      if (end >= analysis.layers.length) continue;
      const layers = analysis.layers.slice(layer.index, end + 1);
      if (layers.some((l) => l.selfAttention.causal)) {
        skipped.push(`${spanName(layer.index, end)}: causal self-attention`);
        continue;
      }
      try {
        const what = spanName(layer.index, end);
        const { span } = extractModule(model, layer.index, end, analysis, { label: what });
        checkRemovable(span.region, span.output, analysis, what);
        fitSite(analysis, layer.index, what);
      } catch (error) {
        if (!(error instanceof VcompileError)) throw error;
        skipped.push(error.message);
        continue;
      }
      spans.push({ start: layer.index, end });
    }
  }
  if (spans.length === 0)
    throw new VcompileError(
      `no 2- or 3-layer span of non-causal layers to fit modules for${skipped.length ? ` (${skipped.join('; ')})` : ''}`,
    );
  return { spans, skipped, analysis };
}

/** Fidelity on the data: top-1 agreement of the class outputs with the original's, or the output cosine. */
function dataFidelity(file: string, data: DataSet, options: FittedAssembleOptions): Fidelity {
  return {
    async measure(model: Model) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-assemble-'));
      try {
        const candidate = path.join(dir, 'candidate.onnx');
        saveModel(model, candidate, { externalData: 'never' });
        const report = await verifyModels(file, candidate, {
          data,
          batchSize: options.batchSize,
          session: { threads: options.threads },
        });
        const cosine = Math.min(...report.outputs.map((o) => o.cosine));
        const classes = report.outputs.filter((o) => o.top1Agreement !== null).map((o) => o.top1Agreement!);
        return classes.length
          ? { fidelity: Math.min(...classes), cosine, metric: `top-1 agreement on ${data.size} held-out samples` }
          : { fidelity: cosine, cosine, metric: `cosine on ${data.size} held-out samples` };
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

function contract(model: Model, label: string): Module {
  return checkModuleContract(model, label, createHash('sha256').update(encodeModel(model)).digest('hex'));
}
