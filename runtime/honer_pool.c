/* honer's thread pool (see honer_pool.h). */
#define _GNU_SOURCE
#include "honer_pool.h"

#include <stddef.h>

#ifdef HONER_SINGLE_THREAD /* no threads (wasm32 without the threads proposal) */

HONER_API int honer_pool_set_threads(int n) { (void)n; return 1; }
HONER_API int honer_pool_threads(void) { return 1; }
HONER_API int honer_pool_launch(honer_parallel_fn fn, void* cdata, int num_task) {
  (void)num_task;
  honer_group_env_t env = {NULL, 1};
  return fn(0, &env, cdata);
}
HONER_API int honer_pool_barrier(int task_id, honer_group_env_t* penv) {
  (void)task_id, (void)penv;
  return 0;
}

#else
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define MAX_THREADS 64
/* Waiting for work: a busy poll of about a hundred microseconds (launches come back to back
 * within a model run, and waking a sleeping thread costs tens of microseconds), then sleep.
 * The poll pauses and never yields: a thread that calls sched_yield hands its core to any
 * other runnable process, even a nice 19 one, for a whole time slice. With one such busy loop
 * beside it, ResNet-18 took 1.8x (this pool, yielding) and 3.7x (TVM's pool) its time, and
 * ONNX Runtime, which pauses, 1.03x. */
#define SPIN_ROUNDS (1 << 13)

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

/* Workers are created once and kept: spawning threads per launch costs more than most of the
 * kernels' parallel loops. A launch publishes one word, `work` = generation << 32 | tasks << 16
 * | next task; every thread (the caller too) claims tasks from it by compare-and-swap, so when
 * a worker is late (its core busy elsewhere) the others run its share instead of waiting, and
 * a worker that wakes after its launch ended sees another generation and claims nothing. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t wake;
  pthread_mutex_t launching; /* one launch at a time; it also guards the worker count */
  atomic_uint_fast64_t work;
  atomic_int pending;  /* tasks of the current launch not finished */
  atomic_int sleeping; /* workers waiting on `wake` (the launcher signals only if any) */
  atomic_int failed;
  int started;         /* workers created so far (ids 1..started) */
  int threads;         /* threads a launch uses, the caller included */
  honer_parallel_fn fn;
  void* cdata;
  atomic_int barrier_count;
  atomic_uint barrier_generation;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
          .launching = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local int in_task; /* a nested launch runs serially in its task */

static int available_cores(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return 1;
}

static uint32_t generation_of(uint64_t w) { return (uint32_t)(w >> 32); }
static int tasks_of(uint64_t w) { return (int)((w >> 16) & 0xffff); }

/* Runs tasks of launch `w` until none is left to claim (or another launch has begun). */
static void claim_and_run(uint64_t w) {
  uint32_t generation = generation_of(w);
  while (generation_of(w) == generation && (int)(w & 0xffff) < tasks_of(w)) {
    if (!atomic_compare_exchange_weak(&pool.work, &w, w + 1)) continue; /* w reloaded */
    /* claimed: the launch cannot end before this task does, so fn and cdata are its own */
    honer_group_env_t env = {NULL, tasks_of(w)};
    in_task = 1;
    if (pool.fn((int)(w & 0xffff), &env, pool.cdata) != 0) atomic_store(&pool.failed, 1);
    in_task = 0;
    atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel);
    w = atomic_load(&pool.work);
  }
}

static uint64_t wait_for_launch(uint32_t seen) {
  uint64_t now;
  for (int spins = 0; spins < SPIN_ROUNDS; ++spins) {
    now = atomic_load_explicit(&pool.work, memory_order_acquire);
    if (generation_of(now) != seen) return now;
    CPU_RELAX();
  }
  pthread_mutex_lock(&pool.mu);
  atomic_fetch_add(&pool.sleeping, 1); /* before the check: see honer_pool_launch */
  while (generation_of(now = atomic_load(&pool.work)) == seen) {
    pthread_cond_wait(&pool.wake, &pool.mu);
  }
  atomic_fetch_sub(&pool.sleeping, 1);
  pthread_mutex_unlock(&pool.mu);
  return now;
}

/* Waits for other threads that are running (a launch's claimed tasks, a barrier): pause, and
 * only after a long while yield, for when there are more threads than cores. */
static void wait_a_little(int spins) {
  if (spins < SPIN_ROUNDS) CPU_RELAX(); else sched_yield();
}

static uint32_t start_generation[MAX_THREADS]; /* when each worker was created */

static void* worker_main(void* arg) {
  int id = (int)(intptr_t)arg;
  uint32_t seen = start_generation[id]; /* a launch may be published before it first runs */
  for (;;) {
    uint64_t w = wait_for_launch(seen);
    seen = generation_of(w);
    if (id < tasks_of(w)) claim_and_run(w); /* the thread count may be below the workers' */
  }
  return NULL;
}

static int ensure_workers(int threads) {
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if (threads < 1) threads = 1;
  while (pool.started < threads - 1) {
    start_generation[pool.started + 1] = generation_of(atomic_load(&pool.work));
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, worker_main, (void*)(intptr_t)(pool.started + 1));
    pthread_attr_destroy(&attr);
    if (rc != 0) break; /* fewer threads than asked: still correct, only slower */
    pool.started++;
  }
  pool.threads = threads < pool.started + 1 ? threads : pool.started + 1;
  return pool.threads;
}

HONER_API int honer_pool_set_threads(int n) {
  pthread_mutex_lock(&pool.launching); /* workers are created between launches */
  int threads = ensure_workers(n > 0 ? n : available_cores());
  pthread_mutex_unlock(&pool.launching);
  return threads;
}

HONER_API int honer_pool_threads(void) { return pool.threads ? pool.threads : available_cores(); }

static int run_serially(honer_parallel_fn fn, void* cdata) {
  honer_group_env_t env = {NULL, 1};
  return fn(0, &env, cdata);
}

HONER_API int honer_pool_launch(honer_parallel_fn fn, void* cdata, int num_task) {
  if (in_task || pthread_mutex_trylock(&pool.launching) != 0) return run_serially(fn, cdata);
  if (pool.threads == 0) ensure_workers(available_cores());
  int n = (num_task <= 0 || num_task > pool.threads) ? pool.threads : num_task;
  if (n <= 1) {
    pthread_mutex_unlock(&pool.launching);
    return run_serially(fn, cdata);
  }
  pool.fn = fn, pool.cdata = cdata;
  atomic_store(&pool.failed, 0);
  atomic_store(&pool.pending, n);
  uint64_t w = (uint64_t)(generation_of(atomic_load(&pool.work)) + 1) << 32 | (uint64_t)n << 16;
  atomic_store(&pool.work, w); /* publishes the launch (sequentially consistent) */
  /* a worker counts itself sleeping before it last checks `work`, so either it sees the new
   * launch or this load sees it and the broadcast (under its mutex) reaches it */
  if (atomic_load(&pool.sleeping) > 0) {
    pthread_mutex_lock(&pool.mu);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
  }
  claim_and_run(w);
  for (int spins = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; ++spins) {
    wait_a_little(spins);
  }
  int failed = atomic_load(&pool.failed);
  pthread_mutex_unlock(&pool.launching);
  return failed ? -1 : 0;
}

/* All tasks of the current launch meet here (a sense-reversing counter); each thread runs one
 * task at a time, so every task of a launch is eventually running when some wait here. */
HONER_API int honer_pool_barrier(int task_id, honer_group_env_t* penv) {
  (void)task_id;
  if (penv->num_task <= 1) return 0;
  unsigned gen = atomic_load(&pool.barrier_generation);
  if (atomic_fetch_add(&pool.barrier_count, 1) == penv->num_task - 1) {
    atomic_store(&pool.barrier_count, 0);
    atomic_fetch_add(&pool.barrier_generation, 1);
  } else {
    for (int spins = 0; atomic_load(&pool.barrier_generation) == gen; ++spins) {
      wait_a_little(spins);
    }
  }
  return 0;
}
#endif /* HONER_SINGLE_THREAD */
