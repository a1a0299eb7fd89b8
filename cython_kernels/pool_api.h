/* pyskim's thread pool, as its client kernels see it.
 *
 * The pool lives in the extension module pyskim._kernels.pool (pool_impl.h); every other kernel
 * module binds to it once, at import, through the capsule that module exports (pool_client.pxi),
 * so that the whole process has one pool of worker threads for pyskim, whatever module runs.
 *
 * pk_parallel_for(ntasks, fn, ctx, max_workers) runs fn(ctx, task, worker) for every task in
 * [0, ntasks) on at most max_workers threads, the calling thread included (worker 0; pool threads
 * are 1 .. pk_max_workers() - 1), and returns when every task has finished. Tasks are claimed one
 * at a time by whichever thread is free, so a thread that starts late (descheduled by another
 * process) only does fewer tasks: the caller never waits for a thread that has not started. */
#ifndef PYSKIM_POOL_API_H
#define PYSKIM_POOL_API_H

#include <stdint.h>

typedef void (*pk_task_fn)(void *ctx, int64_t task, int worker);

typedef struct {
    int version;
    void (*run)(int64_t ntasks, pk_task_fn fn, void *ctx, int max_workers);
    int (*threads)(void);     /* the pool's thread count (pyskim.set_num_threads) */
} pk_pool_api_t;

#define PK_POOL_API_VERSION 1

static const pk_pool_api_t *pk_pool = 0;

static inline void pk_pool_bind(const pk_pool_api_t *api) { pk_pool = api; }

/* Items per task when n short items are cut into about 4 tasks per thread (1 task on one thread):
 * enough tasks that a thread which starts late only does fewer of them. */
static inline int64_t pk_task_chunk(int64_t n, int threads) {
    const int64_t tasks = threads > 1 ? 4 * (int64_t)threads : 1;
    return n > tasks ? (n + tasks - 1) / tasks : 1;
}

/* The threads a kernel may use: the pool's count. */
static inline int pk_max_workers(void) { return pk_pool ? pk_pool->threads() : 1; }

static inline void pk_parallel_for(int64_t ntasks, pk_task_fn fn, void *ctx, int max_workers) {
    if (ntasks <= 0) return;
    if (!pk_pool || max_workers <= 1 || ntasks == 1) {
        for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t, 0);
        return;
    }
    pk_pool->run(ntasks, fn, ctx, max_workers);
}

#endif /* PYSKIM_POOL_API_H */
