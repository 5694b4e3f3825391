/*
 * fake_cuda.c -- a stand-in libcuda.so.1 for the shim's tests (and demos without a GPU).
 *
 *   cc -shared -fPIC -O2 -fno-ipa-icf -Wl,-soname,libcuda.so.1 -o libcuda.so.1 fake_cuda.c -lpthread
 *
 * Exports every driver entry point the shim covers (plain, _v2.._v4, _ptds/_ptsz), a few it does
 * not (cuDriverGetVersion, cuGetExportTable, cuGetErrorName/String, cuCtxGetFlags, and an invented
 * future variant, cuEventQuery_v99) and cuGetProcAddress[_v2] with the CUDA 12 signature. Every call
 * is counted per exact name, so tests can prove that the real function ran (or did not). Behaviour,
 * kept close to the driver where the shim depends on it:
 *   - 4 devices, PCI 0000:53:00.0, 0000:64:00.0, 0000:75:00.0, 0000:86:00.0; device queries and
 *     contexts need cuInit first (CUDA_ERROR_NOT_INITIALIZED otherwise);
 *   - contexts, streams and events are real handles (per-thread context stack, stream -> context);
 *   - cuGetProcAddress picks the variant by base name, version and per-thread flag, and returns
 *     internal entry points (distinct from the exported symbols, as a driver may) unless
 *     FAKE_CUDA_GPA_EXPORTS=1, which returns the exported addresses;
 *   - cuGetExportTable returns a sentinel table for the all-zero UUID and refuses every other one
 *     (CUDA_ERROR_NOT_SUPPORTED): NVIDIA's runtime asks for private tables no stand-in can provide,
 *     so it stops starting at that point (tests/unit/shim/test_nvidia_runtime.py);
 *   - cuDriverGetVersion reports 13050 (cudart 13 refuses an older driver).
 * Helpers for tests are exported as fake_cuda_* (not CUDA names, so never intercepted).
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_api.h"

#define FAKE_EXPORT __attribute__((visibility("default")))

#define FAKE_ROW_INDEX(name, ver, kind, params, args, callargs) FAKE_I_##name,
enum {
    CUDA_DRIVER_COVERED(FAKE_ROW_INDEX) CUDA_DRIVER_LOOKUP(FAKE_ROW_INDEX) CUDA_DRIVER_EXTRA(FAKE_ROW_INDEX) FAKE_N
};

static atomic_ulong fake_counts[FAKE_N];
static atomic_int fake_inited;

static inline void fake_count(int idx)
{
    atomic_fetch_add_explicit(&fake_counts[idx], 1, memory_order_relaxed);
}

/* ---- handles ---------------------------------------------------------------------------- */

enum { MAGIC_CTX = 0x0c7c7c7c, MAGIC_STREAM = 0x05743a11, MAGIC_EVENT = 0x0e7e7e7e };

struct fake_obj {
    int magic;
    int dev;
    struct fake_obj *ctx;
};

/* Handles are never reused (a bump allocator over a static pool: no leaks, no reuse). */
#define FAKE_POOL 65536
static struct fake_obj fake_pool[FAKE_POOL];
static struct fake_obj fake_primary[FAKE_CUDA_DEVICES] = {
    { MAGIC_CTX, 0, NULL }, { MAGIC_CTX, 1, NULL }, { MAGIC_CTX, 2, NULL }, { MAGIC_CTX, 3, NULL },
};
static atomic_int fake_pool_next;

static __thread struct fake_obj *fake_stack[32];
static __thread int fake_depth;

static struct fake_obj *fake_new(int magic, int dev, struct fake_obj *ctx)
{
    int i = atomic_fetch_add(&fake_pool_next, 1);

    if (i >= FAKE_POOL)
        return NULL;
    fake_pool[i].magic = magic;
    fake_pool[i].dev = dev;
    fake_pool[i].ctx = ctx;
    return &fake_pool[i];
}

/* A handle is valid when it points at a live object of the right kind in our own storage; the
 * address is checked before anything is read, so any pointer can be passed. */
static struct fake_obj *fake_obj_of(const void *p, int magic)
{
    uintptr_t a = (uintptr_t)p;
    uintptr_t pool0 = (uintptr_t)&fake_pool[0], pool1 = (uintptr_t)&fake_pool[FAKE_POOL];
    uintptr_t prim0 = (uintptr_t)&fake_primary[0], prim1 = (uintptr_t)&fake_primary[FAKE_CUDA_DEVICES];
    struct fake_obj *o;

    if (a >= pool0 && a < pool1 && (a - pool0) % sizeof(struct fake_obj) == 0)
        o = &fake_pool[(a - pool0) / sizeof(struct fake_obj)];
    else if (a >= prim0 && a < prim1 && (a - prim0) % sizeof(struct fake_obj) == 0)
        o = &fake_primary[(a - prim0) / sizeof(struct fake_obj)];
    else
        return NULL;
    return o->magic == magic ? o : NULL;
}

static struct fake_obj *fake_current(void)
{
    return fake_depth > 0 ? fake_stack[fake_depth - 1] : NULL;
}

static void fake_set_current(struct fake_obj *ctx)
{
    if (fake_depth == 0)
        fake_depth = 1;
    fake_stack[fake_depth - 1] = ctx;
}

static int fake_bad_dev(CUdevice dev)
{
    return dev < 0 || dev >= FAKE_CUDA_DEVICES;
}

#define FAKE_NEED_INIT() \
    do { \
        if (!atomic_load(&fake_inited)) \
            return CUDA_ERROR_NOT_INITIALIZED; \
    } while (0)

/* ---- hand-written behaviour ------------------------------------------------------------- */

static CUresult impl_cuInit(unsigned int Flags)
{
    (void)Flags;
    atomic_store(&fake_inited, 1);
    return CUDA_SUCCESS;
}

static CUresult impl_cuDriverGetVersion(int *v)
{
    if (v == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *v = FAKE_CUDA_DRIVER_VERSION;
    return CUDA_SUCCESS;
}

static CUresult impl_cuDeviceGet(CUdevice *device, int ordinal)
{
    FAKE_NEED_INIT();
    if (device == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_bad_dev(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

static CUresult impl_cuDeviceGetCount(int *count)
{
    FAKE_NEED_INIT();
    if (count == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *count = FAKE_CUDA_DEVICES;
    return CUDA_SUCCESS;
}

static CUresult impl_cuDeviceGetName(char *name, int len, CUdevice dev)
{
    FAKE_NEED_INIT();
    if (name == NULL || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_bad_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "Fake GPU %d", dev);
    return CUDA_SUCCESS;
}

static CUresult impl_cuDeviceGetPCIBusId(char *pci, int len, CUdevice dev)
{
    FAKE_NEED_INIT();
    if (pci == NULL || len < 13)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_bad_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(pci, (size_t)len, "0000:%02x:00.0", 0x53 + 0x11 * dev);
    return CUDA_SUCCESS;
}

static CUresult impl_cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    FAKE_NEED_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_bad_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *pctx = (CUcontext)(void *)&fake_primary[dev];
    return CUDA_SUCCESS;
}

static CUresult fake_ctx_create(CUcontext *pctx, CUdevice dev)
{
    struct fake_obj *o;

    FAKE_NEED_INIT();
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_bad_dev(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    o = fake_new(MAGIC_CTX, dev, NULL);
    if (o == NULL)
        return 2; /* CUDA_ERROR_OUT_OF_MEMORY */
    fake_set_current(o);  /* cuCtxCreate makes the new context current */
    *pctx = (CUcontext)(void *)o;
    return CUDA_SUCCESS;
}

static CUresult impl_cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    return fake_ctx_create(pctx, dev);
}

static CUresult impl_cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    (void)flags;
    return fake_ctx_create(pctx, dev);
}

static CUresult impl_cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *pa, int n, unsigned int flags, CUdevice dev)
{
    (void)pa;
    (void)n;
    (void)flags;
    return fake_ctx_create(pctx, dev);
}

static CUresult impl_cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev)
{
    (void)params;
    (void)flags;
    return fake_ctx_create(pctx, dev);
}

static CUresult fake_ctx_destroy(CUcontext ctx)
{
    struct fake_obj *o = fake_obj_of(ctx, MAGIC_CTX);
    int i;

    if (o == NULL || ((uintptr_t)o >= (uintptr_t)&fake_primary[0] &&
                      (uintptr_t)o < (uintptr_t)&fake_primary[FAKE_CUDA_DEVICES]))
        return CUDA_ERROR_INVALID_CONTEXT;  /* primary contexts are released, not destroyed */
    o->magic = 0;
    for (i = 0; i < fake_depth; i++)
        if (fake_stack[i] == o)
            fake_stack[i] = NULL;
    return CUDA_SUCCESS;
}

static CUresult impl_cuCtxDestroy(CUcontext ctx)
{
    return fake_ctx_destroy(ctx);
}

static CUresult impl_cuCtxDestroy_v2(CUcontext ctx)
{
    return fake_ctx_destroy(ctx);
}

static CUresult fake_ctx_push(CUcontext ctx)
{
    struct fake_obj *o = fake_obj_of(ctx, MAGIC_CTX);

    if (o == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (fake_depth >= (int)(sizeof(fake_stack) / sizeof(fake_stack[0])))
        return CUDA_ERROR_INVALID_VALUE;
    fake_stack[fake_depth++] = o;
    return CUDA_SUCCESS;
}

static CUresult impl_cuCtxPushCurrent(CUcontext ctx)
{
    return fake_ctx_push(ctx);
}

static CUresult impl_cuCtxPushCurrent_v2(CUcontext ctx)
{
    return fake_ctx_push(ctx);
}

static CUresult fake_ctx_pop(CUcontext *pctx)
{
    if (fake_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    fake_depth--;
    if (pctx != NULL)
        *pctx = (CUcontext)(void *)fake_stack[fake_depth];
    return CUDA_SUCCESS;
}

static CUresult impl_cuCtxPopCurrent(CUcontext *pctx)
{
    return fake_ctx_pop(pctx);
}

static CUresult impl_cuCtxPopCurrent_v2(CUcontext *pctx)
{
    return fake_ctx_pop(pctx);
}

static CUresult impl_cuCtxSetCurrent(CUcontext ctx)
{
    struct fake_obj *o = fake_obj_of(ctx, MAGIC_CTX);

    if (ctx != NULL && o == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (o == NULL) {
        if (fake_depth > 0)
            fake_depth--;
        return CUDA_SUCCESS;
    }
    fake_set_current(o);
    return CUDA_SUCCESS;
}

static CUresult impl_cuCtxGetCurrent(CUcontext *pctx)
{
    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = (CUcontext)(void *)fake_current();
    return CUDA_SUCCESS;
}

static CUresult fake_ctx_device(CUdevice *device, struct fake_obj *o)
{
    if (device == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (o == NULL || o->magic != MAGIC_CTX)
        return CUDA_ERROR_INVALID_CONTEXT;
    *device = o->dev;
    return CUDA_SUCCESS;
}

static CUresult impl_cuCtxGetDevice(CUdevice *device)
{
    return fake_ctx_device(device, fake_current());
}

/* CUDA 13: the context's device; NULL means the current context. */
static CUresult impl_cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)
{
    return fake_ctx_device(device, ctx == NULL ? fake_current() : fake_obj_of(ctx, MAGIC_CTX));
}

static atomic_ullong fake_next_dptr = 0x10000;

static CUresult impl_cuMemAlloc(CUdeviceptr_v1 *dptr, unsigned int bytesize)
{
    if (dptr == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_current() == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dptr = (CUdeviceptr_v1)(atomic_fetch_add(&fake_next_dptr, 256) & 0xffffffffu);
    (void)bytesize;
    return CUDA_SUCCESS;
}

static CUresult impl_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    if (dptr == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (fake_current() == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dptr = atomic_fetch_add(&fake_next_dptr, 256);
    (void)bytesize;
    return CUDA_SUCCESS;
}

static CUresult impl_cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    (void)flags;
    return impl_cuMemAlloc_v2(dptr, bytesize);
}

static CUresult impl_cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    (void)s;
    return impl_cuMemAlloc_v2(dptr, bytesize);
}

static CUresult impl_cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream s)
{
    (void)s;
    return impl_cuMemAlloc_v2(dptr, bytesize);
}

/* Host allocations come from one static page: the fake never hands out heap memory. */
static unsigned char fake_host_page[4096] __attribute__((aligned(64)));

static CUresult fake_host_alloc(void **pp, size_t n)
{
    if (pp == NULL || n > sizeof(fake_host_page))
        return CUDA_ERROR_INVALID_VALUE;
    *pp = fake_host_page;
    return CUDA_SUCCESS;
}

static CUresult impl_cuMemAllocHost(void **pp, unsigned int n)
{
    return fake_host_alloc(pp, n);
}

static CUresult impl_cuMemAllocHost_v2(void **pp, size_t n)
{
    return fake_host_alloc(pp, n);
}

static CUresult impl_cuMemHostAlloc(void **pp, size_t n, unsigned int flags)
{
    (void)flags;
    return fake_host_alloc(pp, n);
}

static CUresult fake_stream_create(CUstream *ps)
{
    struct fake_obj *ctx = fake_current(), *o;

    if (ps == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (ctx == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    o = fake_new(MAGIC_STREAM, ctx->dev, ctx);
    if (o == NULL)
        return 2;
    *ps = (CUstream)(void *)o;
    return CUDA_SUCCESS;
}

static CUresult impl_cuStreamCreate(CUstream *ps, unsigned int flags)
{
    (void)flags;
    return fake_stream_create(ps);
}

static CUresult impl_cuStreamCreateWithPriority(CUstream *ps, unsigned int flags, int prio)
{
    (void)flags;
    (void)prio;
    return fake_stream_create(ps);
}

static CUresult fake_stream_destroy(CUstream s)
{
    struct fake_obj *o = fake_obj_of(s, MAGIC_STREAM);

    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    o->magic = 0;
    return CUDA_SUCCESS;
}

static CUresult impl_cuStreamDestroy(CUstream s)
{
    return fake_stream_destroy(s);
}

static CUresult impl_cuStreamDestroy_v2(CUstream s)
{
    return fake_stream_destroy(s);
}

static CUresult fake_stream_ctx(CUstream s, CUcontext *pctx)
{
    struct fake_obj *o;

    if (pctx == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if ((uintptr_t)s <= 2u) {  /* NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD */
        if (fake_current() == NULL)
            return CUDA_ERROR_INVALID_CONTEXT;
        *pctx = (CUcontext)(void *)fake_current();
        return CUDA_SUCCESS;
    }
    o = fake_obj_of(s, MAGIC_STREAM);
    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    *pctx = (CUcontext)(void *)o->ctx;
    return CUDA_SUCCESS;
}

static CUresult impl_cuStreamGetCtx(CUstream s, CUcontext *pctx)
{
    return fake_stream_ctx(s, pctx);
}

static CUresult impl_cuStreamGetCtx_ptsz(CUstream s, CUcontext *pctx)
{
    return fake_stream_ctx(s, pctx);
}

/* CUDA 12.5: also the stream's green context, which the fake never has. */
static CUresult fake_stream_ctx_v2(CUstream s, CUcontext *pctx, CUgreenCtx *pgreen)
{
    CUresult rc = fake_stream_ctx(s, pctx);

    if (rc == CUDA_SUCCESS && pgreen != NULL)
        *pgreen = NULL;
    return rc;
}

static CUresult impl_cuStreamGetCtx_v2(CUstream s, CUcontext *pctx, CUgreenCtx *pgreen)
{
    return fake_stream_ctx_v2(s, pctx, pgreen);
}

static CUresult impl_cuStreamGetCtx_v2_ptsz(CUstream s, CUcontext *pctx, CUgreenCtx *pgreen)
{
    return fake_stream_ctx_v2(s, pctx, pgreen);
}

static CUresult impl_cuEventCreate(CUevent *pe, unsigned int flags)
{
    struct fake_obj *o;

    (void)flags;
    if (pe == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    o = fake_new(MAGIC_EVENT, -1, fake_current());
    if (o == NULL)
        return 2;
    *pe = (CUevent)(void *)o;
    return CUDA_SUCCESS;
}

static CUresult fake_event_destroy(CUevent e)
{
    struct fake_obj *o = fake_obj_of(e, MAGIC_EVENT);

    if (o == NULL)
        return CUDA_ERROR_INVALID_HANDLE;
    o->magic = 0;
    return CUDA_SUCCESS;
}

static CUresult impl_cuEventDestroy(CUevent e)
{
    return fake_event_destroy(e);
}

static CUresult impl_cuEventDestroy_v2(CUevent e)
{
    return fake_event_destroy(e);
}

static const char fake_export_table_sentinel[] = "fake-cuda-export-table";

/* NVIDIA's private export tables (the runtime asks for them by UUID while it starts) are not
 * something a stand-in can provide: every UUID but the tests' all-zero one is refused, so NVIDIA's
 * cudart stops starting there with this error instead of calling into a table it cannot have. */
static CUresult impl_cuGetExportTable(const void **table, const CUuuid *id)
{
    static const CUuuid zero;

    if (table == NULL || id == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (memcmp(id, &zero, sizeof(zero)) != 0) {
        *table = NULL;
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    *table = fake_export_table_sentinel;
    return CUDA_SUCCESS;
}

static CUresult impl_cuGetErrorName(CUresult error, const char **str)
{
    if (str == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *str = error == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_FAKE";
    return CUDA_SUCCESS;
}

static CUresult impl_cuGetErrorString(CUresult error, const char **str)
{
    if (str == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *str = error == 100 ? "no CUDA-capable device is detected" : "fake error";
    return CUDA_SUCCESS;
}

static CUresult fake_lookup_impl(const char *symbol, void **pfn, int ver, cuuint64_t flags, int *status);

static CUresult impl_cuGetProcAddress(const char *symbol, void **pfn, int ver, cuuint64_t flags)
{
    return fake_lookup_impl(symbol, pfn, ver, flags, NULL);
}

static CUresult impl_cuGetProcAddress_v2(const char *symbol, void **pfn, int ver, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *status)
{
    return fake_lookup_impl(symbol, pfn, ver, flags, status);
}

/* ---- the exported entry points and their internal twins ---------------------------------- */

/* GEN: count and succeed. HAND: count and run impl_<name>. Each also gets an internal twin (what
 * cuGetProcAddress hands out) and a hidden alias giving the export's own address. */
#define FAKE_DEF_GEN(name, params, args) \
    FAKE_EXPORT CUresult name params \
    { \
        fake_count(FAKE_I_##name); \
        return CUDA_SUCCESS; \
    } \
    static CUresult fake_twin_##name params \
    { \
        fake_count(FAKE_I_##name); \
        return CUDA_SUCCESS; \
    }
#define FAKE_DEF_HAND(name, params, args) \
    FAKE_EXPORT CUresult name params \
    { \
        fake_count(FAKE_I_##name); \
        return impl_##name args; \
    } \
    static CUresult fake_twin_##name params \
    { \
        fake_count(FAKE_I_##name); \
        return impl_##name args; \
    }
#define FAKE_DEFINE(name, ver, kind, params, args, callargs) \
    FAKE_DEF_##kind(name, params, args) \
    extern __typeof__(name) fake_local_##name __attribute__((alias(#name), visibility("hidden")));
CUDA_DRIVER_COVERED(FAKE_DEFINE)
CUDA_DRIVER_LOOKUP(FAKE_DEFINE)
CUDA_DRIVER_EXTRA(FAKE_DEFINE)

struct fake_entry {
    const char *name;
    int min_version;
    void *twin;
    void *exported;
};

#define FAKE_TABLE_ROW(name, ver, kind, params, args, callargs) \
    { #name, ver, (void *)fake_twin_##name, (void *)fake_local_##name },
static const struct fake_entry fake_table[FAKE_N] = {
    CUDA_DRIVER_COVERED(FAKE_TABLE_ROW) CUDA_DRIVER_LOOKUP(FAKE_TABLE_ROW) CUDA_DRIVER_EXTRA(FAKE_TABLE_ROW)
};

/* The driver's choice: among the variants of the base name, the newest one not newer than the
 * caller's version, per-thread variants when asked for (falling back to the plain ones). */
static int fake_select(const char *symbol, int ver, cuuint64_t flags, int *any_name)
{
    int want_pt = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
    int pass, i, best = -1;

    *any_name = 0;
    for (pass = 0; pass < 2 && best < 0; pass++) {
        for (i = 0; i < FAKE_N; i++) {
            char base[128];
            int pt;
            cuda_api_base_name(fake_table[i].name, base, sizeof(base), &pt);
            if (strcmp(base, symbol) != 0)
                continue;
            *any_name = 1;
            if (fake_table[i].min_version > ver || pt != (pass == 0 ? want_pt : 0))
                continue;
            if (best < 0 || fake_table[i].min_version > fake_table[best].min_version)
                best = i;
        }
        if (!want_pt)
            break;
    }
    return best;
}

static CUresult fake_lookup_impl(const char *symbol, void **pfn, int ver, cuuint64_t flags, int *status)
{
    const char *exports = getenv("FAKE_CUDA_GPA_EXPORTS");
    int any, i;

    if (symbol == NULL || pfn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *pfn = NULL;
    i = fake_select(symbol, ver, flags, &any);
    if (i < 0) {
        if (status != NULL)
            *status = any ? 2 : 1;  /* VERSION_NOT_SUFFICIENT : SYMBOL_NOT_FOUND */
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = exports != NULL && strcmp(exports, "1") == 0 ? fake_table[i].exported : fake_table[i].twin;
    if (status != NULL)
        *status = 0;
    return CUDA_SUCCESS;
}

/* ---- test helpers ----------------------------------------------------------------------- */

FAKE_EXPORT unsigned long fake_cuda_calls(const char *name)
{
    int i;

    for (i = 0; i < FAKE_N; i++)
        if (strcmp(fake_table[i].name, name) == 0)
            return atomic_load(&fake_counts[i]);
    return (unsigned long)-1;
}

FAKE_EXPORT void *fake_cuda_new_ctx(int dev)
{
    atomic_store(&fake_inited, 1);
    if (fake_bad_dev(dev))
        return NULL;
    return fake_new(MAGIC_CTX, dev, NULL);
}

FAKE_EXPORT void fake_cuda_set_current(void *ctx)
{
    fake_set_current(fake_obj_of(ctx, MAGIC_CTX));
}

/* cuInit, plus a fresh current context on `dev`, all without counting. */
FAKE_EXPORT void *fake_cuda_setup(int dev)
{
    void *ctx = fake_cuda_new_ctx(dev);

    fake_cuda_set_current(ctx);
    return ctx;
}

FAKE_EXPORT void *fake_cuda_new_stream(void *ctx)
{
    struct fake_obj *c = fake_obj_of(ctx, MAGIC_CTX);

    return c == NULL ? NULL : fake_new(MAGIC_STREAM, c->dev, c);
}

FAKE_EXPORT void *fake_cuda_new_event(void)
{
    return fake_new(MAGIC_EVENT, -1, fake_current());
}

/* What cuGetProcAddress answers, without going through any exported symbol. */
FAKE_EXPORT void *fake_cuda_lookup(const char *symbol, int ver, unsigned long long flags)
{
    void *p = NULL;

    return fake_lookup_impl(symbol, &p, ver, flags, NULL) == CUDA_SUCCESS ? p : NULL;
}

FAKE_EXPORT const void *fake_cuda_export_table(void)
{
    return fake_export_table_sentinel;
}
