/* honer's standalone runtime: what TVM-built kernels import, and the executor of a model's
 * static call list. The generated model.c holds the model as data (tensors, calls, copies);
 * this runtime runs it. C99 + pthreads; no TVM headers (the ABI structs are declared here). */
#ifndef HONER_RT_H_
#define HONER_RT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HONER_API __attribute__((visibility("default")))

/* The DLPack tensor ABI, as the kernels' argument checks read it. */
typedef struct { int32_t device_type; int32_t device_id; } honer_device_t;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } honer_dtype_t;
typedef struct {
  void* data;
  honer_device_t device;
  int32_t ndim;
  honer_dtype_t dtype;
  int64_t* shape;
  int64_t* strides; /* NULL: compact row-major */
  uint64_t byte_offset;
} honer_tensor_t;

/* TVM FFI's tagged value (16 bytes); kernels take their arguments as an array of these. */
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void* v_ptr; };
} honer_any_t;

typedef int (*honer_kernel_fn)(void* self, const honer_any_t* args, int32_t num_args,
                               honer_any_t* result);

/* Where a tensor's data lives: base + offset, resolved at the start of every run. */
enum { HONER_ARENA = 0, HONER_WEIGHTS = 1, HONER_CONSTS = 2, HONER_INPUT = 3, HONER_OUTPUT = 4 };
typedef struct { int32_t base; int32_t index; uint64_t offset; } honer_place_t;

typedef struct { honer_kernel_fn fn; const char* name; int32_t num_args; const int32_t* args; }
    honer_call_t;
/* an output that is a view of another buffer (an input, a weight, the arena) is copied out */
typedef struct { int32_t tensor; int32_t output; uint64_t nbytes; } honer_copy_t;

typedef struct {
  int32_t num_inputs, num_outputs, num_tensors, num_calls, num_copies;
  const uint64_t* input_nbytes;
  const uint64_t* output_nbytes;
  uint64_t arena_bytes;   /* scratch the caller passes in, 64-byte aligned */
  uint64_t weights_bytes; /* size of weights.bin the model reads */
  honer_tensor_t* tensors;
  const honer_place_t* places;
  const honer_call_t* calls;
  const honer_copy_t* copies;
  const unsigned char* consts;
} honer_model_t;

/* Runs every call in order; 0 on success, otherwise honer_last_error() says why. */
int honer_rt_execute(const honer_model_t* model, void* const* inputs, void* const* outputs,
                     const void* weights, void* arena);
HONER_API const char* honer_last_error(void);
/* With a buffer of one counter per call, later runs add each kernel call's wall time (ns) to
   its counter; NULL stops it. Kernel `c`'s name: honer_call_name(model, c). */
HONER_API void honer_profile(uint64_t* ns_per_call);
HONER_API const char* honer_call_name(const honer_model_t* model, int32_t c);
/* Threads used by parallel kernels (the caller included); <= 0 means one per available core. */
HONER_API int honer_set_num_threads(int n);
HONER_API int honer_num_threads(void);

#ifdef __cplusplus
}
#endif
#endif /* HONER_RT_H_ */
