/*
 * client_common.h -- shared by the test clients: scratch state, the fake driver's helpers, one
 * call thunk per API row (so any entry point can be called through any pointer), and output.
 * Output goes to stdout, one record per line, for test_shim.py to parse.
 */
#ifndef CUDA_FAULT_TEST_CLIENT_COMMON_H
#define CUDA_FAULT_TEST_CLIENT_COMMON_H

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_api.h"

/* Scratch arguments for every call (the fake driver never dereferences module/function handles). */
static struct {
    CUcontext ctx, ctx2;
    CUgreenCtx green;
    CUdevice dev;
    CUstream stream, stream2;
    CUevent ev, ev2;
    CUdeviceptr dptr;
    CUdeviceptr_v1 dptr1;
    unsigned int u, u2;
    size_t sz, sz2;
    int i;
    float ms;
    char buf[256];
    void *host, *ptr;
    CUmodule mod;
    CUfunction fn;
    CUlibrary lib;
    CUkernel kern;
    CUgraphExec gexec;
    CUuuid uuid;
    unsigned char hostmem[256], hostmem2[256];
    dim3 grid, block;
    const char *str;
    const void *table;
} S;

/* The fake driver's test helpers, and the fake runtime's counter. */
static struct {
    pfn_fake_cuda_calls calls;
    pfn_fake_cuda_setup setup;
    pfn_fake_cuda_new_ctx new_ctx;
    pfn_fake_cuda_set_current set_current;
    pfn_fake_cuda_new_stream new_stream;
    pfn_fake_cuda_new_event new_event;
    pfn_fake_cuda_lookup lookup;
    pfn_fake_cuda_export_table export_table;
    pfn_fake_cudart_calls rt_calls;
} H;

static void die(const char *what)
{
    fprintf(stdout, "ERROR %s\n", what);
    fflush(stdout);
    exit(2);
}

static void *need_sym(void *handle, const char *name)
{
    void *p = dlsym(handle, name);

    if (p == NULL)
        die(name);
    return p;
}

#define HELPER(field, handle, name) (H.field = (__typeof__(H.field))need_sym(handle, name))

static void load_helpers(void *cuda, void *cudart)
{
    HELPER(calls, cuda, "fake_cuda_calls");
    HELPER(setup, cuda, "fake_cuda_setup");
    HELPER(new_ctx, cuda, "fake_cuda_new_ctx");
    HELPER(set_current, cuda, "fake_cuda_set_current");
    HELPER(new_stream, cuda, "fake_cuda_new_stream");
    HELPER(new_event, cuda, "fake_cuda_new_event");
    HELPER(lookup, cuda, "fake_cuda_lookup");
    HELPER(export_table, cuda, "fake_cuda_export_table");
    if (cudart != NULL)
        HELPER(rt_calls, cudart, "fake_cudart_calls");
}

/* Fresh handles before each call, so that destroying calls never pull state from under later ones. */
static void prepare(int dev)
{
    S.ctx = (CUcontext)H.new_ctx(dev);
    H.set_current(S.ctx);
    S.stream = (CUstream)H.new_stream(S.ctx);
    S.ev = (CUevent)H.new_event();
    S.dev = dev;
    S.dptr = 0x10000;
    S.dptr1 = 0x10000;
    S.host = S.hostmem;
    S.ptr = (void *)0x20000;
    S.mod = (CUmodule)(void *)S.hostmem;
    S.fn = (CUfunction)(void *)S.hostmem;
    S.lib = (CUlibrary)(void *)S.hostmem;
    S.kern = (CUkernel)(void *)S.hostmem;
    S.gexec = (CUgraphExec)(void *)S.hostmem;
    S.grid.x = S.grid.y = S.grid.z = 1;
    S.block.x = 32;
    S.block.y = S.block.z = 1;
}

__attribute__((unused)) static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

__attribute__((unused)) static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

/* ---- one thunk per row ------------------------------------------------------------------ */

#define CL_PFN(name, ver, kind, params, args, callargs) typedef CUresult (*pfn_##name) params;
CUDA_DRIVER_COVERED(CL_PFN)
CUDA_DRIVER_LOOKUP(CL_PFN)
CUDA_DRIVER_EXTRA(CL_PFN)
#define CL_RT_PFN(name, params, args, callargs) typedef cudaError_t (*pfn_##name) params;
CUDA_RUNTIME_COVERED(CL_RT_PFN)

#define CL_THUNK(name, ver, kind, params, args, callargs) \
    static int thunk_##name(void *fn) \
    { \
        return ((pfn_##name)fn) callargs; \
    }
CUDA_DRIVER_COVERED(CL_THUNK)
CUDA_DRIVER_LOOKUP(CL_THUNK)
CUDA_DRIVER_EXTRA(CL_THUNK)
#define CL_RT_THUNK(name, params, args, callargs) \
    static int thunk_##name(void *fn) \
    { \
        return ((pfn_##name)fn) callargs; \
    }
CUDA_RUNTIME_COVERED(CL_RT_THUNK)

enum { GROUP_COVERED, GROUP_LOOKUP, GROUP_EXTRA, GROUP_RUNTIME };

struct row {
    const char *name;
    int min_version;
    int group;
    int (*thunk)(void *fn);
};

#define CL_ROW_C(name, ver, kind, params, args, callargs) { #name, ver, GROUP_COVERED, thunk_##name },
#define CL_ROW_L(name, ver, kind, params, args, callargs) { #name, ver, GROUP_LOOKUP, thunk_##name },
#define CL_ROW_E(name, ver, kind, params, args, callargs) { #name, ver, GROUP_EXTRA, thunk_##name },
#define CL_ROW_R(name, params, args, callargs) { #name, 0, GROUP_RUNTIME, thunk_##name },
static const struct row rows[] = {
    CUDA_DRIVER_COVERED(CL_ROW_C) CUDA_DRIVER_LOOKUP(CL_ROW_L) CUDA_DRIVER_EXTRA(CL_ROW_E) CUDA_RUNTIME_COVERED(CL_ROW_R)
};
#define N_ROWS ((int)(sizeof(rows) / sizeof(rows[0])))

__attribute__((unused)) static const struct row *find_row(const char *name)
{
    int i;

    for (i = 0; i < N_ROWS; i++)
        if (strcmp(rows[i].name, name) == 0)
            return &rows[i];
    return NULL;
}

static unsigned long counter(const struct row *r)
{
    return r->group == GROUP_RUNTIME ? H.rt_calls(r->name) : H.calls(r->name);
}

/* Call a row through `fn` and report: rc, and how many times the fake's function of that exact
 * name ran (1: passed through, 0: the shim answered). */
static int report_call(const char *route, const struct row *r, void *fn, int dev, const char *extra)
{
    unsigned long before, after;
    int rc;

    prepare(dev);
    before = counter(r);
    rc = r->thunk(fn);
    after = counter(r);
    printf("CALL %s %s rc=%d delta=%lu%s%s\n", route, r->name, rc, after - before, extra ? " " : "", extra ? extra : "");
    return rc;
}

/* The variant a driver returns for (base name, version, flags), by the same rule as the fake. */
__attribute__((unused)) static const struct row *expected_variant(const char *base, int ver, int flags)
{
    int want_pt = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    const struct row *best = NULL;
    int pass, i;

    for (pass = 0; pass < 2 && best == NULL; pass++) {
        for (i = 0; i < N_ROWS; i++) {
            char b[128];
            int pt;
            if (rows[i].group == GROUP_RUNTIME)
                continue;
            cuda_api_base_name(rows[i].name, b, sizeof(b), &pt);
            if (strcmp(b, base) != 0 || rows[i].min_version > ver || pt != (pass == 0 ? want_pt : 0))
                continue;
            if (best == NULL || rows[i].min_version > best->min_version)
                best = &rows[i];
        }
        if (!want_pt)
            break;
    }
    return best;
}

#endif
