import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Generous for the slower suites on two cores; files that need more set their own.
    testTimeout: 30_000,
  },
});
