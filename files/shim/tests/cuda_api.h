/*
 * cuda_api.h -- the CUDA API subset used by the shim's test fixtures (fake_cuda.c, fake_cudart.c)
 * and clients (client_symbols.c, client_cudart_like.c). Written independently of the shim's own
 * table, so that the tests check the shim against a second list (test_shim.py also compares this
 * list with the shim's exported symbols).
 *
 * Rows: X(name, min_version, fake, params, args, callargs)
 *   min_version  the CUDA version that introduced the variant (what cuGetProcAddress matches)
 *   fake         GEN: the fake driver counts the call and returns CUDA_SUCCESS;
 *                HAND: fake_cuda.c implements it (impl_<name>)
 *   callargs     a valid call from a client, on the client's scratch state `S`
 */
#ifndef CUDA_FAULT_TEST_CUDA_API_H
#define CUDA_FAULT_TEST_CUDA_API_H

#include <stddef.h>
#include <stdint.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned int CUdeviceptr_v1;
typedef unsigned long long CUdeviceptr;
typedef uint64_t cuuint64_t;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUlib_st *CUlibrary;
typedef struct CUkern_st *CUkernel;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUgreenCtx_st *CUgreenCtx;
typedef struct CUuuid_st { char bytes[16]; } CUuuid;
typedef struct CUexecAffinityParam_st CUexecAffinityParam;
typedef struct CUctxCreateParams_st CUctxCreateParams;
typedef struct CUlaunchConfig_st CUlaunchConfig;
typedef int CUjit_option;
typedef int CUlibraryOption;
typedef int CUdevice_attribute;
typedef int CUdriverProcAddressQueryResult;
typedef void (*CUhostFn)(void *userData);
typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct { unsigned int x, y, z; } dim3;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_INVALID_HANDLE 400
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_NOT_SUPPORTED 801
#define CU_GET_PROC_ADDRESS_DEFAULT 0
#define CU_GET_PROC_ADDRESS_LEGACY_STREAM 1
#define CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM 2
#define FAKE_CUDA_DEVICES 4
#define FAKE_CUDA_DRIVER_VERSION 13050   /* cudart 13 refuses older drivers (cudaErrorInsufficientDriver) */
#define FAKE_CUDART_VERSION 12080

/* Every driver entry point the shim intercepts. */
#define CUDA_DRIVER_COVERED(X) \
    X(cuInit, 2000, HAND, (unsigned int Flags), (Flags), (0)) \
    X(cuDeviceGet, 2000, HAND, (CUdevice *device, int ordinal), (device, ordinal), (&S.dev, 0)) \
    X(cuDeviceGetCount, 2000, HAND, (int *count), (count), (&S.i)) \
    X(cuDeviceGetName, 2000, HAND, (char *name, int len, CUdevice dev), (name, len, dev), (S.buf, 64, 0)) \
    X(cuDeviceGetUuid, 9020, GEN, (CUuuid *uuid, CUdevice dev), (uuid, dev), (&S.uuid, 0)) \
    X(cuDeviceGetUuid_v2, 11040, GEN, (CUuuid *uuid, CUdevice dev), (uuid, dev), (&S.uuid, 0)) \
    X(cuDeviceGetPCIBusId, 4010, HAND, (char *pciBusId, int len, CUdevice dev), (pciBusId, len, dev), (S.buf, 64, 0)) \
    X(cuDeviceGetAttribute, 2000, GEN, (int *pi, CUdevice_attribute attrib, CUdevice dev), (pi, attrib, dev), \
      (&S.i, 16, 0)) \
    X(cuDeviceTotalMem, 2000, GEN, (unsigned int *bytes, CUdevice dev), (bytes, dev), (&S.u, 0)) \
    X(cuDeviceTotalMem_v2, 3020, GEN, (size_t *bytes, CUdevice dev), (bytes, dev), (&S.sz, 0)) \
    X(cuDevicePrimaryCtxRetain, 7000, HAND, (CUcontext *pctx, CUdevice dev), (pctx, dev), (&S.ctx2, 0)) \
    X(cuDevicePrimaryCtxRelease, 7000, GEN, (CUdevice dev), (dev), (0)) \
    X(cuDevicePrimaryCtxRelease_v2, 11000, GEN, (CUdevice dev), (dev), (0)) \
    X(cuCtxCreate, 2000, HAND, (CUcontext *pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev), (&S.ctx2, 0, 0)) \
    X(cuCtxCreate_v2, 3020, HAND, (CUcontext *pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev), \
      (&S.ctx2, 0, 0)) \
    X(cuCtxCreate_v3, 11040, HAND, \
      (CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams, unsigned int flags, CUdevice dev), \
      (pctx, paramsArray, numParams, flags, dev), (&S.ctx2, NULL, 0, 0, 0)) \
    X(cuCtxCreate_v4, 12050, HAND, (CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev), \
      (pctx, params, flags, dev), (&S.ctx2, NULL, 0, 0)) \
    X(cuCtxDestroy, 2000, HAND, (CUcontext ctx), (ctx), (S.ctx)) \
    X(cuCtxDestroy_v2, 4000, HAND, (CUcontext ctx), (ctx), (S.ctx)) \
    X(cuCtxPushCurrent, 2000, HAND, (CUcontext ctx), (ctx), (S.ctx)) \
    X(cuCtxPushCurrent_v2, 4000, HAND, (CUcontext ctx), (ctx), (S.ctx)) \
    X(cuCtxPopCurrent, 2000, HAND, (CUcontext *pctx), (pctx), (&S.ctx2)) \
    X(cuCtxPopCurrent_v2, 4000, HAND, (CUcontext *pctx), (pctx), (&S.ctx2)) \
    X(cuCtxSetCurrent, 4000, HAND, (CUcontext ctx), (ctx), (S.ctx)) \
    X(cuCtxGetCurrent, 4000, HAND, (CUcontext *pctx), (pctx), (&S.ctx2)) \
    X(cuCtxGetDevice, 2000, HAND, (CUdevice *device), (device), (&S.dev)) \
    X(cuCtxGetDevice_v2, 13000, HAND, (CUdevice *device, CUcontext ctx), (device, ctx), (&S.dev, S.ctx)) \
    X(cuCtxSynchronize, 2000, GEN, (void), (), ()) \
    X(cuCtxSynchronize_v2, 13000, GEN, (CUcontext ctx), (ctx), (S.ctx)) \
    X(cuMemGetInfo, 2000, GEN, (unsigned int *freeBytes, unsigned int *totalBytes), (freeBytes, totalBytes), \
      (&S.u, &S.u2)) \
    X(cuMemGetInfo_v2, 3020, GEN, (size_t *freeBytes, size_t *totalBytes), (freeBytes, totalBytes), (&S.sz, &S.sz2)) \
    X(cuMemAlloc, 2000, HAND, (CUdeviceptr_v1 *dptr, unsigned int bytesize), (dptr, bytesize), (&S.dptr1, 64)) \
    X(cuMemAlloc_v2, 3020, HAND, (CUdeviceptr *dptr, size_t bytesize), (dptr, bytesize), (&S.dptr, 64)) \
    X(cuMemFree, 2000, GEN, (CUdeviceptr_v1 dptr), (dptr), (S.dptr1)) \
    X(cuMemFree_v2, 3020, GEN, (CUdeviceptr dptr), (dptr), (S.dptr)) \
    X(cuMemAllocHost, 2000, HAND, (void **pp, unsigned int bytesize), (pp, bytesize), (&S.host, 64)) \
    X(cuMemAllocHost_v2, 3020, HAND, (void **pp, size_t bytesize), (pp, bytesize), (&S.host, 64)) \
    X(cuMemFreeHost, 2000, GEN, (void *p), (p), (S.host)) \
    X(cuMemHostAlloc, 2020, HAND, (void **pp, size_t bytesize, unsigned int Flags), (pp, bytesize, Flags), \
      (&S.host, 64, 0)) \
    X(cuMemAllocManaged, 6000, HAND, (CUdeviceptr *dptr, size_t bytesize, unsigned int flags), (dptr, bytesize, flags), \
      (&S.dptr, 64, 1)) \
    X(cuMemAllocAsync, 11020, HAND, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream), (dptr, bytesize, hStream), \
      (&S.dptr, 64, S.stream)) \
    X(cuMemAllocAsync_ptsz, 11020, HAND, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream), \
      (dptr, bytesize, hStream), (&S.dptr, 64, S.stream)) \
    X(cuMemFreeAsync, 11020, GEN, (CUdeviceptr dptr, CUstream hStream), (dptr, hStream), (S.dptr, S.stream)) \
    X(cuMemFreeAsync_ptsz, 11020, GEN, (CUdeviceptr dptr, CUstream hStream), (dptr, hStream), (S.dptr, S.stream)) \
    X(cuMemcpy, 4000, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n), (S.dptr, S.dptr, 64)) \
    X(cuMemcpy_ptds, 7000, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n), (S.dptr, S.dptr, 64)) \
    X(cuMemcpyAsync, 4000, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s), \
      (S.dptr, S.dptr, 64, S.stream)) \
    X(cuMemcpyAsync_ptsz, 7000, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s), \
      (S.dptr, S.dptr, 64, S.stream)) \
    X(cuMemcpyHtoD, 2000, GEN, (CUdeviceptr_v1 dst, const void *src, unsigned int n), (dst, src, n), \
      (S.dptr1, S.hostmem, 64)) \
    X(cuMemcpyHtoD_v2, 3020, GEN, (CUdeviceptr dst, const void *src, size_t n), (dst, src, n), (S.dptr, S.hostmem, 64)) \
    X(cuMemcpyHtoD_v2_ptds, 7000, GEN, (CUdeviceptr dst, const void *src, size_t n), (dst, src, n), \
      (S.dptr, S.hostmem, 64)) \
    X(cuMemcpyDtoH, 2000, GEN, (void *dst, CUdeviceptr_v1 src, unsigned int n), (dst, src, n), (S.hostmem, S.dptr1, 64)) \
    X(cuMemcpyDtoH_v2, 3020, GEN, (void *dst, CUdeviceptr src, size_t n), (dst, src, n), (S.hostmem, S.dptr, 64)) \
    X(cuMemcpyDtoH_v2_ptds, 7000, GEN, (void *dst, CUdeviceptr src, size_t n), (dst, src, n), (S.hostmem, S.dptr, 64)) \
    X(cuMemcpyDtoD, 2000, GEN, (CUdeviceptr_v1 dst, CUdeviceptr_v1 src, unsigned int n), (dst, src, n), \
      (S.dptr1, S.dptr1, 64)) \
    X(cuMemcpyDtoD_v2, 3020, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n), (S.dptr, S.dptr, 64)) \
    X(cuMemcpyDtoD_v2_ptds, 7000, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n), (dst, src, n), \
      (S.dptr, S.dptr, 64)) \
    X(cuMemcpyHtoDAsync, 2000, GEN, (CUdeviceptr_v1 dst, const void *src, unsigned int n, CUstream s), (dst, src, n, s), \
      (S.dptr1, S.hostmem, 64, S.stream)) \
    X(cuMemcpyHtoDAsync_v2, 3020, GEN, (CUdeviceptr dst, const void *src, size_t n, CUstream s), (dst, src, n, s), \
      (S.dptr, S.hostmem, 64, S.stream)) \
    X(cuMemcpyHtoDAsync_v2_ptsz, 7000, GEN, (CUdeviceptr dst, const void *src, size_t n, CUstream s), \
      (dst, src, n, s), (S.dptr, S.hostmem, 64, S.stream)) \
    X(cuMemcpyDtoHAsync, 2000, GEN, (void *dst, CUdeviceptr_v1 src, unsigned int n, CUstream s), (dst, src, n, s), \
      (S.hostmem, S.dptr1, 64, S.stream)) \
    X(cuMemcpyDtoHAsync_v2, 3020, GEN, (void *dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s), \
      (S.hostmem, S.dptr, 64, S.stream)) \
    X(cuMemcpyDtoHAsync_v2_ptsz, 7000, GEN, (void *dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s), \
      (S.hostmem, S.dptr, 64, S.stream)) \
    X(cuMemcpyDtoDAsync, 3000, GEN, (CUdeviceptr_v1 dst, CUdeviceptr_v1 src, unsigned int n, CUstream s), \
      (dst, src, n, s), (S.dptr1, S.dptr1, 64, S.stream)) \
    X(cuMemcpyDtoDAsync_v2, 3020, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s), \
      (S.dptr, S.dptr, 64, S.stream)) \
    X(cuMemcpyDtoDAsync_v2_ptsz, 7000, GEN, (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), \
      (dst, src, n, s), (S.dptr, S.dptr, 64, S.stream)) \
    X(cuMemsetD8, 2000, GEN, (CUdeviceptr_v1 dst, unsigned char uc, unsigned int n), (dst, uc, n), (S.dptr1, 0, 64)) \
    X(cuMemsetD8_v2, 3020, GEN, (CUdeviceptr dst, unsigned char uc, size_t n), (dst, uc, n), (S.dptr, 0, 64)) \
    X(cuMemsetD8_v2_ptds, 7000, GEN, (CUdeviceptr dst, unsigned char uc, size_t n), (dst, uc, n), (S.dptr, 0, 64)) \
    X(cuMemsetD32, 2000, GEN, (CUdeviceptr_v1 dst, unsigned int ui, unsigned int n), (dst, ui, n), (S.dptr1, 0u, 16)) \
    X(cuMemsetD32_v2, 3020, GEN, (CUdeviceptr dst, unsigned int ui, size_t n), (dst, ui, n), (S.dptr, 0u, 16)) \
    X(cuMemsetD32_v2_ptds, 7000, GEN, (CUdeviceptr dst, unsigned int ui, size_t n), (dst, ui, n), (S.dptr, 0u, 16)) \
    X(cuMemsetD8Async, 3020, GEN, (CUdeviceptr dst, unsigned char uc, size_t n, CUstream s), (dst, uc, n, s), \
      (S.dptr, 0, 64, S.stream)) \
    X(cuMemsetD8Async_ptsz, 7000, GEN, (CUdeviceptr dst, unsigned char uc, size_t n, CUstream s), (dst, uc, n, s), \
      (S.dptr, 0, 64, S.stream)) \
    X(cuMemsetD32Async, 3020, GEN, (CUdeviceptr dst, unsigned int ui, size_t n, CUstream s), (dst, ui, n, s), \
      (S.dptr, 0u, 16, S.stream)) \
    X(cuMemsetD32Async_ptsz, 7000, GEN, (CUdeviceptr dst, unsigned int ui, size_t n, CUstream s), (dst, ui, n, s), \
      (S.dptr, 0u, 16, S.stream)) \
    X(cuLaunchKernel, 4000, GEN, \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
       unsigned int bz, unsigned int shmem, CUstream s, void **params, void **extra), \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra), (S.fn, 1, 1, 1, 32, 1, 1, 0, S.stream, NULL, NULL)) \
    X(cuLaunchKernel_ptsz, 7000, GEN, \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
       unsigned int bz, unsigned int shmem, CUstream s, void **params, void **extra), \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params, extra), (S.fn, 1, 1, 1, 32, 1, 1, 0, S.stream, NULL, NULL)) \
    X(cuLaunchKernelEx, 11060, GEN, (const CUlaunchConfig *config, CUfunction f, void **params, void **extra), \
      (config, f, params, extra), (NULL, S.fn, NULL, NULL)) \
    X(cuLaunchKernelEx_ptsz, 11060, GEN, (const CUlaunchConfig *config, CUfunction f, void **params, void **extra), \
      (config, f, params, extra), (NULL, S.fn, NULL, NULL)) \
    X(cuLaunchCooperativeKernel, 9000, GEN, \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
       unsigned int bz, unsigned int shmem, CUstream s, void **params), \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params), (S.fn, 1, 1, 1, 32, 1, 1, 0, S.stream, NULL)) \
    X(cuLaunchCooperativeKernel_ptsz, 9000, GEN, \
      (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, \
       unsigned int bz, unsigned int shmem, CUstream s, void **params), \
      (f, gx, gy, gz, bx, by, bz, shmem, s, params), (S.fn, 1, 1, 1, 32, 1, 1, 0, S.stream, NULL)) \
    X(cuLaunchHostFunc, 10000, GEN, (CUstream s, CUhostFn fn, void *data), (s, fn, data), (S.stream, NULL, NULL)) \
    X(cuLaunchHostFunc_ptsz, 10000, GEN, (CUstream s, CUhostFn fn, void *data), (s, fn, data), (S.stream, NULL, NULL)) \
    X(cuLaunchHostFunc_v2, 13010, GEN, (CUstream s, CUhostFn fn, void *data, unsigned int syncMode), \
      (s, fn, data, syncMode), (S.stream, NULL, NULL, 0)) \
    X(cuLaunchHostFunc_v2_ptsz, 13010, GEN, (CUstream s, CUhostFn fn, void *data, unsigned int syncMode), \
      (s, fn, data, syncMode), (S.stream, NULL, NULL, 0)) \
    X(cuGraphLaunch, 10000, GEN, (CUgraphExec g, CUstream s), (g, s), (S.gexec, S.stream)) \
    X(cuGraphLaunch_ptsz, 10000, GEN, (CUgraphExec g, CUstream s), (g, s), (S.gexec, S.stream)) \
    X(cuStreamCreate, 2000, HAND, (CUstream *ps, unsigned int flags), (ps, flags), (&S.stream2, 0)) \
    X(cuStreamCreateWithPriority, 5050, HAND, (CUstream *ps, unsigned int flags, int prio), (ps, flags, prio), \
      (&S.stream2, 0, 0)) \
    X(cuStreamDestroy, 2000, HAND, (CUstream s), (s), (S.stream)) \
    X(cuStreamDestroy_v2, 4000, HAND, (CUstream s), (s), (S.stream)) \
    X(cuStreamSynchronize, 2000, GEN, (CUstream s), (s), (S.stream)) \
    X(cuStreamSynchronize_ptsz, 7000, GEN, (CUstream s), (s), (S.stream)) \
    X(cuStreamQuery, 2000, GEN, (CUstream s), (s), (S.stream)) \
    X(cuStreamQuery_ptsz, 7000, GEN, (CUstream s), (s), (S.stream)) \
    X(cuStreamWaitEvent, 3020, GEN, (CUstream s, CUevent e, unsigned int flags), (s, e, flags), (S.stream, S.ev, 0)) \
    X(cuStreamWaitEvent_ptsz, 7000, GEN, (CUstream s, CUevent e, unsigned int flags), (s, e, flags), \
      (S.stream, S.ev, 0)) \
    X(cuStreamGetCtx, 9020, HAND, (CUstream s, CUcontext *pctx), (s, pctx), (S.stream, &S.ctx2)) \
    X(cuStreamGetCtx_ptsz, 9020, HAND, (CUstream s, CUcontext *pctx), (s, pctx), (S.stream, &S.ctx2)) \
    X(cuStreamGetCtx_v2, 12050, HAND, (CUstream s, CUcontext *pctx, CUgreenCtx *pgreen), (s, pctx, pgreen), \
      (S.stream, &S.ctx2, &S.green)) \
    X(cuStreamGetCtx_v2_ptsz, 12050, HAND, (CUstream s, CUcontext *pctx, CUgreenCtx *pgreen), (s, pctx, pgreen), \
      (S.stream, &S.ctx2, &S.green)) \
    X(cuEventCreate, 2000, HAND, (CUevent *pe, unsigned int flags), (pe, flags), (&S.ev2, 0)) \
    X(cuEventDestroy, 2000, HAND, (CUevent e), (e), (S.ev)) \
    X(cuEventDestroy_v2, 4000, HAND, (CUevent e), (e), (S.ev)) \
    X(cuEventRecord, 2000, GEN, (CUevent e, CUstream s), (e, s), (S.ev, S.stream)) \
    X(cuEventRecord_ptsz, 7000, GEN, (CUevent e, CUstream s), (e, s), (S.ev, S.stream)) \
    X(cuEventRecordWithFlags, 11010, GEN, (CUevent e, CUstream s, unsigned int flags), (e, s, flags), \
      (S.ev, S.stream, 0)) \
    X(cuEventRecordWithFlags_ptsz, 11010, GEN, (CUevent e, CUstream s, unsigned int flags), (e, s, flags), \
      (S.ev, S.stream, 0)) \
    X(cuEventSynchronize, 2000, GEN, (CUevent e), (e), (S.ev)) \
    X(cuEventQuery, 2000, GEN, (CUevent e), (e), (S.ev)) \
    X(cuEventElapsedTime, 2000, GEN, (float *ms, CUevent a, CUevent b), (ms, a, b), (&S.ms, S.ev, S.ev)) \
    X(cuEventElapsedTime_v2, 12080, GEN, (float *ms, CUevent a, CUevent b), (ms, a, b), (&S.ms, S.ev, S.ev)) \
    X(cuModuleLoad, 2000, GEN, (CUmodule *m, const char *fname), (m, fname), (&S.mod, "kernels.cubin")) \
    X(cuModuleLoadData, 2000, GEN, (CUmodule *m, const void *image), (m, image), (&S.mod, S.hostmem)) \
    X(cuModuleLoadDataEx, 2010, GEN, \
      (CUmodule *m, const void *image, unsigned int n, CUjit_option *opts, void **vals), (m, image, n, opts, vals), \
      (&S.mod, S.hostmem, 0, NULL, NULL)) \
    X(cuModuleLoadFatBinary, 2000, GEN, (CUmodule *m, const void *fatbin), (m, fatbin), (&S.mod, S.hostmem)) \
    X(cuModuleUnload, 2000, GEN, (CUmodule m), (m), (S.mod)) \
    X(cuModuleGetFunction, 2000, GEN, (CUfunction *f, CUmodule m, const char *name), (f, m, name), \
      (&S.fn, S.mod, "kernel")) \
    X(cuLibraryLoadData, 12000, GEN, \
      (CUlibrary *lib, const void *code, CUjit_option *jo, void **jv, unsigned int nj, CUlibraryOption *lo, \
       void **lv, unsigned int nl), (lib, code, jo, jv, nj, lo, lv, nl), \
      (&S.lib, S.hostmem, NULL, NULL, 0, NULL, NULL, 0)) \
    X(cuLibraryLoadFromFile, 12000, GEN, \
      (CUlibrary *lib, const char *file, CUjit_option *jo, void **jv, unsigned int nj, CUlibraryOption *lo, \
       void **lv, unsigned int nl), (lib, file, jo, jv, nj, lo, lv, nl), \
      (&S.lib, "kernels.cubin", NULL, NULL, 0, NULL, NULL, 0)) \
    X(cuLibraryGetKernel, 12000, GEN, (CUkernel *k, CUlibrary lib, const char *name), (k, lib, name), \
      (&S.kern, S.lib, "kernel")) \
    X(cuLibraryUnload, 12000, GEN, (CUlibrary lib), (lib), (S.lib))

/* Entry-point lookups: intercepted (they route) but never failed. */
#define CUDA_DRIVER_LOOKUP(X) \
    X(cuGetProcAddress, 11030, HAND, (const char *symbol, void **pfn, int ver, cuuint64_t flags), \
      (symbol, pfn, ver, flags), ("cuInit", &S.ptr, 12000, 0)) \
    X(cuGetProcAddress_v2, 12000, HAND, \
      (const char *symbol, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *status), \
      (symbol, pfn, ver, flags, status), ("cuInit", &S.ptr, 12000, 0, &S.i))

/* Driver functions the shim does NOT cover: they must pass through untouched, armed or not.
 * cuDriverGetVersion: the shim passes it on purpose (answered without a GPU; cudart calls it first).
 * cuEventQuery_v99: a variant newer than any CUDA the shim's table was checked against (the fake's
 * own invention, version 99000): a lookup at that version must get the driver's pointer, unwrapped,
 * since the shim cannot know its parameters. */
#define CUDA_DRIVER_EXTRA(X) \
    X(cuDriverGetVersion, 2020, HAND, (int *driverVersion), (driverVersion), (&S.i)) \
    X(cuEventQuery_v99, 99000, GEN, (CUevent e, unsigned int flags), (e, flags), (S.ev, 0)) \
    X(cuGetExportTable, 3000, HAND, (const void **table, const CUuuid *id), (table, id), (&S.table, &S.uuid)) \
    X(cuGetErrorName, 6000, HAND, (CUresult error, const char **str), (error, str), (100, &S.str)) \
    X(cuGetErrorString, 6000, HAND, (CUresult error, const char **str), (error, str), (100, &S.str)) \
    X(cuCtxGetFlags, 7000, GEN, (unsigned int *flags), (flags), (&S.u))

/* The runtime functions the shim covers: X(name, params, args, callargs). */
#define CUDA_RUNTIME_COVERED(X) \
    X(cudaGetDeviceCount, (int *count), (count), (&S.i)) \
    X(cudaSetDevice, (int device), (device), (0)) \
    X(cudaGetDevice, (int *device), (device), (&S.i)) \
    X(cudaDeviceGetAttribute, (int *value, int attr, int device), (value, attr, device), (&S.i, 16, 0)) \
    X(cudaDeviceSynchronize, (void), (), ()) \
    X(cudaMalloc, (void **p, size_t size), (p, size), (&S.ptr, 64)) \
    X(cudaFree, (void *p), (p), (S.ptr)) \
    X(cudaMallocHost, (void **p, size_t size), (p, size), (&S.ptr, 64)) \
    X(cudaFreeHost, (void *p), (p), (S.ptr)) \
    X(cudaMallocManaged, (void **p, size_t size, unsigned int flags), (p, size, flags), (&S.ptr, 64, 1)) \
    X(cudaMallocAsync, (void **p, size_t size, cudaStream_t s), (p, size, s), (&S.ptr, 64, S.stream)) \
    X(cudaMallocAsync_ptsz, (void **p, size_t size, cudaStream_t s), (p, size, s), (&S.ptr, 64, S.stream)) \
    X(cudaFreeAsync, (void *p, cudaStream_t s), (p, s), (S.ptr, S.stream)) \
    X(cudaFreeAsync_ptsz, (void *p, cudaStream_t s), (p, s), (S.ptr, S.stream)) \
    X(cudaMemGetInfo, (size_t *freeBytes, size_t *totalBytes), (freeBytes, totalBytes), (&S.sz, &S.sz2)) \
    X(cudaMemcpy, (void *dst, const void *src, size_t n, int kind), (dst, src, n, kind), \
      (S.hostmem, S.hostmem2, 64, 4)) \
    X(cudaMemcpy_ptds, (void *dst, const void *src, size_t n, int kind), (dst, src, n, kind), \
      (S.hostmem, S.hostmem2, 64, 4)) \
    X(cudaMemcpyAsync, (void *dst, const void *src, size_t n, int kind, cudaStream_t s), (dst, src, n, kind, s), \
      (S.hostmem, S.hostmem2, 64, 4, S.stream)) \
    X(cudaMemcpyAsync_ptsz, (void *dst, const void *src, size_t n, int kind, cudaStream_t s), (dst, src, n, kind, s), \
      (S.hostmem, S.hostmem2, 64, 4, S.stream)) \
    X(cudaMemset, (void *p, int value, size_t n), (p, value, n), (S.ptr, 0, 64)) \
    X(cudaMemset_ptds, (void *p, int value, size_t n), (p, value, n), (S.ptr, 0, 64)) \
    X(cudaMemsetAsync, (void *p, int value, size_t n, cudaStream_t s), (p, value, n, s), (S.ptr, 0, 64, S.stream)) \
    X(cudaMemsetAsync_ptsz, (void *p, int value, size_t n, cudaStream_t s), (p, value, n, s), \
      (S.ptr, 0, 64, S.stream)) \
    X(cudaLaunchKernel, (const void *func, dim3 grid, dim3 block, void **args, size_t shmem, cudaStream_t s), \
      (func, grid, block, args, shmem, s), ((const void *)S.hostmem, S.grid, S.block, NULL, 0, S.stream)) \
    X(cudaLaunchKernel_ptsz, (const void *func, dim3 grid, dim3 block, void **args, size_t shmem, cudaStream_t s), \
      (func, grid, block, args, shmem, s), ((const void *)S.hostmem, S.grid, S.block, NULL, 0, S.stream)) \
    X(cudaStreamCreate, (cudaStream_t *ps), (ps), (&S.stream2)) \
    X(cudaStreamCreateWithFlags, (cudaStream_t *ps, unsigned int flags), (ps, flags), (&S.stream2, 1)) \
    X(cudaStreamSynchronize, (cudaStream_t s), (s), (S.stream)) \
    X(cudaStreamSynchronize_ptsz, (cudaStream_t s), (s), (S.stream)) \
    X(cudaStreamQuery, (cudaStream_t s), (s), (S.stream)) \
    X(cudaStreamQuery_ptsz, (cudaStream_t s), (s), (S.stream)) \
    X(cudaEventCreate, (cudaEvent_t *pe), (pe), (&S.ev2)) \
    X(cudaEventRecord, (cudaEvent_t e, cudaStream_t s), (e, s), (S.ev, S.stream)) \
    X(cudaEventRecord_ptsz, (cudaEvent_t e, cudaStream_t s), (e, s), (S.ev, S.stream)) \
    X(cudaEventSynchronize, (cudaEvent_t e), (e), (S.ev))

typedef cudaError_t (*pfn_cudaGetDriverEntryPoint)(const char *symbol, void **fn, unsigned long long flags,
                                                   int *status);
typedef cudaError_t (*pfn_cudaGetDriverEntryPointByVersion)(const char *symbol, void **fn, unsigned int ver,
                                                            unsigned long long flags, int *status);

/* Fixture helpers exported by the fake driver (not CUDA names: the shim never touches them). */
typedef unsigned long (*pfn_fake_cuda_calls)(const char *name);
typedef void *(*pfn_fake_cuda_setup)(int dev);
typedef void *(*pfn_fake_cuda_new_ctx)(int dev);
typedef void (*pfn_fake_cuda_set_current)(void *ctx);
typedef void *(*pfn_fake_cuda_new_stream)(void *ctx);
typedef void *(*pfn_fake_cuda_new_event)(void);
typedef void *(*pfn_fake_cuda_lookup)(const char *symbol, int ver, unsigned long long flags);
typedef const void *(*pfn_fake_cuda_export_table)(void);
typedef unsigned long (*pfn_fake_cudart_calls)(const char *name);

/* cuGetProcAddress's base name of a variant: cuMemcpyHtoD_v2_ptds -> cuMemcpyHtoD; sets *pt for
 * _ptds/_ptsz. */
static inline void cuda_api_base_name(const char *name, char *out, size_t size, int *pt)
{
    size_t n = 0, len;
    const char *p;

    while (name[n] != '\0' && n + 1 < size) {
        out[n] = name[n];
        n++;
    }
    out[n] = '\0';
    len = n;
    *pt = 0;
    if (len > 5 && (!__builtin_strcmp(out + len - 5, "_ptds") || !__builtin_strcmp(out + len - 5, "_ptsz"))) {
        *pt = 1;
        len -= 5;
        out[len] = '\0';
    }
    p = __builtin_strrchr(out, '_');
    if (p != NULL && p[1] == 'v' && p[2] >= '0' && p[2] <= '9') {
        const char *q = p + 2;
        while (*q >= '0' && *q <= '9')
            q++;
        if (*q == '\0')
            out[p - out] = '\0';
    }
}

#endif
