/*
 * shim_bench.c -- nanoseconds per CUDA driver call, to measure what an interposer adds.
 *
 *   shim_bench direct|gpa CALLS
 *
 * direct: calls the exported cuStreamQuery (what a program linked against libcuda does);
 * gpa:    calls the pointer from cuGetProcAddress_v2 looked up on dlopen("libcuda.so.1"), as the
 *         CUDA runtime does.
 * Run it with and without LD_PRELOAD; bench/shim.py does, and compares. Prints one line:
 *   ns_per_call=<float> calls=<n> rc=<last result>
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef struct CUstream_st *CUstream;
typedef CUresult (*query_t)(CUstream);
typedef CUresult (*gpa_t)(const char *, void **, int, uint64_t, int *);

extern CUresult cuStreamQuery(CUstream hStream);

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* Separate loops, so that the direct one really is a call through the PLT. */
static __attribute__((noinline)) CUresult loop_direct(long n)
{
    CUresult rc = 0;
    long i;

    for (i = 0; i < n; i++)
        rc |= cuStreamQuery(NULL);
    return rc;
}

static __attribute__((noinline)) CUresult loop_pointer(query_t fn, long n)
{
    CUresult rc = 0;
    long i;

    for (i = 0; i < n; i++)
        rc |= fn(NULL);
    return rc;
}

int main(int argc, char **argv)
{
    long calls = argc > 2 ? atol(argv[2]) : 5000000;
    int gpa = argc > 1 && strcmp(argv[1], "gpa") == 0;
    query_t fn = NULL;
    double t0, t1;
    CUresult rc;

    if (calls <= 0)
        return 2;
    if (gpa) {
        void *h = dlopen("libcuda.so.1", RTLD_NOW);
        gpa_t lookup = h ? (gpa_t)dlsym(h, "cuGetProcAddress_v2") : NULL;
        void *p = NULL;
        int status = 0;
        if (lookup == NULL || lookup("cuStreamQuery", &p, 12000, 0, &status) != 0 || p == NULL) {
            fprintf(stderr, "shim_bench: cannot look up cuStreamQuery\n");
            return 2;
        }
        fn = (query_t)p;
    }
    /* warm-up: first-call initialisation, caches, frequency */
    rc = gpa ? loop_pointer(fn, calls / 10 + 1) : loop_direct(calls / 10 + 1);
    t0 = now_ns();
    rc |= gpa ? loop_pointer(fn, calls) : loop_direct(calls);
    t1 = now_ns();
    printf("ns_per_call=%.3f calls=%ld rc=%d\n", (t1 - t0) / (double)calls, calls, rc);
    return 0;
}
