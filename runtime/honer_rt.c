/* honer's standalone runtime (see honer_rt.h): the symbols TVM-built kernels import (their
 * parallel loops run on honer_pool.c), and the executor of a model's call list. */
#define _GNU_SOURCE
#include "honer_rt.h"
#include "honer_pool.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef HONER_SINGLE_THREAD /* no threads (wasm32 without the threads proposal) */
#define LOCK(m) ((void)(m))
#define UNLOCK(m) ((void)(m))
#define DECLARE_MUTEX(name) static char name
#else
#include <pthread.h>
#define LOCK(m) pthread_mutex_lock(m)
#define UNLOCK(m) pthread_mutex_unlock(m)
#define DECLARE_MUTEX(name) static pthread_mutex_t name = PTHREAD_MUTEX_INITIALIZER
#endif

#define MAX_ARGS 256
#define TYPE_DLTENSOR_PTR 7 /* TVM FFI's type index of a DLTensor* argument */

/* ---- errors: one message, written by whichever thread failed ---------------------------- */

static char error_text[1024];
DECLARE_MUTEX(error_mu);

static void set_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  LOCK(&error_mu);
  vsnprintf(error_text, sizeof error_text, fmt, ap);
  UNLOCK(&error_mu);
  va_end(ap);
}

HONER_API const char* honer_last_error(void) { return error_text; }

/* Kernels report failed argument checks (and other errors) through this. */
HONER_API void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts,
                                                 int32_t num_parts) {
  char text[sizeof error_text];
  size_t used = (size_t)snprintf(text, sizeof text, "%s: ", kind ? kind : "Error");
  for (int32_t i = 0; i < num_parts && used < sizeof text; ++i) {
    if (parts[i]) used += (size_t)snprintf(text + used, sizeof text - used, "%s", parts[i]);
  }
  set_error("%s", text);
}

/* System-lib kernels register themselves at load time for TVM's module lookup; honer calls
 * them by symbol, so there is nothing to record. */
HONER_API int TVMFFIEnvModRegisterSystemLibSymbol(const char* name, void* symbol) {
  (void)name;
  (void)symbol;
  return 0;
}

/* ---- workspace: scratch buffers kernels allocate per call -------------------------------- */

/* Freed blocks are kept for reuse: the same kernels ask for the same sizes on every run, and a
 * fresh large malloc is a fresh mmap whose pages fault in again each time. */
#define CACHED_BLOCKS 32
static struct { void* ptr; uint64_t size; } cache[CACHED_BLOCKS];
DECLARE_MUTEX(cache_mu);

static void* take_cached(uint64_t nbytes) {
  int best = -1;
  LOCK(&cache_mu);
  for (int i = 0; i < CACHED_BLOCKS; ++i) {
    if (cache[i].ptr && cache[i].size >= nbytes && cache[i].size / 2 <= nbytes &&
        (best < 0 || cache[i].size < cache[best].size)) {
      best = i;
    }
  }
  void* ptr = best >= 0 ? cache[best].ptr : NULL;
  if (best >= 0) cache[best].ptr = NULL;
  UNLOCK(&cache_mu);
  return ptr;
}

HONER_API void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                                         int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type, (void)device_id, (void)dtype_code_hint, (void)dtype_bits_hint;
  uint64_t size = (nbytes + 63) / 64 * 64 + 64; /* room for the size, before the block */
  unsigned char* block = take_cached(size);
  if (!block && posix_memalign((void**)&block, 64, (size_t)size) != 0) {
    set_error("out of memory: a kernel's workspace of %llu bytes", (unsigned long long)nbytes);
    return NULL;
  }
  *(uint64_t*)block = size;
  return block + 64;
}

HONER_API int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type, (void)device_id;
  if (!ptr) return 0;
  unsigned char* block = (unsigned char*)ptr - 64;
  LOCK(&cache_mu);
  int slot = 0; /* a free slot, or else the smallest block is dropped */
  for (int i = 0; i < CACHED_BLOCKS && cache[slot].ptr; ++i) {
    if (!cache[i].ptr || cache[i].size < cache[slot].size) slot = i;
  }
  void* dropped = cache[slot].ptr;
  cache[slot].ptr = block, cache[slot].size = *(uint64_t*)block;
  UNLOCK(&cache_mu);
  free(dropped);
  return 0;
}

/* ---- functions kernels call by name: TVM's contrib sort (argsort, sort) ------------------ */

typedef int (*builtin_fn)(const honer_any_t* args, int32_t num_args);
typedef struct { const char* name; builtin_fn fn; } builtin_t;

static int dtype_is(const honer_tensor_t* t, int code, int bits) {
  return t->dtype.code == code && t->dtype.bits == bits && t->dtype.lanes == 1;
}

static int readable(const honer_tensor_t* t) {
  return dtype_is(t, 2, 32) || dtype_is(t, 2, 64) || dtype_is(t, 0, 32) || dtype_is(t, 0, 64);
}

static double load_at(const honer_tensor_t* t, int64_t i) {
  const char* p = (const char*)t->data + t->byte_offset;
  if (dtype_is(t, 2, 32)) return ((const float*)p)[i];
  if (dtype_is(t, 2, 64)) return ((const double*)p)[i];
  if (dtype_is(t, 0, 32)) return ((const int32_t*)p)[i];
  return (double)((const int64_t*)p)[i];
}

static void store_at(honer_tensor_t* t, int64_t i, double v) {
  char* p = (char*)t->data + t->byte_offset;
  if (dtype_is(t, 2, 32)) ((float*)p)[i] = (float)v;
  else if (dtype_is(t, 2, 64)) ((double*)p)[i] = v;
  else if (dtype_is(t, 0, 32)) ((int32_t*)p)[i] = (int32_t)v;
  else ((int64_t*)p)[i] = (int64_t)v;
}

/* Stable merge sort of positions by key (TVM sorts with std::stable_sort: ties keep order). */
static void sort_positions(int64_t* pos, int64_t* tmp, int64_t n, const double* key, int up) {
  for (int64_t width = 1; width < n; width *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * width) {
      int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
      int64_t a = lo, b = mid, k = lo;
      while (a < mid && b < hi) {
        int b_first = up ? key[pos[b]] < key[pos[a]] : key[pos[b]] > key[pos[a]];
        tmp[k++] = b_first ? pos[b++] : pos[a++];
      }
      while (a < mid) tmp[k++] = pos[a++];
      while (b < hi) tmp[k++] = pos[b++];
    }
    memcpy(pos, tmp, (size_t)n * sizeof *pos);
  }
}

/* (data, out, axis, is_ascend): out gets the sorted values, or their positions (indices). */
static int sort_along(const honer_any_t* args, int32_t num_args, int indices) {
  if (num_args < 4 || args[0].type_index != TYPE_DLTENSOR_PTR ||
      args[1].type_index != TYPE_DLTENSOR_PTR) {
    set_error("sort: expected (data, out, axis, is_ascend)");
    return -1;
  }
  const honer_tensor_t* in = args[0].v_ptr;
  honer_tensor_t* out = args[1].v_ptr;
  int axis = (int)args[2].v_int64 < 0 ? (int)args[2].v_int64 + in->ndim : (int)args[2].v_int64;
  if (axis < 0 || axis >= in->ndim || !readable(in) || !readable(out)) {
    set_error("sort: axis %d or dtypes not supported", axis);
    return -1;
  }
  int64_t outer = 1, n = in->shape[axis], inner = 1;
  for (int d = 0; d < axis; ++d) outer *= in->shape[d];
  for (int d = axis + 1; d < in->ndim; ++d) inner *= in->shape[d];
  double* key = malloc((size_t)(n ? n : 1) * sizeof *key);
  int64_t* pos = malloc((size_t)(n ? n : 1) * 2 * sizeof *pos);
  if (!key || !pos) {
    free(key), free(pos);
    set_error("sort: out of memory");
    return -1;
  }
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t k = 0; k < inner; ++k) {
      int64_t base = o * n * inner + k;
      for (int64_t i = 0; i < n; ++i) key[i] = load_at(in, base + i * inner), pos[i] = i;
      sort_positions(pos, pos + n, n, key, args[3].v_int64 != 0);
      for (int64_t i = 0; i < n; ++i) {
        store_at(out, base + i * inner, indices ? (double)pos[i] : key[pos[i]]);
      }
    }
  }
  free(key), free(pos);
  return 0;
}

static int argsort_fn(const honer_any_t* args, int32_t n) { return sort_along(args, n, 1); }
static int sort_fn(const honer_any_t* args, int32_t n) { return sort_along(args, n, 0); }

static const builtin_t builtins[] = {
    {"tvm.contrib.sort.argsort", argsort_fn},
    {"tvm.contrib.sort.sort", sort_fn},
};

/* A kernel's first call of a function by name looks it up here and keeps the handle. */
HONER_API int TVMFFIEnvModLookupFromImports(void* library_ctx, const char* name, void** out) {
  (void)library_ctx;
  for (size_t i = 0; i < sizeof builtins / sizeof builtins[0]; ++i) {
    if (strcmp(builtins[i].name, name) == 0) {
      *out = (void*)&builtins[i];
      return 0;
    }
  }
  set_error("the standalone runtime has no function %s", name);
  return -1;
}

/* Lookups return the same handle every time, so two threads racing here store equal values. */
HONER_API int TVMFFIHandleInitOnce(void** handle, int (*init)(void** result)) {
  void* found = NULL;
  if (*handle == NULL) {
    if (init(&found) != 0) return -1;
    *handle = found;
  }
  return 0;
}

HONER_API int TVMFFIFunctionCall(void* func, honer_any_t* args, int32_t num_args,
                                 honer_any_t* result) {
  result->type_index = 0; /* None */
  return ((const builtin_t*)func)->fn(args, num_args);
}

/* ---- parallel loops: honer_pool.c ------------------------------------------------------ */

DECLARE_MUTEX(run_mu); /* one run at a time per model */

HONER_API int honer_set_num_threads(int n) { return honer_pool_set_threads(n); }
HONER_API int honer_num_threads(void) { return honer_pool_threads(); }

HONER_API int TVMBackendParallelLaunch(honer_parallel_fn fn, void* cdata, int num_task) {
  return honer_pool_launch(fn, cdata, num_task);
}

HONER_API int TVMBackendParallelBarrier(int task_id, honer_group_env_t* penv) {
  return honer_pool_barrier(task_id, penv);
}

/* ---- executor --------------------------------------------------------------------------- */

static int place_tensors(const honer_model_t* m, void* const* inputs, void* const* outputs,
                         const void* weights, void* arena) {
  for (int32_t i = 0; i < m->num_tensors; ++i) {
    const honer_place_t* p = &m->places[i];
    const unsigned char* base = NULL;
    switch (p->base) {
      case HONER_ARENA: base = arena; break;
      case HONER_WEIGHTS: base = weights; break;
      case HONER_CONSTS: base = m->consts; break;
      case HONER_INPUT: base = inputs[p->index]; break;
      case HONER_OUTPUT: base = outputs[p->index]; break;
    }
    if (base == NULL) {
      set_error("tensor %d has no memory (a NULL input, output, weights or arena pointer)", i);
      return -1;
    }
    m->tensors[i].data = (void*)(base + p->offset);
  }
  return 0;
}

static uint64_t* profile_ns; /* honer_profile's counters, one per call, or NULL */

HONER_API void honer_profile(uint64_t* ns_per_call) { profile_ns = ns_per_call; }

HONER_API const char* honer_call_name(const honer_model_t* m, int32_t c) {
  return c >= 0 && c < m->num_calls ? m->calls[c].name : NULL;
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int run_calls(const honer_model_t* m) {
  honer_any_t args[MAX_ARGS];
  for (int32_t c = 0; c < m->num_calls; ++c) {
    uint64_t start = profile_ns ? now_ns() : 0;
    const honer_call_t* call = &m->calls[c];
    if (call->num_args > MAX_ARGS) {
      set_error("kernel %s takes %d arguments (at most %d)", call->name, call->num_args,
                MAX_ARGS);
      return -1;
    }
    for (int32_t a = 0; a < call->num_args; ++a) {
      args[a].type_index = TYPE_DLTENSOR_PTR;
      args[a].zero_padding = 0;
      args[a].v_ptr = &m->tensors[call->args[a]];
    }
    honer_any_t result = {0};
    if (call->fn(NULL, args, call->num_args, &result) != 0) {
      char why[sizeof error_text];
      snprintf(why, sizeof why, "%s", error_text);
      set_error("kernel %s failed: %s", call->name, why);
      return -1;
    }
    if (profile_ns) profile_ns[c] += now_ns() - start;
  }
  return 0;
}

int honer_rt_execute(const honer_model_t* m, void* const* inputs, void* const* outputs,
                     const void* weights, void* arena) {
  if ((m->num_inputs && !inputs) || (m->num_outputs && !outputs)) {
    set_error("honer_run: inputs or outputs is NULL");
    return -1;
  }
  LOCK(&run_mu);
  int rc = place_tensors(m, inputs, outputs, weights, arena);
  if (rc == 0) rc = run_calls(m);
  for (int32_t i = 0; rc == 0 && i < m->num_copies; ++i) {
    const honer_copy_t* copy = &m->copies[i];
    memmove(outputs[copy->output], m->tensors[copy->tensor].data, (size_t)copy->nbytes);
  }
  UNLOCK(&run_mu);
  return rc;
}
