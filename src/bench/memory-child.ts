// The child process of src/bench/memory.ts: reads a MemoryJob as JSON on stdin, prints a MemoryResult as
// JSON on stdout; on failure one line on stderr and exit code 1.
import { type MemoryJob, probeMemory } from './memory.js';

async function main(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const job = JSON.parse(Buffer.concat(chunks).toString('utf8')) as MemoryJob;
  process.stdout.write(`${JSON.stringify(await probeMemory(job))}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
