// honer's JavaScript loader for a standalone WebAssembly model (model.wasm): an ES module that
// works in Node.js and in browsers. It instantiates the module, copies the weights in once and
// runs the model on raw input bytes:
//
//   import { loadModel } from "./honer.mjs";
//   const model = await loadModel(wasmBytes, weightsBytes);
//   const [logits] = model.run([new Float32Array(pixels)]).map((b) => new Float32Array(b.buffer));
//
// Inputs are typed arrays (or ArrayBuffers) holding each input's row-major data; outputs come
// back as fresh Uint8Arrays, one per output.

const ERRNO_NOSYS = 52;

// The few WASI calls libc links in (its stdio, unused by the model): refused, except writes,
// which go to the console so that a message is never lost.
function wasiImports(memory) {
  const decoder = new TextDecoder();
  return new Proxy({}, {
    get(_, name) {
      if (name === "fd_write") {
        return (fd, iovs, count, written) => {
          const view = new DataView(memory().buffer);
          let total = 0;
          for (let i = 0; i < count; i++) {
            const ptr = view.getUint32(iovs + 8 * i, true);
            const len = view.getUint32(iovs + 8 * i + 4, true);
            console.error(decoder.decode(new Uint8Array(memory().buffer, ptr, len)));
            total += len;
          }
          view.setUint32(written, total, true);
          return 0;
        };
      }
      if (name === "proc_exit") return (code) => { throw new Error(`wasm exit ${code}`); };
      return () => ERRNO_NOSYS;
    },
  });
}

// honer_model_t (runtime/honer_rt.h) on wasm32: five int32 counts, two pointers, two uint64.
function readModel(memory, ptr) {
  const view = new DataView(memory.buffer);
  const count = (i) => view.getInt32(ptr + 4 * i, true);
  const sizes = (at, n) => Array.from({ length: n },
    (_, i) => Number(view.getBigUint64(view.getUint32(ptr + at, true) + 8 * i, true)));
  return {
    inputBytes: sizes(20, count(0)),
    outputBytes: sizes(24, count(1)),
    arenaBytes: Number(view.getBigUint64(ptr + 32, true)),
    weightsBytes: Number(view.getBigUint64(ptr + 40, true)),
  };
}

export async function loadModel(wasmBytes, weightsBytes) {
  let memory = null;
  const { instance } = await WebAssembly.instantiate(wasmBytes, {
    wasi_snapshot_preview1: wasiImports(() => memory),
  });
  const ex = instance.exports;
  memory = ex.memory;
  if (ex._initialize) ex._initialize();
  const info = readModel(memory, ex.honer_model());
  const weights = new Uint8Array(weightsBytes.buffer ?? weightsBytes,
    weightsBytes.byteOffset ?? 0, weightsBytes.byteLength);
  if (weights.byteLength < info.weightsBytes) {
    throw new Error(`weights: ${weights.byteLength} bytes, the model reads ${info.weightsBytes}`);
  }
  const alloc = (n) => {
    const ptr = ex.aligned_alloc(64, Math.ceil(Math.max(n, 1) / 64) * 64);
    if (!ptr) throw new Error(`out of wasm memory allocating ${n} bytes`);
    return ptr;
  };
  // every buffer lives as long as the model; memory may grow, so views are made when used
  const weightsPtr = alloc(weights.byteLength);
  new Uint8Array(memory.buffer, weightsPtr, weights.byteLength).set(weights);
  const arena = alloc(info.arenaBytes);
  const inputs = info.inputBytes.map(alloc);
  const outputs = info.outputBytes.map(alloc);
  const table = alloc(4 * (inputs.length + outputs.length));
  const tableView = new Uint32Array(memory.buffer, table, inputs.length + outputs.length);
  tableView.set([...inputs, ...outputs]);

  return {
    ...info,
    run(arrays) {
      if (arrays.length !== inputs.length) {
        throw new Error(`the model takes ${inputs.length} input(s), got ${arrays.length}`);
      }
      arrays.forEach((a, i) => {
        const bytes = new Uint8Array(a.buffer ?? a, a.byteOffset ?? 0, a.byteLength);
        if (bytes.byteLength !== info.inputBytes[i]) {
          throw new Error(`input ${i}: ${bytes.byteLength} bytes, the model takes ` +
            `${info.inputBytes[i]}`);
        }
        new Uint8Array(memory.buffer, inputs[i], bytes.byteLength).set(bytes);
      });
      if (ex.honer_run(table, table + 4 * inputs.length, weightsPtr, arena) !== 0) {
        const msg = new Uint8Array(memory.buffer, ex.honer_last_error());
        throw new Error(`the model failed: ${new TextDecoder().decode(msg.subarray(0,
          msg.indexOf(0)))}`);
      }
      return outputs.map((ptr, i) =>
        new Uint8Array(memory.buffer, ptr, info.outputBytes[i]).slice());
    },
  };
}
