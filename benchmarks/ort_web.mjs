// Times an ONNX model on ONNX Runtime Web's wasm backend in Node.js, one thread, for the
// side-by-side with honer's wasm target (benchmarks/aot.py --wasm):
//
//   node ort_web.mjs MODEL.onnx INPUTS.json RUNS
//
// INPUTS.json lists {name, dims, dtype, file} per input (raw row-major bytes in `file`). Prints
// the median run time in ms. ORT_WEB_DIR names the node_modules holding onnxruntime-web
// (npm install --prefix out/node onnxruntime-web@1.30.0 puts it in out/node/node_modules).
import { readFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import { pathToFileURL } from "node:url";

const [modelPath, inputsPath, runsArg] = process.argv.slice(2);
const ortDir = process.env.ORT_WEB_DIR;
const ort = await import(pathToFileURL(`${ortDir}/onnxruntime-web/dist/ort.node.min.mjs`).href);
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(await readFile(modelPath),
  { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
const arrays = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array };
const feeds = {};
for (const spec of JSON.parse(await readFile(inputsPath, "utf8"))) {
  const raw = await readFile(spec.file);
  const data = new arrays[spec.dtype](raw.buffer.slice(raw.byteOffset,
    raw.byteOffset + raw.byteLength));
  feeds[spec.name] = new ort.Tensor(spec.dtype, data, spec.dims);
}
const runs = Number(runsArg ?? 30);
for (let i = 0; i < 3; i++) await session.run(feeds);
const times = [];
for (let i = 0; i < runs; i++) {
  const start = performance.now();
  await session.run(feeds);
  times.push(performance.now() - start);
}
times.sort((a, b) => a - b);
console.log(`median ${times[runs >> 1].toFixed(3)} ms over ${runs} runs`);
