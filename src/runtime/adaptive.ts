// AdaptiveSession: serve a switchable model (`vcompile --switchable`) and pick `vcompile_ratio` per call
// from a policy — a fixed ratio, a latency budget learned from the calls seen, or the queue depth.
//
// onnxruntime-node feeds only the inputs it lists, and it does not list an input that has a default
// (an initializer of the same name): a fed `vcompile_ratio` would be silently ignored. The session is
// therefore created from a copy of the model without that default, so the ratio is always fed.
import { RATIO_INPUT } from '../../passes/plugin/switchable.js';
import { VcompileError } from '../errors.js';
import type { Model } from '../ir/model.js';
import { Tensor } from '../ir/tensor.js';
import { DataType } from '../ir/types.js';
import { loadModel } from '../onnx/file.js';
import { openSession, run, type Session, type SessionOptions } from './session.js';

export { RATIO_INPUT };

/** What a policy sees when it chooses. */
export interface CallContext {
  batch: number;
  seq: number;
  /** calls waiting or running, this one included (the session's own count, or the caller's queue) */
  pending: number;
  /** how long this call already waited in the caller's queue; a latency budget covers it too */
  waitedMs: number;
  ratios: readonly number[];
}

/** What a caller that keeps its own queue tells the session about a call. */
export interface CallHints {
  pending?: number;
  waitedMs?: number;
}

export interface Policy {
  readonly name: string;
  choose(call: CallContext): number;
  /** told the latency of every finished call */
  observe?(ratio: number, call: CallContext, ms: number): void;
}

export function fixed(ratio: number): Policy {
  return { name: `fixed(${ratio})`, choose: () => ratio };
}

/**
 * More compression as the queue grows: `thresholds` maps a pending-call count to the ratio used from
 * that depth on, e.g. `{ 4: 2, 16: 4 }`. Below the smallest depth the original computation (1) runs.
 */
export function queueDepth(thresholds: Record<number, number>): Policy {
  const steps = Object.entries(thresholds)
    .map(([depth, ratio]) => [Number(depth), ratio] as const)
    .sort((a, b) => a[0] - b[0]);
  return {
    name: `queueDepth(${steps.map(([d, r]) => `${d}:${r}`).join(',')})`,
    choose: ({ pending }) => steps.filter(([depth]) => pending >= depth).at(-1)?.[1] ?? 1,
  };
}

/**
 * The least compression whose learned latency for this call's size meets `budgetMs`; the most compression
 * when none does. Latency per ratio is learned as a line in batch x seq (least squares over recent calls).
 */
export function latencyBudget(
  budgetMs: number,
  options: { window?: number } = {},
): Policy & Required<Pick<Policy, 'observe'>> & { predict(ratio: number, tokens: number): number | undefined } {
  const window = options.window ?? 64;
  const seen = new Map<number, { tokens: number; ms: number }[]>();
  const predict = (ratio: number, tokens: number) => fitLine(seen.get(ratio) ?? [])?.(tokens);
  return {
    name: `latencyBudget(${budgetMs} ms)`,
    predict,
    choose({ batch, seq, ratios, waitedMs }) {
      const ordered = [...ratios].sort((a, b) => a - b);
      const meets = ordered.find((r) => {
        const expected = predict(r, batch * seq);
        return expected !== undefined && waitedMs + expected <= budgetMs;
      });
      return meets ?? ordered[ordered.length - 1];
    },
    observe(ratio, { batch, seq }, ms) {
      const history = seen.get(ratio) ?? [];
      history.push({ tokens: batch * seq, ms });
      if (history.length > window) history.shift();
      seen.set(ratio, history);
    },
  };
}

/** A least-squares line through (tokens, ms); with one distinct size, latency proportional to tokens. */
function fitLine(points: { tokens: number; ms: number }[]): ((tokens: number) => number) | undefined {
  if (points.length === 0) return undefined;
  const n = points.length;
  const meanX = points.reduce((s, p) => s + p.tokens, 0) / n;
  const meanY = points.reduce((s, p) => s + p.ms, 0) / n;
  const varX = points.reduce((s, p) => s + (p.tokens - meanX) ** 2, 0);
  if (varX === 0) return (tokens) => (meanY * tokens) / meanX;
  const slope = points.reduce((s, p) => s + (p.tokens - meanX) * (p.ms - meanY), 0) / varX;
  return (tokens) => meanY + slope * (tokens - meanX);
}

export interface AdaptiveResult {
  outputs: Record<string, Tensor>;
  ratio: number;
  ms: number;
}

export interface SwitchableInfo {
  ratios: number[];
  defaultRatio: number;
}

/** The ratios a switchable model offers, from the metadata the compiler wrote. */
export function switchableInfo(model: Model): SwitchableInfo {
  const text = model.getMetadata('vcompile.switchable');
  if (!text) throw new VcompileError(`the model has no ${RATIO_INPUT} input: compile it with vcompile --switchable`);
  const info = JSON.parse(text) as { ratios: number[]; default: number };
  return { ratios: info.ratios, defaultRatio: info.default };
}

/** A copy of the model whose `vcompile_ratio` input has no default, so onnxruntime-node feeds it. */
export function withFeedableRatio(model: Model): Model {
  const graph = model.graph;
  const ratio = graph.inputs.find((v) => v.name === RATIO_INPUT);
  if (!ratio) throw new VcompileError(`the model has no ${RATIO_INPUT} input: compile it with vcompile --switchable`);
  graph.initializers = graph.initializers.filter((v) => v !== ratio);
  ratio.initializer = undefined;
  return model;
}

export function ratioTensor(ratio: number): Tensor {
  return Tensor.fromArray(RATIO_INPUT, DataType.INT64, [], BigInt64Array.of(BigInt(ratio)));
}

export class AdaptiveSession {
  private pending = 0;
  readonly history: { ratio: number; ms: number; batch: number; seq: number }[] = [];

  private constructor(
    private readonly session: Session,
    readonly info: SwitchableInfo,
    private policy: Policy,
    private readonly clock: () => number,
  ) {}

  /** Open a switchable model (a path, or an IR model that is consumed). */
  static async create(
    model: string | Model,
    policy: Policy,
    options: SessionOptions & { clock?: () => number } = {},
  ): Promise<AdaptiveSession> {
    const ir = typeof model === 'string' ? loadModel(model) : model;
    const info = switchableInfo(ir);
    const session = await openSession(withFeedableRatio(ir), options);
    return new AdaptiveSession(session, info, policy, options.clock ?? (() => performance.now()));
  }

  setPolicy(policy: Policy): void {
    this.policy = policy;
  }

  /** Run every ratio once on `feeds`, so that a learning policy starts with one observation each. */
  async warmUp(feeds: Record<string, Tensor>): Promise<void> {
    for (const ratio of this.info.ratios) await this.runAt(ratio, feeds);
  }

  /** Run one call at the ratio the policy picks; the result says which ratio served it. */
  async run(feeds: Record<string, Tensor>, hints: CallHints = {}): Promise<AdaptiveResult> {
    const call = this.context(feeds, hints);
    return this.runAt(this.policy.choose(call), feeds, call);
  }

  async runAt(ratio: number, feeds: Record<string, Tensor>, call = this.context(feeds)): Promise<AdaptiveResult> {
    if (!this.info.ratios.includes(ratio)) {
      throw new VcompileError(`${RATIO_INPUT} must be one of ${this.info.ratios.join(', ')}, got ${ratio}`);
    }
    this.pending++;
    const start = this.clock();
    try {
      const outputs = await run(this.session, { ...feeds, [RATIO_INPUT]: ratioTensor(ratio) });
      const ms = this.clock() - start;
      this.policy.observe?.(ratio, call, ms);
      this.history.push({ ratio, ms, batch: call.batch, seq: call.seq });
      return { outputs, ratio, ms };
    } finally {
      this.pending--;
    }
  }

  private context(feeds: Record<string, Tensor>, hints: CallHints = {}): CallContext {
    const first = Object.values(feeds).find((t) => t.dims.length >= 2) ?? Object.values(feeds)[0];
    return {
      batch: first?.dims[0] ?? 1,
      seq: first?.dims[1] ?? 1,
      pending: hints.pending ?? this.pending + 1,
      waitedMs: hints.waitedMs ?? 0,
      ratios: this.info.ratios,
    };
  }

  release(): Promise<void> {
    return this.session.release();
  }
}
