// The child process of src/verify/isolated.ts: receives one request, runs verifyModels, sends the report
// (or the error) back, and exits.

import { describeInputs } from '../analysis/inputs.js';
import { CheckFailedError, VcompileError } from '../errors.js';
import { loadModel } from '../onnx/file.js';
import { openData } from '../runtime/data.js';
import type { ChildMessage, IsolatedOptions } from './isolated.js';
import { verifyModels } from './numeric.js';

const send = (m: ChildMessage) => new Promise<void>((resolve) => process.send!(m, () => resolve()));

process.once('message', async (request: { original: string; rewritten: string; options: IsolatedOptions }) => {
  const { original, rewritten, options } = request;
  try {
    const data =
      options.data &&
      openData(options.data.path, describeInputs(loadModel(original)), { samples: options.data.samples, skip: options.data.skip });
    const report = await verifyModels(original, rewritten, {
      ...options,
      data,
      batchSize: options.data?.batchSize,
      session: { ...options.session, notify: (line, parts) => void send({ kind: 'notice', line, parts: [...parts] }) },
      onProgress: (done, total) => void send({ kind: 'progress', done, total }),
    });
    await send({ kind: 'report', report });
  } catch (error) {
    if (error instanceof VcompileError) await send({ kind: 'error', parts: [...error.parts], check: error instanceof CheckFailedError });
    else await send({ kind: 'internal', message: (error as Error)?.message ?? String(error), stack: (error as Error)?.stack });
  }
  process.disconnect();
});
