/*
 * fake_cudart.c -- a stand-in libcudart.so.12 for the shim's tests.
 *
 *   cc -shared -fPIC -O2 -Wl,-soname,libcudart.so.12 -o libcudart.so.12 fake_cudart.c -ldl -lpthread
 *
 * It reaches the driver the way the real runtime does: dlopen("libcuda.so.1"), dlsym() of
 * cuGetProcAddress_v2 on that handle, then every driver function by base name, CUDA version and
 * stream flag. Runtime calls are counted per exact name (fake_cudart_calls). The runtime keeps a
 * per-thread current device and makes its primary context current, as cudart does.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "cuda_api.h"

#define RT_EXPORT __attribute__((visibility("default")))

#define RT_INDEX(name, params, args, callargs) RT_I_##name,
enum { CUDA_RUNTIME_COVERED(RT_INDEX) RT_I_cudaGetDriverEntryPoint, RT_I_cudaGetDriverEntryPointByVersion,
       RT_I_cudaRuntimeGetVersion, RT_N };
static const char *const rt_names[RT_N] = {
#define RT_NAME(name, params, args, callargs) #name,
    CUDA_RUNTIME_COVERED(RT_NAME) "cudaGetDriverEntryPoint", "cudaGetDriverEntryPointByVersion",
    "cudaRuntimeGetVersion"
};
static atomic_ulong rt_counts[RT_N];

typedef CUresult (*gpa_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

/* The driver entry points the runtime uses, default-stream and per-thread variants. */
struct rt_driver {
    gpa_t gpa;
    CUresult (*init)(unsigned int);
    CUresult (*device_count)(int *);
    CUresult (*device_attr)(int *, int, CUdevice);
    CUresult (*retain)(CUcontext *, CUdevice);
    CUresult (*set_current)(CUcontext);
    CUresult (*synchronize)(void);
    CUresult (*mem_alloc)(CUdeviceptr *, size_t);
    CUresult (*mem_free)(CUdeviceptr);
    CUresult (*alloc_host)(void **, size_t);
    CUresult (*free_host)(void *);
    CUresult (*alloc_managed)(CUdeviceptr *, size_t, unsigned int);
    CUresult (*mem_info)(size_t *, size_t *);
    CUresult (*stream_create)(CUstream *, unsigned int);
    CUresult (*event_create)(CUevent *, unsigned int);
    CUresult (*event_sync)(CUevent);
    CUresult (*alloc_async[2])(CUdeviceptr *, size_t, CUstream);
    CUresult (*free_async[2])(CUdeviceptr, CUstream);
    CUresult (*memcpy[2])(CUdeviceptr, CUdeviceptr, size_t);
    CUresult (*memcpy_async[2])(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult (*memset[2])(CUdeviceptr, unsigned char, size_t);
    CUresult (*memset_async[2])(CUdeviceptr, unsigned char, size_t, CUstream);
    CUresult (*launch[2])(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                          unsigned int, unsigned int, CUstream, void **, void **);
    CUresult (*stream_sync[2])(CUstream);
    CUresult (*stream_query[2])(CUstream);
    CUresult (*event_record[2])(CUevent, CUstream);
};
static struct rt_driver D;
static CUresult rt_init_status = CUDA_ERROR_NOT_INITIALIZED;
static pthread_once_t rt_once = PTHREAD_ONCE_INIT;
static __thread int rt_device;
static __thread int rt_has_ctx;

static void *rt_get(const char *name, int per_thread)
{
    void *p = NULL;
    CUdriverProcAddressQueryResult st = 0;

    if (D.gpa(name, &p, FAKE_CUDART_VERSION, per_thread ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : 0, &st))
        return NULL;
    return p;
}

#define RT_GET(field, name) (D.field = (__typeof__(D.field))rt_get(name, 0))
#define RT_GET2(field, name) \
    (D.field[0] = (__typeof__(D.field[0]))rt_get(name, 0), D.field[1] = (__typeof__(D.field[1]))rt_get(name, 1))

static void rt_init(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);

    if (h == NULL || (D.gpa = (gpa_t)dlsym(h, "cuGetProcAddress_v2")) == NULL) {
        rt_init_status = 35;  /* cudaErrorInsufficientDriver */
        return;
    }
    RT_GET(init, "cuInit");
    RT_GET(device_count, "cuDeviceGetCount");
    RT_GET(device_attr, "cuDeviceGetAttribute");
    RT_GET(retain, "cuDevicePrimaryCtxRetain");
    RT_GET(set_current, "cuCtxSetCurrent");
    RT_GET(synchronize, "cuCtxSynchronize");
    RT_GET(mem_alloc, "cuMemAlloc");
    RT_GET(mem_free, "cuMemFree");
    RT_GET(alloc_host, "cuMemAllocHost");
    RT_GET(free_host, "cuMemFreeHost");
    RT_GET(alloc_managed, "cuMemAllocManaged");
    RT_GET(mem_info, "cuMemGetInfo");
    RT_GET(stream_create, "cuStreamCreate");
    RT_GET(event_create, "cuEventCreate");
    RT_GET(event_sync, "cuEventSynchronize");
    RT_GET2(alloc_async, "cuMemAllocAsync");
    RT_GET2(free_async, "cuMemFreeAsync");
    RT_GET2(memcpy, "cuMemcpy");
    RT_GET2(memcpy_async, "cuMemcpyAsync");
    RT_GET2(memset, "cuMemsetD8");
    RT_GET2(memset_async, "cuMemsetD8Async");
    RT_GET2(launch, "cuLaunchKernel");
    RT_GET2(stream_sync, "cuStreamSynchronize");
    RT_GET2(stream_query, "cuStreamQuery");
    RT_GET2(event_record, "cuEventRecord");
    rt_init_status = D.init ? D.init(0) : 35;
}

static cudaError_t rt_ready(void)
{
    pthread_once(&rt_once, rt_init);
    return rt_init_status;
}

static cudaError_t rt_set_device(int device)
{
    CUcontext ctx = NULL;
    CUresult r;

    if ((r = rt_ready()) != 0)
        return r;
    if ((r = D.retain(&ctx, device)) != 0 || (r = D.set_current(ctx)) != 0)
        return r;
    rt_device = device;
    rt_has_ctx = 1;
    return 0;
}

/* Lazy context creation on the current device, as cudart does on the first real call. */
static cudaError_t rt_ctx(void)
{
    cudaError_t r = rt_ready();

    if (r != 0 || rt_has_ctx)
        return r;
    return rt_set_device(rt_device);
}

#define RT_COUNT(name) atomic_fetch_add_explicit(&rt_counts[RT_I_##name], 1, memory_order_relaxed)
#define RT_CALL(expr) \
    do { \
        cudaError_t rt_r = rt_ctx(); \
        if (rt_r != 0) \
            return rt_r; \
        return (expr); \
    } while (0)

RT_EXPORT cudaError_t cudaGetDeviceCount(int *count)
{
    cudaError_t r;

    RT_COUNT(cudaGetDeviceCount);
    if ((r = rt_ready()) != 0)
        return r;
    return D.device_count(count);
}

RT_EXPORT cudaError_t cudaSetDevice(int device)
{
    RT_COUNT(cudaSetDevice);
    return rt_set_device(device);
}

RT_EXPORT cudaError_t cudaGetDevice(int *device)
{
    RT_COUNT(cudaGetDevice);
    if (device == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *device = rt_device;
    return 0;
}

RT_EXPORT cudaError_t cudaDeviceGetAttribute(int *value, int attr, int device)
{
    cudaError_t r;

    RT_COUNT(cudaDeviceGetAttribute);
    if ((r = rt_ready()) != 0)
        return r;
    return D.device_attr(value, attr, device);
}

RT_EXPORT cudaError_t cudaDeviceSynchronize(void)
{
    RT_COUNT(cudaDeviceSynchronize);
    RT_CALL(D.synchronize());
}

RT_EXPORT cudaError_t cudaMalloc(void **p, size_t size)
{
    CUdeviceptr d = 0;
    cudaError_t r;

    RT_COUNT(cudaMalloc);
    if ((r = rt_ctx()) != 0 || (r = D.mem_alloc(&d, size)) != 0)
        return r;
    *p = (void *)(uintptr_t)d;
    return 0;
}

RT_EXPORT cudaError_t cudaFree(void *p)
{
    RT_COUNT(cudaFree);
    RT_CALL(D.mem_free((CUdeviceptr)(uintptr_t)p));
}

RT_EXPORT cudaError_t cudaMallocHost(void **p, size_t size)
{
    RT_COUNT(cudaMallocHost);
    RT_CALL(D.alloc_host(p, size));
}

RT_EXPORT cudaError_t cudaFreeHost(void *p)
{
    RT_COUNT(cudaFreeHost);
    RT_CALL(D.free_host(p));
}

RT_EXPORT cudaError_t cudaMallocManaged(void **p, size_t size, unsigned int flags)
{
    CUdeviceptr d = 0;
    cudaError_t r;

    RT_COUNT(cudaMallocManaged);
    if ((r = rt_ctx()) != 0 || (r = D.alloc_managed(&d, size, flags)) != 0)
        return r;
    *p = (void *)(uintptr_t)d;
    return 0;
}

static cudaError_t rt_malloc_async(void **p, size_t size, cudaStream_t s, int pt)
{
    CUdeviceptr d = 0;
    cudaError_t r;

    if ((r = rt_ctx()) != 0 || (r = D.alloc_async[pt](&d, size, s)) != 0)
        return r;
    *p = (void *)(uintptr_t)d;
    return 0;
}

RT_EXPORT cudaError_t cudaMallocAsync(void **p, size_t size, cudaStream_t s)
{
    RT_COUNT(cudaMallocAsync);
    return rt_malloc_async(p, size, s, 0);
}

RT_EXPORT cudaError_t cudaMallocAsync_ptsz(void **p, size_t size, cudaStream_t s)
{
    RT_COUNT(cudaMallocAsync_ptsz);
    return rt_malloc_async(p, size, s, 1);
}

RT_EXPORT cudaError_t cudaFreeAsync(void *p, cudaStream_t s)
{
    RT_COUNT(cudaFreeAsync);
    RT_CALL(D.free_async[0]((CUdeviceptr)(uintptr_t)p, s));
}

RT_EXPORT cudaError_t cudaFreeAsync_ptsz(void *p, cudaStream_t s)
{
    RT_COUNT(cudaFreeAsync_ptsz);
    RT_CALL(D.free_async[1]((CUdeviceptr)(uintptr_t)p, s));
}

RT_EXPORT cudaError_t cudaMemGetInfo(size_t *freeBytes, size_t *totalBytes)
{
    RT_COUNT(cudaMemGetInfo);
    RT_CALL(D.mem_info(freeBytes, totalBytes));
}

RT_EXPORT cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, int kind)
{
    (void)kind;
    RT_COUNT(cudaMemcpy);
    RT_CALL(D.memcpy[0]((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n));
}

RT_EXPORT cudaError_t cudaMemcpy_ptds(void *dst, const void *src, size_t n, int kind)
{
    (void)kind;
    RT_COUNT(cudaMemcpy_ptds);
    RT_CALL(D.memcpy[1]((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n));
}

RT_EXPORT cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, int kind, cudaStream_t s)
{
    (void)kind;
    RT_COUNT(cudaMemcpyAsync);
    RT_CALL(D.memcpy_async[0]((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n, s));
}

RT_EXPORT cudaError_t cudaMemcpyAsync_ptsz(void *dst, const void *src, size_t n, int kind, cudaStream_t s)
{
    (void)kind;
    RT_COUNT(cudaMemcpyAsync_ptsz);
    RT_CALL(D.memcpy_async[1]((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n, s));
}

RT_EXPORT cudaError_t cudaMemset(void *p, int value, size_t n)
{
    RT_COUNT(cudaMemset);
    RT_CALL(D.memset[0]((CUdeviceptr)(uintptr_t)p, (unsigned char)value, n));
}

RT_EXPORT cudaError_t cudaMemset_ptds(void *p, int value, size_t n)
{
    RT_COUNT(cudaMemset_ptds);
    RT_CALL(D.memset[1]((CUdeviceptr)(uintptr_t)p, (unsigned char)value, n));
}

RT_EXPORT cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t s)
{
    RT_COUNT(cudaMemsetAsync);
    RT_CALL(D.memset_async[0]((CUdeviceptr)(uintptr_t)p, (unsigned char)value, n, s));
}

RT_EXPORT cudaError_t cudaMemsetAsync_ptsz(void *p, int value, size_t n, cudaStream_t s)
{
    RT_COUNT(cudaMemsetAsync_ptsz);
    RT_CALL(D.memset_async[1]((CUdeviceptr)(uintptr_t)p, (unsigned char)value, n, s));
}

RT_EXPORT cudaError_t cudaLaunchKernel(const void *func, dim3 grid, dim3 block, void **args, size_t shmem,
                                       cudaStream_t s)
{
    RT_COUNT(cudaLaunchKernel);
    RT_CALL(D.launch[0]((CUfunction)(uintptr_t)func, grid.x, grid.y, grid.z, block.x, block.y, block.z,
                        (unsigned int)shmem, s, args, NULL));
}

RT_EXPORT cudaError_t cudaLaunchKernel_ptsz(const void *func, dim3 grid, dim3 block, void **args, size_t shmem,
                                            cudaStream_t s)
{
    RT_COUNT(cudaLaunchKernel_ptsz);
    RT_CALL(D.launch[1]((CUfunction)(uintptr_t)func, grid.x, grid.y, grid.z, block.x, block.y, block.z,
                        (unsigned int)shmem, s, args, NULL));
}

RT_EXPORT cudaError_t cudaStreamCreate(cudaStream_t *ps)
{
    RT_COUNT(cudaStreamCreate);
    RT_CALL(D.stream_create(ps, 0));
}

RT_EXPORT cudaError_t cudaStreamCreateWithFlags(cudaStream_t *ps, unsigned int flags)
{
    RT_COUNT(cudaStreamCreateWithFlags);
    RT_CALL(D.stream_create(ps, flags));
}

RT_EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    RT_COUNT(cudaStreamSynchronize);
    RT_CALL(D.stream_sync[0](s));
}

RT_EXPORT cudaError_t cudaStreamSynchronize_ptsz(cudaStream_t s)
{
    RT_COUNT(cudaStreamSynchronize_ptsz);
    RT_CALL(D.stream_sync[1](s));
}

RT_EXPORT cudaError_t cudaStreamQuery(cudaStream_t s)
{
    RT_COUNT(cudaStreamQuery);
    RT_CALL(D.stream_query[0](s));
}

RT_EXPORT cudaError_t cudaStreamQuery_ptsz(cudaStream_t s)
{
    RT_COUNT(cudaStreamQuery_ptsz);
    RT_CALL(D.stream_query[1](s));
}

RT_EXPORT cudaError_t cudaEventCreate(cudaEvent_t *pe)
{
    RT_COUNT(cudaEventCreate);
    RT_CALL(D.event_create(pe, 0));
}

RT_EXPORT cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    RT_COUNT(cudaEventRecord);
    RT_CALL(D.event_record[0](e, s));
}

RT_EXPORT cudaError_t cudaEventRecord_ptsz(cudaEvent_t e, cudaStream_t s)
{
    RT_COUNT(cudaEventRecord_ptsz);
    RT_CALL(D.event_record[1](e, s));
}

RT_EXPORT cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    RT_COUNT(cudaEventSynchronize);
    RT_CALL(D.event_sync(e));
}

/* CUDA 12: the runtime looks the symbol up with its own version. */
RT_EXPORT cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **fn, unsigned long long flags, int *status)
{
    cudaError_t r;

    RT_COUNT(cudaGetDriverEntryPoint);
    if ((r = rt_ready()) != 0)
        return r;
    return D.gpa(symbol, fn, FAKE_CUDART_VERSION, flags, status);
}

RT_EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int ver,
                                                       unsigned long long flags, int *status)
{
    cudaError_t r;

    RT_COUNT(cudaGetDriverEntryPointByVersion);
    if ((r = rt_ready()) != 0)
        return r;
    return D.gpa(symbol, fn, (int)ver, flags, status);
}

RT_EXPORT cudaError_t cudaRuntimeGetVersion(int *v)
{
    RT_COUNT(cudaRuntimeGetVersion);
    if (v == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *v = FAKE_CUDART_VERSION;
    return 0;
}

/* Not covered by the shim: it must pass through. */
RT_EXPORT const char *cudaGetErrorString(cudaError_t error)
{
    return error == 100 ? "no CUDA-capable device is detected" : "fake runtime error";
}

RT_EXPORT unsigned long fake_cudart_calls(const char *name)
{
    int i;

    for (i = 0; i < RT_N; i++)
        if (strcmp(rt_names[i], name) == 0)
            return atomic_load(&rt_counts[i]);
    return (unsigned long)-1;
}
