import { defineConfig } from 'vite';

// One page for both UIs: core serves dist/index.html at / (console) and
// /boss (admins); assets are hashed files under /assets/.
export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // No inline scripts or data: modules: the core's CSP allows 'self' only.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
});
