/* honer's thread pool for the parallel loops of TVM-built CPU kernels. The standalone runtime
 * (honer_rt.c) answers the kernels' TVMBackendParallelLaunch with it; a Relax VM library links
 * it too, and the loader points the library's launch hook at honer_pool_launch in place of
 * TVM's own pool (runtime/loader.py says why). C11 + pthreads; HONER_SINGLE_THREAD: none. */
#ifndef HONER_POOL_H_
#define HONER_POOL_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef HONER_API
#define HONER_API __attribute__((visibility("default")))
#endif

typedef struct { void* sync_handle; int32_t num_task; } honer_group_env_t; /* TVMParallelGroupEnv */
typedef int (*honer_parallel_fn)(int task_id, honer_group_env_t* penv, void* cdata);

/* Runs fn(task, env, cdata) for tasks 0..n-1 on the pool (the caller among its threads);
 * nonzero if a task failed. A launch from inside a task, or while another thread's launch is
 * running, runs its one task on the calling thread. */
HONER_API int honer_pool_launch(honer_parallel_fn fn, void* cdata, int num_task);
/* Every task of the current launch waits here until all have arrived. */
HONER_API int honer_pool_barrier(int task_id, honer_group_env_t* penv);
/* Threads a launch uses (the caller included); <= 0 means one per available core. Call it
 * between launches; returns the count. */
HONER_API int honer_pool_set_threads(int n);
HONER_API int honer_pool_threads(void);

#ifdef __cplusplus
}
#endif
#endif /* HONER_POOL_H_ */
