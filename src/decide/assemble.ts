// Assembling to a target speed-up: from a folder of modules, each made for one run of layers, choose the
// placement that reaches a MACs speed-up with the fewest original layers replaced (search.ts); among
// plans that tie, keep the one whose output is closest to the original's (cosine, on seeded generated
// inputs, in onnxruntime). The chosen model is timed against the original in a few paired rounds
// (src/bench/paired.ts), and the measured speed-up says when its spread leaves it unreliable.
// Which layers a module was made for: its metadata vcompile.start when present, else its file name
// `...L{START}-{END}.onnx`; a module with neither is refused.
// A caller may hand the modules in instead of a folder (modules fitted from data: assemble-fitted.ts), with
// its own measure of fidelity (on data) in place of the cosine, and a refit of the chosen plan's modules
// before the model is finished.
import * as path from 'node:path';
import type { Module } from '../../passes/modular/contract.js';
import { type ModularReport, type ModuleRequest, planModules } from '../../passes/modular/index.js';
import { fewestLayers, mostSaved, type Option, speedup } from '../../passes/modular/search.js';
import { spanName } from '../../passes/modular/span.js';
import { analyzeTransformer, concreteShape, type DimBinding, macsOf, shapesAt, shapesWithInputs } from '../analysis/index.js';
import { median, timePaired, unreliableBecause } from '../bench/paired.js';
import { discoverModules, type FoundModule, loadModule } from '../compile/load.js';
import { modularPass } from '../compile/passes.js';
import { msg, option, VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import type { Tensor } from '../ir/tensor.js';
import { decodeModel, encodeModel, readFileOrFail } from '../onnx/file.js';
import { describeInputs, generateFeeds } from '../runtime/feeds.js';
import { openSession, prepareFeeds, run, runPrepared, type Session } from '../runtime/session.js';
import { checkLengths } from '../verify/grid.js';
import { compareValues } from '../verify/numeric.js';

/** Where MACs are counted and the quick timing runs. */
export interface Point extends DimBinding {
  batch: number;
  seq: number;
}

export interface AssembleOptions extends Point {
  /** the folder of module files (or `modules`) */
  modulesDir?: string;
  /** modules in memory instead of a folder, and how messages name them as a whole */
  modules?: { found: FoundModule[]; describe: string };
  /** the model's bytes when the caller has them (default: read from the file) */
  bytes?: Uint8Array;
  /** how tied plans are compared (default: the cosine on seeded generated inputs) */
  fidelity?: Fidelity;
  /** the chosen plan's modules, replaced before the model is finished (e.g. refitted in sequence) */
  refit?: (chosen: Candidate[]) => Promise<Module[]>;
  /** the MACs speed-up to reach, > 1 */
  target: number;
  /** seeded generated inputs the cosine is measured on (batch 1, length `seq`); default 3 */
  seeds?: number;
  /** paired rounds of the quick timing at batch x seq (each runs both models once); default 5, 0 skips it */
  timingRuns?: number;
  threads?: number;
  /** most tied plans compared by cosine; default 16 */
  maxTied?: number;
  /** progress lines (candidates measured) */
  onProgress?: (line: string) => void;
}

export interface Candidate extends FoundModule {
  /** MACs of the nodes the module removes, and of the module itself */
  removedMacs: number;
  moduleMacs: number;
}

export interface AssemblePlan {
  candidates: Candidate[];
  layers: number;
  macsAfter: number;
  speedup: number;
  /** smallest cosine between the original's and the compiled model's outputs (over the seeded inputs, or the data) */
  cosine: number;
  /** what plans are ranked by: the cosine, or the caller's measure */
  fidelity: number;
}

/** A measure of how close a compiled model is to the original (higher is closer). */
export interface Fidelity {
  measure(model: Model): Promise<{ fidelity: number; cosine: number; metric: string }>;
}

export interface Timing {
  /** paired rounds */
  runs: number;
  /** median wall times */
  originalMs: number;
  compiledMs: number;
  /** median over rounds of the original's time over the compiled model's, in the same round */
  speedup: number;
  /** the quartiles of those per-round ratios */
  speedupIqr: [number, number];
  /** the same with process CPU time */
  cpuSpeedup: number;
  /** why the measurement cannot be read (the IQR contains 1, or is wide), or null */
  unreliable: string | null;
}

export interface AssembleResult {
  /** the input model with the chosen plan applied */
  model: Model;
  chosen: AssemblePlan;
  /** every plan tied on the fewest layers, with its cosine (the chosen one included) */
  tied: AssemblePlan[];
  tiedTruncated: boolean;
  candidates: Candidate[];
  at: Point;
  macsBefore: number;
  /** the compiled model's MACs counted on its own graph (equals chosen.macsAfter) */
  macsMeasured: number;
  timing?: Timing;
  passReport: ModularReport;
  /** what `fidelity` measures */
  metric: string;
  /** with `refit`: the chosen plan's fidelity before and after its modules were refitted */
  refitted?: { before: number; after: number };
}

export async function assemble(file: string, options: AssembleOptions): Promise<AssembleResult> {
  if (!(options.target > 1)) throw new VcompileError(msg`${option('targetSpeedup')} must be a number > 1, got ${options.target}`);
  const bytes = options.bytes ?? readFileOrFail(file);
  const fresh = () => decodeModel(bytes, { baseDir: path.dirname(file), label: file });
  const model = fresh();
  const analysis = analyzeTransformer(model);
  if (analysis.error) throw new VcompileError(`cannot place modules: transformer analysis stopped: ${analysis.error.message}`);
  const hidden = analysis.hidden;
  if (hidden === undefined) throw new VcompileError('cannot place modules: the hidden size of the model is not fixed');
  const at = { batch: options.batch, seq: options.seq };
  checkLengths(model, [at.seq], {}, 'speedupSeq');
  const shapes = shapesAt(model, at);
  const macsBefore = macsOf(model.graph.nodes, shapes, file);
  const found = options.modules?.found ?? discoverModules(options.modulesDir ?? '');
  const from = options.modules?.describe ?? `the ${found.length} module${found.length === 1 ? '' : 's'} in ${options.modulesDir}`;
  const loaded = new Map(found.map((f) => [f.file, f.module]));
  const candidates: Candidate[] = found.map((f) => {
    const request: ModuleRequest = { start: f.start, end: f.end, source: f.file, label: `module ${f.file} (${spanName(f.start, f.end)})` };
    const [placement] = planModules(model, analysis, { modules: [request], loaded }, loadModule);
    const biasShape = placement.bias && concreteShape(placement.bias, shapes);
    return {
      ...f,
      removedMacs: macsOf(placement.span.region, shapes, spanName(f.start, f.end)),
      moduleMacs: moduleMacs(f.module, at, hidden, biasShape),
    };
  });
  const optionsList: Option[] = candidates.map((c, id) => ({ id, start: c.start, end: c.end, saving: c.removedMacs - c.moduleMacs }));
  const search = fewestLayers(optionsList, analysis.layers.length, macsBefore, options.target, options.maxTied ?? 16);
  if (!search) {
    const best = mostSaved(optionsList, analysis.layers.length);
    const spans = best.plan.map((o) => `${spanName(o.start, o.end)} <- ${path.basename(candidates[o.id].file)}`).join(', ');
    throw new VcompileError(
      `target speed-up ${options.target}x cannot be reached with ${from}: ` +
        `the best reachable MACs speed-up at batch ${at.batch}, seq ${at.seq} is ${speedup(macsBefore, best.saved).toFixed(3)}x (${spans || 'no module saves MACs'})`,
    );
  }
  const measure = await Measurer.open(bytes, model, options);
  try {
    const score = async (model: Model) => {
      if (options.fidelity) return options.fidelity.measure(model);
      const cosine = await measure.cosine(model);
      return { fidelity: cosine, cosine, metric: 'cosine' };
    };
    const tied: { plan: AssemblePlan; model: Model; report: ModularReport }[] = [];
    let metric = 'cosine';
    for (const [i, plan] of search.plans.entries()) {
      const chosen = plan.map((o) => candidates[o.id]);
      const compiled = compile(fresh(), chosen, loaded);
      const scored = await score(compiled.model);
      metric = scored.metric;
      const saved = plan.reduce((sum, o) => sum + o.saving, 0);
      const { fidelity, cosine } = scored;
      tied.push({
        ...compiled,
        plan: {
          candidates: chosen,
          layers: search.layers,
          macsAfter: macsBefore - saved,
          speedup: speedup(macsBefore, saved),
          cosine,
          fidelity,
        },
      });
      options.onProgress?.(`plan ${i + 1}/${search.plans.length}: ${describePlan(chosen)}: ${metric} ${fidelity.toFixed(6)}`);
    }
    // highest fidelity; on a tie the larger speed-up, then the first found
    let best = tied.reduce((a, b) =>
      b.plan.fidelity > a.plan.fidelity || (b.plan.fidelity === a.plan.fidelity && b.plan.speedup > a.plan.speedup) ? b : a,
    );
    let refitted: AssembleResult['refitted'];
    if (options.refit) {
      const modules = await options.refit(best.plan.candidates);
      const replaced = new Map(loaded);
      best.plan.candidates.forEach((c, i) => replaced.set(c.file, modules[i]));
      const compiled = compile(fresh(), best.plan.candidates, replaced);
      const scored = await score(compiled.model);
      refitted = { before: best.plan.fidelity, after: scored.fidelity };
      best = { ...compiled, plan: { ...best.plan, fidelity: scored.fidelity, cosine: scored.cosine } };
    }
    const macsMeasured = macsOf(best.model.graph.nodes, shapesAt(best.model, at), 'the compiled model');
    const timing = (options.timingRuns ?? 5) > 0 ? await measure.time(best.model, at, options.timingRuns ?? 5) : undefined;
    return {
      model: best.model,
      chosen: best.plan,
      tied: tied.map((t) => t.plan),
      tiedTruncated: search.truncated,
      candidates,
      at,
      macsBefore,
      macsMeasured,
      timing,
      passReport: best.report,
      metric,
      ...(refitted ? { refitted } : {}),
    };
  } finally {
    await measure.release();
  }
}

function compile(model: Model, chosen: Candidate[], loaded: Map<string, Module>): { model: Model; report: ModularReport } {
  const modules = chosen.map((c) => ({ start: c.start, end: c.end, source: c.file }));
  const result = modularPass({ modules, loaded }).run(model);
  return { model: result.model, report: result.report };
}

/** A module's MACs with `hidden` [batch, seq, d] and `attention_bias` of shape `biasShape`. */
function moduleMacs(module: Module, at: Point, hidden: number, biasShape: readonly number[] | undefined): number {
  const shapes = new Map<string, readonly number[]>([[module.hiddenInput.name, [at.batch, at.seq, hidden]]]);
  if (module.biasInput) {
    if (!biasShape)
      throw new VcompileError(
        `module ${module.source}: the size of the model's attention bias at batch ${at.batch}, seq ${at.seq} is not known`,
      );
    shapes.set(module.biasInput.name, biasShape);
  }
  return macsOf(module.model.graph.nodes, shapesWithInputs(module.model, shapes), `module ${module.source}`);
}

export function describePlan(chosen: readonly Candidate[]): string {
  return chosen.map((c) => `${spanName(c.start, c.end)} <- ${path.basename(c.file)}`).join(', ');
}

/** Runs the original once per seed (cosine reference) and times models against it. */
class Measurer {
  private constructor(
    private readonly original: Session,
    private readonly feeds: Record<string, Tensor>[],
    private readonly reference: Record<string, Tensor>[],
    private readonly model: Model,
    private readonly threads: number | undefined,
  ) {}

  static async open(bytes: Uint8Array, model: Model, options: AssembleOptions): Promise<Measurer> {
    const original = await openSession(bytes, { threads: options.threads, spinning: false });
    const specs = describeInputs(model);
    const feeds = Array.from({ length: options.seeds ?? 3 }, (_, seed) => generateFeeds(specs, { batch: 1, seq: options.seq }, seed));
    const reference: Record<string, Tensor>[] = [];
    try {
      for (const f of feeds) reference.push(await run(original, f));
    } catch (error) {
      await original.release();
      if (error instanceof VcompileError) throw error.wrapped(`measuring the output cosine at batch 1, seq ${options.seq}: `);
      throw error;
    }
    return new Measurer(original, feeds, reference, model, options.threads);
  }

  async cosine(compiled: Model): Promise<number> {
    const session = await openSession(encodeModel(compiled), { threads: this.threads, spinning: false });
    try {
      let worst = 1;
      for (const [i, feeds] of this.feeds.entries()) {
        const outputs = await run(session, feeds);
        for (const [name, expected] of Object.entries(this.reference[i])) {
          const actual = outputs[name];
          if (!actual) throw new Error(`internal: the compiled model has no output ${name}`);
          worst = Math.min(worst, compareValues(expected.toFloat32(), actual.toFloat32()).cosine);
        }
      }
      return worst;
    } finally {
      await session.release();
    }
  }

  /** Paired rounds at `at` (order rotated each round) after two warm-up runs each. */
  async time(compiled: Model, at: Point, runs: number): Promise<Timing> {
    const session = await openSession(encodeModel(compiled), { threads: this.threads, spinning: false });
    try {
      const feeds = prepareFeeds(generateFeeds(describeInputs(this.model), at, 0));
      const sessions = [this.original, session];
      const timing = await timePaired(2, (i) => runPrepared(sessions[i], feeds).then(() => undefined), { warmup: 2, rounds: runs });
      const [original, measured] = timing.entries;
      return {
        runs,
        originalMs: median(original.wallMs),
        compiledMs: median(measured.wallMs),
        speedup: measured.speedup.median,
        speedupIqr: measured.speedup.iqr,
        cpuSpeedup: measured.cpuSpeedup.median,
        unreliable: unreliableBecause(measured.speedup, runs) ?? null,
      };
    } finally {
      await session.release();
    }
  }

  async release(): Promise<void> {
    await this.original.release();
  }
}
