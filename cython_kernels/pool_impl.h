/* pyskim's thread pool (see pool_api.h for what clients see).
 *
 * One pool per process, owned by pyskim: its size is set by pyskim.set_num_threads (default: the
 * OMP_NUM_THREADS the process started with, else the CPUs it may run on) and no environment
 * variable changes how it behaves. A job is published under a new generation number; the caller
 * and the pool's threads claim its tasks one by one with a compare-and-swap on (generation, next
 * task), so a thread that wakes after the job is over claims nothing and touches no state of the
 * next job. Between jobs the threads spin for PK_SPIN_NS (back-to-back kernel calls of a net's
 * layers then start without a wake-up), then sleep on a condition variable. The caller waits only
 * for tasks that have been claimed. A job started from inside a task, or while another thread of
 * the process runs a job, runs on the calling thread alone. After fork() the child starts with no
 * pool threads (they are started again on its first job). */
#ifndef PYSKIM_POOL_IMPL_H
#define PYSKIM_POOL_IMPL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "pool_api.h"

#define PK_MAX_THREADS 512
#define PK_SPIN_NS 200000LL
#define PK_TASK_LIMIT 0x7fffffffLL

typedef struct {
    pk_task_fn fn;
    void *ctx;
    int64_t ntasks;
    int max_workers;
    atomic_llong done;
} pk_job_t;

/* Jobs alternate between two slots: the fields of job g sit in slot g & 1 and are not rewritten
 * before job g + 2 is prepared, which cannot happen while a thread holds a claim on job g. */
static pk_job_t pk_jobs[2];
static atomic_ullong pk_state;         /* (generation << 32) | next task of the current job */
static atomic_int pk_threads_wanted = 1;
static atomic_int pk_sleepers;
static int pk_started;                  /* pool threads started (ids 1 .. pk_started) */
static pthread_mutex_t pk_run_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pk_sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pk_wake = PTHREAD_COND_INITIALIZER;
static int pk_atfork_done;
static __thread int pk_in_task;

static inline void pk_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static inline int64_t pk_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Claim and run tasks of generation gen until none is left; worker is the caller's id. */
static void pk_work(uint32_t gen, int worker) {
    pk_job_t *job = &pk_jobs[gen & 1];
    unsigned long long s = atomic_load(&pk_state);
    for (;;) {
        if ((uint32_t)(s >> 32) != gen) return;
        const int64_t t = (int64_t)(uint32_t)s;
        const int64_t ntasks = job->ntasks;
        if (t >= ntasks || worker >= job->max_workers) return;
        if (!atomic_compare_exchange_weak(&pk_state, &s, s + 1)) continue;
        pk_in_task = 1;
        job->fn(job->ctx, t, worker);
        pk_in_task = 0;
        atomic_fetch_add(&job->done, 1);
        s = atomic_load(&pk_state);
    }
}

static void *pk_thread_main(void *arg) {
    const int id = (int)(intptr_t)arg;
    uint32_t seen = (uint32_t)(atomic_load(&pk_state) >> 32);
    for (;;) {
        uint32_t gen = (uint32_t)(atomic_load(&pk_state) >> 32);
        if (gen == seen) {
            const int64_t until = pk_now_ns() + PK_SPIN_NS;
            int spins = 0;
            while ((gen = (uint32_t)(atomic_load(&pk_state) >> 32)) == seen) {
                pk_relax();
                if (++spins % 256 == 0 && pk_now_ns() > until) break;
            }
            if (gen == seen) {
                pthread_mutex_lock(&pk_sleep_lock);
                atomic_fetch_add(&pk_sleepers, 1);
                while ((gen = (uint32_t)(atomic_load(&pk_state) >> 32)) == seen)
                    pthread_cond_wait(&pk_wake, &pk_sleep_lock);
                atomic_fetch_sub(&pk_sleepers, 1);
                pthread_mutex_unlock(&pk_sleep_lock);
            }
        }
        seen = gen;
        if (id < atomic_load(&pk_threads_wanted)) pk_work(gen, id);
    }
    return 0;
}

/* In a forked child only the forking thread exists: forget the parent's pool threads. */
static void pk_after_fork_child(void) {
    pk_started = 0;
    atomic_store(&pk_sleepers, 0);
    pthread_mutex_init(&pk_run_lock, 0);
    pthread_mutex_init(&pk_sleep_lock, 0);
    pthread_cond_init(&pk_wake, 0);
}

/* Start pool threads up to id n - 1 (called with pk_run_lock held); returns the count running. */
static int pk_start_threads(int n) {
    if (!pk_atfork_done) {
        pthread_atfork(0, 0, pk_after_fork_child);
        pk_atfork_done = 1;
    }
    while (pk_started < n - 1 && pk_started < PK_MAX_THREADS - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&th, &attr, pk_thread_main, (void *)(intptr_t)(pk_started + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        ++pk_started;
    }
    return pk_started + 1;
}

static void pk_run(int64_t ntasks, pk_task_fn fn, void *ctx, int max_workers) {
    int workers = atomic_load(&pk_threads_wanted);
    if (max_workers < workers) workers = max_workers;
    if (ntasks < workers) workers = (int)ntasks;
    if (workers <= 1 || pk_in_task || ntasks > PK_TASK_LIMIT || pthread_mutex_trylock(&pk_run_lock)) {
        for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t, 0);
        return;
    }
    workers = pk_start_threads(workers) < workers ? pk_started + 1 : workers;
    const uint32_t gen = (uint32_t)(atomic_load(&pk_state) >> 32) + 1;
    pk_job_t *job = &pk_jobs[gen & 1];
    job->fn = fn;
    job->ctx = ctx;
    job->ntasks = ntasks;
    job->max_workers = workers;
    atomic_store(&job->done, 0);
    atomic_store(&pk_state, (unsigned long long)gen << 32);
    if (atomic_load(&pk_sleepers) > 0) {
        pthread_mutex_lock(&pk_sleep_lock);
        pthread_cond_broadcast(&pk_wake);
        pthread_mutex_unlock(&pk_sleep_lock);
    }
    pk_work(gen, 0);
    /* every task is claimed: wait for the ones other threads are still running */
    int spins = 0;
    while (atomic_load(&job->done) < ntasks) {
        pk_relax();
        if (++spins % 1024 == 0) sched_yield();
    }
    pthread_mutex_unlock(&pk_run_lock);
}

static int pk_threads(void) { return atomic_load(&pk_threads_wanted); }

static void pk_set_threads(int n) {
    if (n < 1) n = 1;
    if (n > PK_MAX_THREADS) n = PK_MAX_THREADS;
    atomic_store(&pk_threads_wanted, n);
}

static const pk_pool_api_t pk_pool_api = {PK_POOL_API_VERSION, pk_run, pk_threads};

#endif /* PYSKIM_POOL_IMPL_H */
