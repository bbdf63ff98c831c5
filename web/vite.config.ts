import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

// The page `melo serve` answers at /. Built into web/dist, which is committed, so a clone serves the
// page without a build step (test/serve-web.test.ts checks the committed build matches this source).
export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: '/',
  logLevel: 'warn',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // One script and one stylesheet, no inline code: the server's CSP allows only 'self'.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  server: {
    // `npx vite web` during development, next to `melo serve` on its default port.
    proxy: { '/v1': 'http://127.0.0.1:8080', '/healthz': 'http://127.0.0.1:8080' },
  },
});
