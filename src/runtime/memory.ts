// Letting go of memory between phases that each hold a whole model: a compile's IR, then an ONNX Runtime
// session of the original, then one of the rewritten model. Garbage collection is V8's to schedule, and
// buffers of hundreds of megabytes can outlive their last use for a while; collecting between the phases
// keeps their peaks from adding up. V8 exposes its collector on request (the --expose-gc flag, which the
// flag API can also turn on in a running process).
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

let collect: (() => void) | undefined;

/** Collect garbage now (call it where the last reference to a large model has just gone). */
export function releaseMemory(): void {
  if (!collect) {
    const exposed = (globalThis as { gc?: () => void }).gc;
    if (exposed) collect = exposed;
    else {
      v8.setFlagsFromString('--expose-gc');
      collect = vm.runInNewContext('gc') as () => void;
    }
  }
  collect();
}
