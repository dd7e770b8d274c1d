// The session wrapper beyond plain loading: extra outputs (intermediate values), models whose weights
// live in external data (from a path, from bytes, from the IR), and execution provider selection.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliMessage } from '../src/cli/errors.js';
import { VcompileError } from '../src/errors.js';
import { loadModel, saveModel } from '../src/onnx/file.js';
import { describeInputs, generateFeeds } from '../src/runtime/feeds.js';
import { cudaProviderInstalled, openSession, run } from '../src/runtime/session.js';

const repo = path.resolve(import.meta.dirname, '..');
const bert = path.join(repo, 'fixtures/bert_opset14.onnx');
const softmax = '/encoder.0/attention/Softmax_output_0';
const feeds = generateFeeds(describeInputs(loadModel(bert)), { batch: 2, seq: 7 }, 1);

describe('extra outputs', () => {
  it('returns an intermediate value whose type the file does not declare, and leaves the model alone', async () => {
    const model = loadModel(bert);
    const plain = await openSession(bert, { threads: 1 });
    const session = await openSession(bert, { threads: 1, extraOutputs: [softmax, 'last_hidden_state'] });
    expect(session.outputNames).toEqual(['last_hidden_state', softmax]);
    const expected = await run(plain, feeds);
    const outputs = await run(session, feeds);
    await Promise.all([plain.release(), session.release()]);
    const probs = outputs[softmax];
    expect(probs.dims).toEqual([2, 4, 7, 7]); // [batch, heads, seq, seq]
    const values = probs.toFloat32();
    for (let row = 0; row < values.length / 7; row++) {
      const sum = values.subarray(row * 7, row * 7 + 7).reduce((a, v) => a + v, 0);
      expect(sum).toBeCloseTo(1, 5);
    }
    // padded keys of batch row 1 (mask keeps 4 of 7) get no attention
    expect(values[2 * 4 * 49 - 1]).toBeLessThan(1e-3);
    expect(Buffer.from(outputs.last_hidden_state.bytes()).equals(Buffer.from(expected.last_hidden_state.bytes()))).toBe(true);
    expect(model.graph.outputs.map((v) => v.name)).toEqual(['last_hidden_state']);
    const ir = loadModel(bert);
    const fromIr = await openSession(ir, { extraOutputs: [softmax] });
    expect(fromIr.outputNames).toContain(softmax);
    expect(ir.graph.outputs.map((v) => v.name)).toEqual(['last_hidden_state']);
    await fromIr.release();
  });

  it('refuses a name the graph does not define', async () => {
    const error = await openSession(bert, { extraOutputs: ['no/such/value'] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VcompileError);
    expect((error as Error).message).toBe(
      'extra output no/such/value: no such value in the main graph (node outputs and graph inputs can be read)',
    );
  });
});

describe('external data', () => {
  it('loads from the path, from bytes with externalData, and from the IR with extra outputs', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcompile-session-'));
    const file = path.join(dir, 'ext.onnx');
    saveModel(loadModel(bert), file, { externalData: 'always', location: 'weights.bin' });
    const reference = await run(await openSession(bert), feeds);
    const same = (outputs: Record<string, { bytes(): Uint8Array }>) =>
      Buffer.from(outputs.last_hidden_state.bytes()).equals(Buffer.from(reference.last_hidden_state.bytes()));

    expect(same(await run(await openSession(file), feeds))).toBe(true);
    const bytes = fs.readFileSync(file);
    const error = await openSession(bytes).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VcompileError);
    const withData = await openSession(bytes, {
      externalData: [{ path: 'weights.bin', data: fs.readFileSync(path.join(dir, 'weights.bin')) }],
    });
    expect(same(await run(withData, feeds))).toBe(true);
    const fromIr = await openSession(loadModel(file), { extraOutputs: [softmax] });
    const outputs = await run(fromIr, feeds);
    expect(same(outputs)).toBe(true);
    expect(outputs[softmax].dims).toEqual([2, 4, 7, 7]);
  });
});

describe('execution providers', () => {
  const cuda = cudaProviderInstalled();

  it.skipIf(cuda)('--ep cuda without the CUDA provider: one line telling how to install it', async () => {
    const error = await openSession(bert, { ep: 'cuda' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VcompileError);
    expect((error as VcompileError).exitCode).toBe(2);
    // as the CLI prints it (the library's own message says ep=cuda)
    expect(cliMessage((error as VcompileError).parts)).toMatch(
      /^--ep cuda: onnxruntime-node's CUDA execution provider is not installed \(no libonnxruntime_providers_cuda\.so in [^)]+\); install it with `ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node --ignore-scripts=false` \(needs CUDA 12 and cuDNN 9\), or use --ep cpu or --ep auto$/,
    );
  });

  it.skipIf(cuda)('--ep auto falls back to the CPU and says so once', async () => {
    const notices: string[] = [];
    const session = await openSession(bert, { ep: 'auto', notify: (_line, parts) => notices.push(cliMessage(parts)) });
    expect(session.ep).toBe('cpu');
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(/^--ep auto: running on CPU: onnxruntime-node's CUDA execution provider is not installed/);
    expect(Object.keys(await run(session, feeds))).toEqual(['last_hidden_state']);
    await session.release();
  });
});
