// A progress bar on stderr for long runs. It stays silent when stderr is not a terminal (pipelines, CI
// logs, tests), with --json, and for runs that finish within a couple of seconds.
const SHOW_AFTER_MS = 2000;
const REDRAW_MS = 100;
const WIDTH = 30;

export class Progress {
  private readonly start = Date.now();
  private lastDraw = 0;
  private drawn = false;

  constructor(
    private label: string,
    private readonly enabled: boolean = process.stderr.isTTY === true,
  ) {}

  update(done: number, total: number): void {
    if (!this.enabled) return;
    const now = Date.now();
    const elapsed = now - this.start;
    if (elapsed < SHOW_AFTER_MS || (now - this.lastDraw < REDRAW_MS && done < total)) return;
    this.lastDraw = now;
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const filled = Math.round(fraction * WIDTH);
    const eta = done > 0 ? Math.round(((elapsed / done) * (total - done)) / 1000) : undefined;
    const bar = `${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}`;
    process.stderr.write(
      `\r${this.label} [${bar}] ${Math.round(fraction * 100)}% ${done}/${total}${eta !== undefined ? ` ETA ${eta}s` : ''}\x1b[K`,
    );
    this.drawn = true;
  }

  /** Say what the bar counts now (e.g. the stage of a multi-step run). */
  relabel(label: string): void {
    this.label = label;
  }

  /** Erase the bar so the report that follows starts on a clean line. */
  finish(): void {
    if (this.drawn) process.stderr.write('\r\x1b[K');
    this.drawn = false;
  }
}
