/* A command-line driver for a standalone honer model: reads the weights and the inputs from
 * files, runs the model, writes the outputs. How the loader runs artifacts built for another
 * machine (e.g. aarch64 under qemu-aarch64), and a template for embedding a model in a program.
 *
 *   honer_main WEIGHTS INPUTS OUTPUTS [THREADS [REPEAT]]
 *
 * INPUTS holds every input's raw row-major bytes back to back, in order; OUTPUTS gets the
 * outputs the same way. With REPEAT > 1 the median run time is printed to stderr. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

static void* aligned(uint64_t nbytes) {
  void* p = NULL;
  return posix_memalign(&p, 64, nbytes ? (size_t)nbytes : 64) == 0 ? p : NULL;
}

static int fail(const char* what, const char* detail) {
  fprintf(stderr, "honer_main: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  return 1;
}

/* The whole file into 64-byte aligned memory; *size gets its length. */
static unsigned char* read_file(const char* path, uint64_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char* data = n >= 0 ? aligned((uint64_t)n) : NULL;
  if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
    free(data);
    data = NULL;
  }
  fclose(f);
  *size = n >= 0 ? (uint64_t)n : 0;
  return data;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int compare(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  if (argc < 4) return fail("usage: honer_main WEIGHTS INPUTS OUTPUTS [THREADS [REPEAT]]", 0);
  const honer_model_t* m = honer_model();
  uint64_t weights_size = 0, inputs_size = 0, want = 0, at = 0;
  unsigned char* weights = read_file(argv[1], &weights_size);
  unsigned char* packed = read_file(argv[2], &inputs_size);
  if (!weights || weights_size < m->weights_bytes) return fail("cannot read weights", argv[1]);
  if (!packed) return fail("cannot read inputs", argv[2]);
  void* inputs[HONER_NUM_INPUTS + 1];
  void* outputs[HONER_NUM_OUTPUTS + 1];
  for (int i = 0; i < m->num_inputs; ++i) want += m->input_nbytes[i];
  if (inputs_size != want) return fail("inputs file has the wrong size", argv[2]);
  for (int i = 0; i < m->num_inputs; ++i) {
    if (!(inputs[i] = aligned(m->input_nbytes[i]))) return fail("out of memory", 0);
    memcpy(inputs[i], packed + at, m->input_nbytes[i]);
    at += m->input_nbytes[i];
  }
  for (int i = 0; i < m->num_outputs; ++i) {
    if (!(outputs[i] = aligned(m->output_nbytes[i]))) return fail("out of memory", 0);
  }
  void* arena = aligned(m->arena_bytes);
  if (!arena) return fail("out of memory", 0);
  honer_set_num_threads(argc > 4 ? atoi(argv[4]) : 0);
  int repeat = argc > 5 && atoi(argv[5]) > 1 ? atoi(argv[5]) : 1;
  double* ms = calloc((size_t)repeat, sizeof *ms);
  for (int r = 0; r < repeat; ++r) {
    double start = now_ms();
    if (honer_run(inputs, outputs, weights, arena) != 0) return fail(honer_last_error(), 0);
    ms[r] = now_ms() - start;
  }
  if (repeat > 1) {
    qsort(ms, (size_t)repeat, sizeof *ms, compare);
    fprintf(stderr, "median %.3f ms over %d runs\n", ms[repeat / 2], repeat);
  }
  FILE* f = fopen(argv[3], "wb");
  if (!f) return fail("cannot write outputs", argv[3]);
  for (int i = 0; i < m->num_outputs; ++i) {
    if (fwrite(outputs[i], 1, m->output_nbytes[i], f) != m->output_nbytes[i]) {
      return fail("cannot write outputs", argv[3]);
    }
  }
  return fclose(f) == 0 ? 0 : fail("cannot write outputs", argv[3]);
}
