#!/usr/bin/env node
// Runs a standalone wasm model (model.wasm beside this file) in Node.js, the same way as the
// native driver (runtime/honer_main.c):
//
//   node honer_node.mjs WEIGHTS INPUTS OUTPUTS [THREADS [REPEAT]]
//
// INPUTS holds every input's raw bytes back to back; OUTPUTS gets the outputs the same way.
// THREADS is accepted for the same command line (wasm runs on one); with REPEAT > 1 the median
// run time is printed to stderr.
import { readFile, writeFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";

import { loadModel } from "./honer.mjs";

const [weightsPath, inputsPath, outputsPath, , repeatArg] = process.argv.slice(2);
if (!outputsPath) {
  console.error("usage: honer_node.mjs WEIGHTS INPUTS OUTPUTS [THREADS [REPEAT]]");
  process.exit(1);
}
try {
  const wasm = await readFile(new URL("model.wasm", import.meta.url));
  const model = await loadModel(wasm, await readFile(weightsPath));
  const packed = await readFile(inputsPath);
  const want = model.inputBytes.reduce((a, b) => a + b, 0);
  if (packed.byteLength !== want) throw new Error(`inputs file: ${packed.byteLength} bytes, ` +
    `the model takes ${want}`);
  let at = 0;
  const inputs = model.inputBytes.map((n) => packed.subarray(at, (at += n)));
  const repeat = Math.max(1, Number(repeatArg ?? 1));
  const times = [];
  let outputs;
  for (let r = 0; r < repeat; r++) {
    const start = performance.now();
    outputs = model.run(inputs);
    times.push(performance.now() - start);
  }
  if (repeat > 1) {
    times.sort((a, b) => a - b);
    console.error(`median ${times[repeat >> 1].toFixed(3)} ms over ${repeat} runs`);
  }
  await writeFile(outputsPath, Buffer.concat(outputs));
} catch (e) {
  console.error(`honer_node: ${e.message}`);
  process.exit(1);
}
