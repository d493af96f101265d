#!/usr/bin/env node
// Entry point of the `tsvisor` command: the compiled CLI lives in dist/.
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { dirname, join } from "node:path";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const cli = join(root, "dist", "src", "cli", "main.js");
if (!existsSync(cli) || !existsSync(join(root, "build", "core.wasm"))) {
  process.stderr.write("tsvisor: not built yet: run `npm run build` (or `npm start`) first\n");
  process.exit(1);
}
const { main } = await import(pathToFileURL(cli).href);
await main(process.argv.slice(2));
