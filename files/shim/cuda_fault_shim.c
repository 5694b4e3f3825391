/*
 * cuda_fault_shim.c -- LD_PRELOAD library that makes CUDA calls fail the way they fail after a
 * real GPU fault (an NVIDIA XID), so that fault-tolerance pipelines can be tested on healthy GPUs.
 *
 * Build (the collection does exactly this, see plugins/module_utils/shim_source.py):
 *   cc -std=gnu11 -shared -fPIC -O2 -Wall -Wextra -o libcudafault.so cuda_fault_shim.c -I <dir> -ldl -lpthread
 * where <dir> holds cuda_fault_shim.c and the generated xid_table.h (tools/gen-shim-header).
 * No CUDA header is needed: the few CUDA types used here are declared below.
 *
 * How calls are caught. A plain LD_PRELOAD of cuMemAlloc is not enough: the CUDA runtime (and
 * PyTorch) dlopen("libcuda.so.1"), look up cuGetProcAddress_v2 with dlsym() on that handle and
 * fetch every driver function through it. So the shim covers four routes, all driven by one table
 * (CF_DRIVER_API / CF_RUNTIME_API below):
 *   1. exported driver symbols (plain, _v2.._v4, _ptds/_ptsz), found first by the dynamic linker;
 *   2. dlsym(handle, name) on a real handle: the shim exports dlsym, asks the real one and hands
 *      back its wrapper for the names it covers (exact names only, so cudnnCreate is never caught);
 *   3. cuGetProcAddress / cuGetProcAddress_v2, cudaGetDriverEntryPoint[ByVersion]: the real lookup
 *      runs first, then the returned pointer is swapped for the matching wrapper;
 *   4. CUDA runtime symbols of a dynamically linked libcudart (cudaMalloc, cudaLaunchKernel, ...),
 *      which return the same numbers (cudaError_t equals CUresult for the codes used here).
 * cuGetExportTable and every other name pass through untouched.
 *
 * Every wrapper has the same shape:
 *     if (armed-check fails) return error; return real(args);
 * The disarmed fast path is one acquire load of cf_gate and a predictable branch (no syscall, no
 * lock, no getenv, no file I/O), then the call through the real pointer.
 *
 * State. The environment arms a process from its start (CUDA_FAULT_INJECTION_ENABLED=1,
 * CUDA_XID_TYPE=<xid>); a control file (shim_control.py's "v1 armed=..." line) arms and disarms it
 * at run time. A background thread watches the file's directory with inotify and publishes the
 * parsed state through atomics; intercepted calls never read the file. Errors are sticky per
 * context like the real driver's: once an armed call failed in a context, every later call in that
 * context fails with the same error until the process ends, even after disarming.
 *
 * The library never writes to stdout; CUDA_FAULT_DEBUG=1 prints diagnostics on stderr.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "xid_table.h"

/* ---------------------------------------------------------------------------------------------
 * CUDA types: declared here so that the shim builds without the CUDA toolkit. Only sizes and
 * calling conventions matter, since the shim forwards arguments without looking inside them.
 * ------------------------------------------------------------------------------------------- */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned int CUdeviceptr_v1;       /* the 32-bit device pointer of the unversioned APIs */
typedef unsigned long long CUdeviceptr;    /* CUdeviceptr_v2 on 64-bit platforms */
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
typedef struct CUuuid_st CUuuid;
typedef struct CUexecAffinityParam_st CUexecAffinityParam;
typedef struct CUctxCreateParams_st CUctxCreateParams;
typedef struct CUlaunchConfig_st CUlaunchConfig;
typedef int CUjit_option;                  /* enums are int-sized */
typedef int CUlibraryOption;
typedef int CUdevice_attribute;
typedef int CUdriverProcAddressQueryResult;
typedef void (*CUhostFn)(void *userData);

typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;  /* runtime streams and events are driver handles */
typedef struct CUevent_st *cudaEvent_t;
typedef struct { unsigned int x, y, z; } cf_dim3;  /* layout of the runtime's dim3 */

#define CF_CUDA_ERROR_STUB_LIBRARY 34      /* no libcuda.so.1 / libcudart to forward to */
#define CF_CUDA_ERROR_NOT_FOUND 500        /* the driver lacks this entry point */
#define CF_CUDA_ERROR_UNKNOWN 999          /* CUDA_XID_TYPE names an XID the catalog lacks */
#define CF_GPA_PER_THREAD 2u               /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */
#define CF_DEFAULT_CONTROL "/run/gpu-fault-injection/shim/control"  /* shim_control.py */
#define CF_DEFAULT_XID 79                  /* CUDA_FAULT_INJECTION_ENABLED=1 without CUDA_XID_TYPE */
#define CF_DEFAULT_RUNTIME_VERSION 12000

#define CF_EXPORT __attribute__((visibility("default")))
/* dlsym() can be called before the host's sanitizer runtime is ready (ASan and TSan resolve their
 * interceptors with dlsym while they initialise), so the hook and what it calls first are never
 * instrumented. No effect on a normal build. */
#define CF_NO_SANITIZE __attribute__((no_sanitize_address, no_sanitize_thread))
#define CF_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* How a call names the GPU it runs on (used for gpu= targeting and sticky contexts). */
enum {
    CF_T_NONE,    /* no device, no context: init, version, device count */
    CF_T_DEV,     /* an explicit device ordinal argument */
    CF_T_CTX,     /* an explicit context argument */
    CF_T_CTX_CUR, /* a context argument where NULL means the current context (CUDA 13's _v2 calls) */
    CF_T_CUR,     /* the calling thread's current context */
    CF_T_STREAM   /* a stream argument: its context, else the current one */
};

/* ---------------------------------------------------------------------------------------------
 * The table. X(name, min_version, target, hint, params, args):
 *   name         the driver's exported symbol of this exact variant
 *   min_version  the CUDA version that introduced it, as cuGetProcAddress takes it
 *                (cudaTypedefs.h's PFN_<base name>_v<version>); _ptds/_ptsz are the per-thread
 *                default stream variants (flag CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM).
 *   target/hint  how to find the call's device or context (hint: the argument naming it).
 *   params       exactly NVIDIA's parameter list of that variant.
 * For every function in the table, every variant that NVIDIA's cudaTypedefs.h declares up to
 * CF_API_VERSION is in the table, with its parameters as declared there, or the function is in
 * CF_DRIVER_PASSTHROUGH (tests/unit/shim/test_nvidia_runtime.py compiles that comparison against
 * the headers of the pinned runtime wheels). A lookup above CF_API_VERSION is wrapped only when
 * the driver answers it with the same entry point as at CF_API_VERSION (cf_route).
 * ------------------------------------------------------------------------------------------- */
#define CF_API_VERSION 13050   /* CUDA 13.5: the nvidia-cuda-runtime wheel pinned in requirements.txt */

/* Driver functions the shim hands out untouched on purpose, all their variants, each with its
 * reason: a real driver answers them from host-side state even when a GPU is broken, so failing
 * them would show the application an error the XID does not cause. */
#define CF_DRIVER_PASSTHROUGH(X) \
    X(cuDriverGetVersion, "answered by libcuda itself, without a GPU or the kernel module; cudart calls it " \
      "before cuInit and, if it fails, reports cudaErrorInsufficientDriver (35) on every call instead of " \
      "the XID's error")

#define CF_DRIVER_API(X) \
    /* initialisation and enumeration */ \
    X(cuInit, 2000, CF_T_NONE, 0, (unsigned int Flags), (Flags)) \
    X(cuDeviceGet, 2000, CF_T_DEV, ordinal, (CUdevice *device, int ordinal), (device, ordinal)) \
    X(cuDeviceGetCount, 2000, CF_T_NONE, 0, (int *count), (count)) \
    X(cuDeviceGetName, 2000, CF_T_DEV, dev, (char *name, int len, CUdevice dev), (name, len, dev)) \
    X(cuDeviceGetUuid, 9020, CF_T_DEV, dev, (CUuuid *uuid, CUdevice dev), (uuid, dev)) \
    X(cuDeviceGetUuid_v2, 11040, CF_T_DEV, dev, (CUuuid *uuid, CUdevice dev), (uuid, dev)) \
    X(cuDeviceGetPCIBusId, 4010, CF_T_DEV, dev, (char *pciBusId, int len, CUdevice dev), (pciBusId, len, dev)) \
    X(cuDeviceGetAttribute, 2000, CF_T_DEV, dev, (int *pi, CUdevice_attribute attrib, CUdevice dev), \
      (pi, attrib, dev)) \
    X(cuDeviceTotalMem, 2000, CF_T_DEV, dev, (unsigned int *bytes, CUdevice dev), (bytes, dev)) \
    X(cuDeviceTotalMem_v2, 3020, CF_T_DEV, dev, (size_t *bytes, CUdevice dev), (bytes, dev)) \
    /* contexts */ \
    X(cuDevicePrimaryCtxRetain, 7000, CF_T_DEV, dev, (CUcontext *pctx, CUdevice dev), (pctx, dev)) \
    X(cuDevicePrimaryCtxRelease, 7000, CF_T_DEV, dev, (CUdevice dev), (dev)) \
    X(cuDevicePrimaryCtxRelease_v2, 11000, CF_T_DEV, dev, (CUdevice dev), (dev)) \
    X(cuCtxCreate, 2000, CF_T_DEV, dev, (CUcontext *pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev)) \
    X(cuCtxCreate_v2, 3020, CF_T_DEV, dev, (CUcontext *pctx, unsigned int flags, CUdevice dev), (pctx, flags, dev)) \
    X(cuCtxCreate_v3, 11040, CF_T_DEV, dev, \
      (CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams, unsigned int flags, CUdevice dev), \
      (pctx, paramsArray, numParams, flags, dev)) \
    X(cuCtxCreate_v4, 12050, CF_T_DEV, dev, \
      (CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags, CUdevice dev), \
      (pctx, ctxCreateParams, flags, dev)) \
    X(cuCtxDestroy, 2000, CF_T_CTX, ctx, (CUcontext ctx), (ctx)) \
    X(cuCtxDestroy_v2, 4000, CF_T_CTX, ctx, (CUcontext ctx), (ctx)) \
    X(cuCtxPushCurrent, 2000, CF_T_CTX, ctx, (CUcontext ctx), (ctx)) \
    X(cuCtxPushCurrent_v2, 4000, CF_T_CTX, ctx, (CUcontext ctx), (ctx)) \
    X(cuCtxPopCurrent, 2000, CF_T_CUR, 0, (CUcontext *pctx), (pctx)) \
    X(cuCtxPopCurrent_v2, 4000, CF_T_CUR, 0, (CUcontext *pctx), (pctx)) \
    X(cuCtxSetCurrent, 4000, CF_T_CTX, ctx, (CUcontext ctx), (ctx)) \
    X(cuCtxGetCurrent, 4000, CF_T_CUR, 0, (CUcontext *pctx), (pctx)) \
    X(cuCtxGetDevice, 2000, CF_T_CUR, 0, (CUdevice *device), (device)) \
    X(cuCtxGetDevice_v2, 13000, CF_T_CTX_CUR, ctx, (CUdevice *device, CUcontext ctx), (device, ctx)) \
    X(cuCtxSynchronize, 2000, CF_T_CUR, 0, (void), ()) \
    X(cuCtxSynchronize_v2, 13000, CF_T_CTX_CUR, ctx, (CUcontext ctx), (ctx)) \
    /* memory */ \
    X(cuMemGetInfo, 2000, CF_T_CUR, 0, (unsigned int *freeBytes, unsigned int *totalBytes), (freeBytes, totalBytes)) \
    X(cuMemGetInfo_v2, 3020, CF_T_CUR, 0, (size_t *freeBytes, size_t *totalBytes), (freeBytes, totalBytes)) \
    X(cuMemAlloc, 2000, CF_T_CUR, 0, (CUdeviceptr_v1 *dptr, unsigned int bytesize), (dptr, bytesize)) \
    X(cuMemAlloc_v2, 3020, CF_T_CUR, 0, (CUdeviceptr *dptr, size_t bytesize), (dptr, bytesize)) \
    X(cuMemFree, 2000, CF_T_CUR, 0, (CUdeviceptr_v1 dptr), (dptr)) \
    X(cuMemFree_v2, 3020, CF_T_CUR, 0, (CUdeviceptr dptr), (dptr)) \
    X(cuMemAllocHost, 2000, CF_T_CUR, 0, (void **pp, unsigned int bytesize), (pp, bytesize)) \
    X(cuMemAllocHost_v2, 3020, CF_T_CUR, 0, (void **pp, size_t bytesize), (pp, bytesize)) \
    X(cuMemFreeHost, 2000, CF_T_CUR, 0, (void *p), (p)) \
    X(cuMemHostAlloc, 2020, CF_T_CUR, 0, (void **pp, size_t bytesize, unsigned int Flags), (pp, bytesize, Flags)) \
    X(cuMemAllocManaged, 6000, CF_T_CUR, 0, (CUdeviceptr *dptr, size_t bytesize, unsigned int flags), \
      (dptr, bytesize, flags)) \
    X(cuMemAllocAsync, 11020, CF_T_STREAM, hStream, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream), \
      (dptr, bytesize, hStream)) \
    X(cuMemAllocAsync_ptsz, 11020, CF_T_STREAM, hStream, (CUdeviceptr *dptr, size_t bytesize, CUstream hStream), \
      (dptr, bytesize, hStream)) \
    X(cuMemFreeAsync, 11020, CF_T_STREAM, hStream, (CUdeviceptr dptr, CUstream hStream), (dptr, hStream)) \
    X(cuMemFreeAsync_ptsz, 11020, CF_T_STREAM, hStream, (CUdeviceptr dptr, CUstream hStream), (dptr, hStream)) \
    /* copies and memset */ \
    X(cuMemcpy, 4000, CF_T_CUR, 0, (CUdeviceptr dst, CUdeviceptr src, size_t ByteCount), (dst, src, ByteCount)) \
    X(cuMemcpy_ptds, 7000, CF_T_CUR, 0, (CUdeviceptr dst, CUdeviceptr src, size_t ByteCount), (dst, src, ByteCount)) \
    X(cuMemcpyAsync, 4000, CF_T_STREAM, hStream, \
      (CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream), (dst, src, ByteCount, hStream)) \
    X(cuMemcpyAsync_ptsz, 7000, CF_T_STREAM, hStream, \
      (CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream), (dst, src, ByteCount, hStream)) \
    X(cuMemcpyHtoD, 2000, CF_T_CUR, 0, (CUdeviceptr_v1 dstDevice, const void *srcHost, unsigned int ByteCount), \
      (dstDevice, srcHost, ByteCount)) \
    X(cuMemcpyHtoD_v2, 3020, CF_T_CUR, 0, (CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount), \
      (dstDevice, srcHost, ByteCount)) \
    X(cuMemcpyHtoD_v2_ptds, 7000, CF_T_CUR, 0, (CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount), \
      (dstDevice, srcHost, ByteCount)) \
    X(cuMemcpyDtoH, 2000, CF_T_CUR, 0, (void *dstHost, CUdeviceptr_v1 srcDevice, unsigned int ByteCount), \
      (dstHost, srcDevice, ByteCount)) \
    X(cuMemcpyDtoH_v2, 3020, CF_T_CUR, 0, (void *dstHost, CUdeviceptr srcDevice, size_t ByteCount), \
      (dstHost, srcDevice, ByteCount)) \
    X(cuMemcpyDtoH_v2_ptds, 7000, CF_T_CUR, 0, (void *dstHost, CUdeviceptr srcDevice, size_t ByteCount), \
      (dstHost, srcDevice, ByteCount)) \
    X(cuMemcpyDtoD, 2000, CF_T_CUR, 0, (CUdeviceptr_v1 dstDevice, CUdeviceptr_v1 srcDevice, unsigned int ByteCount), \
      (dstDevice, srcDevice, ByteCount)) \
    X(cuMemcpyDtoD_v2, 3020, CF_T_CUR, 0, (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount), \
      (dstDevice, srcDevice, ByteCount)) \
    X(cuMemcpyDtoD_v2_ptds, 7000, CF_T_CUR, 0, (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount), \
      (dstDevice, srcDevice, ByteCount)) \
    X(cuMemcpyHtoDAsync, 2000, CF_T_STREAM, hStream, \
      (CUdeviceptr_v1 dstDevice, const void *srcHost, unsigned int ByteCount, CUstream hStream), \
      (dstDevice, srcHost, ByteCount, hStream)) \
    X(cuMemcpyHtoDAsync_v2, 3020, CF_T_STREAM, hStream, \
      (CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream), \
      (dstDevice, srcHost, ByteCount, hStream)) \
    X(cuMemcpyHtoDAsync_v2_ptsz, 7000, CF_T_STREAM, hStream, \
      (CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream), \
      (dstDevice, srcHost, ByteCount, hStream)) \
    X(cuMemcpyDtoHAsync, 2000, CF_T_STREAM, hStream, \
      (void *dstHost, CUdeviceptr_v1 srcDevice, unsigned int ByteCount, CUstream hStream), \
      (dstHost, srcDevice, ByteCount, hStream)) \
    X(cuMemcpyDtoHAsync_v2, 3020, CF_T_STREAM, hStream, \
      (void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream), \
      (dstHost, srcDevice, ByteCount, hStream)) \
    X(cuMemcpyDtoHAsync_v2_ptsz, 7000, CF_T_STREAM, hStream, \
      (void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream), \
      (dstHost, srcDevice, ByteCount, hStream)) \
    X(cuMemcpyDtoDAsync, 3000, CF_T_STREAM, hStream, \
      (CUdeviceptr_v1 dstDevice, CUdeviceptr_v1 srcDevice, unsigned int ByteCount, CUstream hStream), \
      (dstDevice, srcDevice, ByteCount, hStream)) \
    X(cuMemcpyDtoDAsync_v2, 3020, CF_T_STREAM, hStream, \
      (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream), \
      (dstDevice, srcDevice, ByteCount, hStream)) \
    X(cuMemcpyDtoDAsync_v2_ptsz, 7000, CF_T_STREAM, hStream, \
      (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream), \
      (dstDevice, srcDevice, ByteCount, hStream)) \
    X(cuMemsetD8, 2000, CF_T_CUR, 0, (CUdeviceptr_v1 dstDevice, unsigned char uc, unsigned int N), (dstDevice, uc, N)) \
    X(cuMemsetD8_v2, 3020, CF_T_CUR, 0, (CUdeviceptr dstDevice, unsigned char uc, size_t N), (dstDevice, uc, N)) \
    X(cuMemsetD8_v2_ptds, 7000, CF_T_CUR, 0, (CUdeviceptr dstDevice, unsigned char uc, size_t N), (dstDevice, uc, N)) \
    X(cuMemsetD32, 2000, CF_T_CUR, 0, (CUdeviceptr_v1 dstDevice, unsigned int ui, unsigned int N), (dstDevice, ui, N)) \
    X(cuMemsetD32_v2, 3020, CF_T_CUR, 0, (CUdeviceptr dstDevice, unsigned int ui, size_t N), (dstDevice, ui, N)) \
    X(cuMemsetD32_v2_ptds, 7000, CF_T_CUR, 0, (CUdeviceptr dstDevice, unsigned int ui, size_t N), (dstDevice, ui, N)) \
    X(cuMemsetD8Async, 3020, CF_T_STREAM, hStream, (CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream), \
      (dstDevice, uc, N, hStream)) \
    X(cuMemsetD8Async_ptsz, 7000, CF_T_STREAM, hStream, \
      (CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream), (dstDevice, uc, N, hStream)) \
    X(cuMemsetD32Async, 3020, CF_T_STREAM, hStream, \
      (CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream), (dstDevice, ui, N, hStream)) \
    X(cuMemsetD32Async_ptsz, 7000, CF_T_STREAM, hStream, \
      (CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream), (dstDevice, ui, N, hStream)) \
    /* launch */ \
    X(cuLaunchKernel, 4000, CF_T_STREAM, hStream, \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ, unsigned int blockDimX, \
       unsigned int blockDimY, unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream, \
       void **kernelParams, void **extra), \
      (f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams, extra)) \
    X(cuLaunchKernel_ptsz, 7000, CF_T_STREAM, hStream, \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ, unsigned int blockDimX, \
       unsigned int blockDimY, unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream, \
       void **kernelParams, void **extra), \
      (f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams, extra)) \
    /* cuLaunchKernelEx keeps its stream inside the config struct; the current context stands in. */ \
    X(cuLaunchKernelEx, 11060, CF_T_CUR, 0, (const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra), \
      (config, f, kernelParams, extra)) \
    X(cuLaunchKernelEx_ptsz, 11060, CF_T_CUR, 0, \
      (const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra), (config, f, kernelParams, extra)) \
    X(cuLaunchCooperativeKernel, 9000, CF_T_STREAM, hStream, \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ, unsigned int blockDimX, \
       unsigned int blockDimY, unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream, \
       void **kernelParams), \
      (f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams)) \
    X(cuLaunchCooperativeKernel_ptsz, 9000, CF_T_STREAM, hStream, \
      (CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ, unsigned int blockDimX, \
       unsigned int blockDimY, unsigned int blockDimZ, unsigned int sharedMemBytes, CUstream hStream, \
       void **kernelParams), \
      (f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams)) \
    X(cuLaunchHostFunc, 10000, CF_T_STREAM, hStream, (CUstream hStream, CUhostFn fn, void *userData), \
      (hStream, fn, userData)) \
    X(cuLaunchHostFunc_ptsz, 10000, CF_T_STREAM, hStream, (CUstream hStream, CUhostFn fn, void *userData), \
      (hStream, fn, userData)) \
    X(cuLaunchHostFunc_v2, 13010, CF_T_STREAM, hStream, \
      (CUstream hStream, CUhostFn fn, void *userData, unsigned int syncMode), (hStream, fn, userData, syncMode)) \
    X(cuLaunchHostFunc_v2_ptsz, 13010, CF_T_STREAM, hStream, \
      (CUstream hStream, CUhostFn fn, void *userData, unsigned int syncMode), (hStream, fn, userData, syncMode)) \
    X(cuGraphLaunch, 10000, CF_T_STREAM, hStream, (CUgraphExec hGraphExec, CUstream hStream), (hGraphExec, hStream)) \
    X(cuGraphLaunch_ptsz, 10000, CF_T_STREAM, hStream, (CUgraphExec hGraphExec, CUstream hStream), \
      (hGraphExec, hStream)) \
    /* streams and events */ \
    X(cuStreamCreate, 2000, CF_T_CUR, 0, (CUstream *phStream, unsigned int Flags), (phStream, Flags)) \
    X(cuStreamCreateWithPriority, 5050, CF_T_CUR, 0, (CUstream *phStream, unsigned int flags, int priority), \
      (phStream, flags, priority)) \
    X(cuStreamDestroy, 2000, CF_T_STREAM, hStream, (CUstream hStream), (hStream)) \
    X(cuStreamDestroy_v2, 4000, CF_T_STREAM, hStream, (CUstream hStream), (hStream)) \
    X(cuStreamSynchronize, 2000, CF_T_STREAM, hStream, (CUstream hStream), (hStream)) \
    X(cuStreamSynchronize_ptsz, 7000, CF_T_STREAM, hStream, (CUstream hStream), (hStream)) \
    X(cuStreamQuery, 2000, CF_T_STREAM, hStream, (CUstream hStream), (hStream)) \
    X(cuStreamQuery_ptsz, 7000, CF_T_STREAM, hStream, (CUstream hStream), (hStream)) \
    X(cuStreamWaitEvent, 3020, CF_T_STREAM, hStream, (CUstream hStream, CUevent hEvent, unsigned int Flags), \
      (hStream, hEvent, Flags)) \
    X(cuStreamWaitEvent_ptsz, 7000, CF_T_STREAM, hStream, (CUstream hStream, CUevent hEvent, unsigned int Flags), \
      (hStream, hEvent, Flags)) \
    X(cuStreamGetCtx, 9020, CF_T_STREAM, hStream, (CUstream hStream, CUcontext *pctx), (hStream, pctx)) \
    X(cuStreamGetCtx_ptsz, 9020, CF_T_STREAM, hStream, (CUstream hStream, CUcontext *pctx), (hStream, pctx)) \
    X(cuStreamGetCtx_v2, 12050, CF_T_STREAM, hStream, (CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx), \
      (hStream, pCtx, pGreenCtx)) \
    X(cuStreamGetCtx_v2_ptsz, 12050, CF_T_STREAM, hStream, \
      (CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx), (hStream, pCtx, pGreenCtx)) \
    X(cuEventCreate, 2000, CF_T_CUR, 0, (CUevent *phEvent, unsigned int Flags), (phEvent, Flags)) \
    X(cuEventDestroy, 2000, CF_T_CUR, 0, (CUevent hEvent), (hEvent)) \
    X(cuEventDestroy_v2, 4000, CF_T_CUR, 0, (CUevent hEvent), (hEvent)) \
    X(cuEventRecord, 2000, CF_T_STREAM, hStream, (CUevent hEvent, CUstream hStream), (hEvent, hStream)) \
    X(cuEventRecord_ptsz, 7000, CF_T_STREAM, hStream, (CUevent hEvent, CUstream hStream), (hEvent, hStream)) \
    X(cuEventRecordWithFlags, 11010, CF_T_STREAM, hStream, (CUevent hEvent, CUstream hStream, unsigned int flags), \
      (hEvent, hStream, flags)) \
    X(cuEventRecordWithFlags_ptsz, 11010, CF_T_STREAM, hStream, (CUevent hEvent, CUstream hStream, unsigned int flags), \
      (hEvent, hStream, flags)) \
    X(cuEventSynchronize, 2000, CF_T_CUR, 0, (CUevent hEvent), (hEvent)) \
    X(cuEventQuery, 2000, CF_T_CUR, 0, (CUevent hEvent), (hEvent)) \
    X(cuEventElapsedTime, 2000, CF_T_CUR, 0, (float *pMilliseconds, CUevent hStart, CUevent hEnd), \
      (pMilliseconds, hStart, hEnd)) \
    X(cuEventElapsedTime_v2, 12080, CF_T_CUR, 0, (float *pMilliseconds, CUevent hStart, CUevent hEnd), \
      (pMilliseconds, hStart, hEnd)) \
    /* modules and libraries */ \
    X(cuModuleLoad, 2000, CF_T_CUR, 0, (CUmodule *module, const char *fname), (module, fname)) \
    X(cuModuleLoadData, 2000, CF_T_CUR, 0, (CUmodule *module, const void *image), (module, image)) \
    X(cuModuleLoadDataEx, 2010, CF_T_CUR, 0, \
      (CUmodule *module, const void *image, unsigned int numOptions, CUjit_option *options, void **optionValues), \
      (module, image, numOptions, options, optionValues)) \
    X(cuModuleLoadFatBinary, 2000, CF_T_CUR, 0, (CUmodule *module, const void *fatCubin), (module, fatCubin)) \
    X(cuModuleUnload, 2000, CF_T_CUR, 0, (CUmodule hmod), (hmod)) \
    X(cuModuleGetFunction, 2000, CF_T_CUR, 0, (CUfunction *hfunc, CUmodule hmod, const char *name), (hfunc, hmod, name)) \
    X(cuLibraryLoadData, 12000, CF_T_CUR, 0, \
      (CUlibrary *library, const void *code, CUjit_option *jitOptions, void **jitOptionsValues, \
       unsigned int numJitOptions, CUlibraryOption *libraryOptions, void **libraryOptionValues, \
       unsigned int numLibraryOptions), \
      (library, code, jitOptions, jitOptionsValues, numJitOptions, libraryOptions, libraryOptionValues, \
       numLibraryOptions)) \
    X(cuLibraryLoadFromFile, 12000, CF_T_CUR, 0, \
      (CUlibrary *library, const char *fileName, CUjit_option *jitOptions, void **jitOptionsValues, \
       unsigned int numJitOptions, CUlibraryOption *libraryOptions, void **libraryOptionValues, \
       unsigned int numLibraryOptions), \
      (library, fileName, jitOptions, jitOptionsValues, numJitOptions, libraryOptions, libraryOptionValues, \
       numLibraryOptions)) \
    X(cuLibraryGetKernel, 12000, CF_T_CUR, 0, (CUkernel *pKernel, CUlibrary library, const char *name), \
      (pKernel, library, name)) \
    X(cuLibraryUnload, 12000, CF_T_CUR, 0, (CUlibrary library), (library))

/* The CUDA runtime API of a dynamically linked libcudart. X(name, target, hint, params, args). */
#define CF_RUNTIME_API(X) \
    X(cudaGetDeviceCount, CF_T_NONE, 0, (int *count), (count)) \
    X(cudaSetDevice, CF_T_DEV, device, (int device), (device)) \
    X(cudaGetDevice, CF_T_CUR, 0, (int *device), (device)) \
    X(cudaDeviceGetAttribute, CF_T_DEV, device, (int *value, int attr, int device), (value, attr, device)) \
    X(cudaDeviceSynchronize, CF_T_CUR, 0, (void), ()) \
    X(cudaMalloc, CF_T_CUR, 0, (void **devPtr, size_t size), (devPtr, size)) \
    X(cudaFree, CF_T_CUR, 0, (void *devPtr), (devPtr)) \
    X(cudaMallocHost, CF_T_CUR, 0, (void **ptr, size_t size), (ptr, size)) \
    X(cudaFreeHost, CF_T_CUR, 0, (void *ptr), (ptr)) \
    X(cudaMallocManaged, CF_T_CUR, 0, (void **devPtr, size_t size, unsigned int flags), (devPtr, size, flags)) \
    X(cudaMallocAsync, CF_T_STREAM, hStream, (void **devPtr, size_t size, cudaStream_t hStream), (devPtr, size, hStream)) \
    X(cudaMallocAsync_ptsz, CF_T_STREAM, hStream, (void **devPtr, size_t size, cudaStream_t hStream), \
      (devPtr, size, hStream)) \
    X(cudaFreeAsync, CF_T_STREAM, hStream, (void *devPtr, cudaStream_t hStream), (devPtr, hStream)) \
    X(cudaFreeAsync_ptsz, CF_T_STREAM, hStream, (void *devPtr, cudaStream_t hStream), (devPtr, hStream)) \
    X(cudaMemGetInfo, CF_T_CUR, 0, (size_t *freeBytes, size_t *totalBytes), (freeBytes, totalBytes)) \
    X(cudaMemcpy, CF_T_CUR, 0, (void *dst, const void *src, size_t count, int kind), (dst, src, count, kind)) \
    X(cudaMemcpy_ptds, CF_T_CUR, 0, (void *dst, const void *src, size_t count, int kind), (dst, src, count, kind)) \
    X(cudaMemcpyAsync, CF_T_STREAM, stream, (void *dst, const void *src, size_t count, int kind, cudaStream_t stream), \
      (dst, src, count, kind, stream)) \
    X(cudaMemcpyAsync_ptsz, CF_T_STREAM, stream, \
      (void *dst, const void *src, size_t count, int kind, cudaStream_t stream), (dst, src, count, kind, stream)) \
    X(cudaMemset, CF_T_CUR, 0, (void *devPtr, int value, size_t count), (devPtr, value, count)) \
    X(cudaMemset_ptds, CF_T_CUR, 0, (void *devPtr, int value, size_t count), (devPtr, value, count)) \
    X(cudaMemsetAsync, CF_T_STREAM, stream, (void *devPtr, int value, size_t count, cudaStream_t stream), \
      (devPtr, value, count, stream)) \
    X(cudaMemsetAsync_ptsz, CF_T_STREAM, stream, (void *devPtr, int value, size_t count, cudaStream_t stream), \
      (devPtr, value, count, stream)) \
    X(cudaLaunchKernel, CF_T_STREAM, stream, \
      (const void *func, cf_dim3 gridDim, cf_dim3 blockDim, void **kernelArgs, size_t sharedMem, cudaStream_t stream), \
      (func, gridDim, blockDim, kernelArgs, sharedMem, stream)) \
    X(cudaLaunchKernel_ptsz, CF_T_STREAM, stream, \
      (const void *func, cf_dim3 gridDim, cf_dim3 blockDim, void **kernelArgs, size_t sharedMem, cudaStream_t stream), \
      (func, gridDim, blockDim, kernelArgs, sharedMem, stream)) \
    X(cudaStreamCreate, CF_T_CUR, 0, (cudaStream_t *pStream), (pStream)) \
    X(cudaStreamCreateWithFlags, CF_T_CUR, 0, (cudaStream_t *pStream, unsigned int flags), (pStream, flags)) \
    X(cudaStreamSynchronize, CF_T_STREAM, stream, (cudaStream_t stream), (stream)) \
    X(cudaStreamSynchronize_ptsz, CF_T_STREAM, stream, (cudaStream_t stream), (stream)) \
    X(cudaStreamQuery, CF_T_STREAM, stream, (cudaStream_t stream), (stream)) \
    X(cudaStreamQuery_ptsz, CF_T_STREAM, stream, (cudaStream_t stream), (stream)) \
    X(cudaEventCreate, CF_T_CUR, 0, (cudaEvent_t *event), (event)) \
    X(cudaEventRecord, CF_T_STREAM, stream, (cudaEvent_t event, cudaStream_t stream), (event, stream)) \
    X(cudaEventRecord_ptsz, CF_T_STREAM, stream, (cudaEvent_t event, cudaStream_t stream), (event, stream)) \
    X(cudaEventSynchronize, CF_T_CUR, 0, (cudaEvent_t event), (event))

/* Indices: the driver table, then the two lookup functions (hand-written wrappers). */
#define CF_DRIVER_INDEX(name, ver, kind, hint, params, args) CF_I_##name,
enum { CF_DRIVER_API(CF_DRIVER_INDEX) CF_I_cuGetProcAddress, CF_I_cuGetProcAddress_v2, CF_N_DRIVER };
#define CF_RUNTIME_INDEX(name, kind, hint, params, args) CF_R_##name,
enum { CF_RUNTIME_API(CF_RUNTIME_INDEX) CF_R_cudaGetDriverEntryPoint, CF_R_cudaGetDriverEntryPointByVersion, CF_N_RUNTIME };

/* Function pointer types. */
#define CF_DRIVER_PFN(name, ver, kind, hint, params, args) typedef CUresult (*cf_pfn_##name) params;
CF_DRIVER_API(CF_DRIVER_PFN)
#define CF_RUNTIME_PFN(name, kind, hint, params, args) typedef cudaError_t (*cf_pfn_##name) params;
CF_RUNTIME_API(CF_RUNTIME_PFN)
typedef CUresult (*cf_pfn_cuGetProcAddress)(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
typedef CUresult (*cf_pfn_cuGetProcAddress_v2)(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                               CUdriverProcAddressQueryResult *symbolStatus);
typedef cudaError_t (*cf_pfn_cudaGetDriverEntryPoint)(const char *symbol, void **funcPtr, unsigned long long flags,
                                                      int *driverStatus);
typedef cudaError_t (*cf_pfn_cudaGetDriverEntryPointByVersion)(const char *symbol, void **funcPtr,
                                                               unsigned int cudaVersion, unsigned long long flags,
                                                               int *driverStatus);
typedef cudaError_t (*cf_pfn_cudaRuntimeGetVersion)(int *runtimeVersion);
typedef void *(*cf_pfn_dlsym)(void *handle, const char *name);

/* ---------------------------------------------------------------------------------------------
 * Global state
 * ------------------------------------------------------------------------------------------- */

/* cf_gate: the only word the disarmed fast path reads. Any bit set sends calls to cf_check(). */
#define CF_G_ARMED 1u    /* a fault is armed (with a non-zero error) */
#define CF_G_STICKY 2u   /* some context has failed: its calls keep failing */
#define CF_G_INIT 4u     /* the library has not initialised yet (done by the first intercepted call) */
#define CF_G_WATCH 8u    /* the control-file watcher must be started (first use, or after fork) */
static atomic_uint cf_gate = CF_G_INIT;

/* Real entry points. cf_real: what dlsym() on libcuda gives (or what a caller's dlsym gave us).
 * cf_gpa_real: what cuGetProcAddress gave when that differs from the exported symbol (a driver may
 * hand out internal entry points); the cf_gpa_* wrappers call those. */
static _Atomic(void *) cf_real[CF_N_DRIVER];
static _Atomic(void *) cf_gpa_real[CF_N_DRIVER];
static _Atomic(void *) cf_rt_real[CF_N_RUNTIME];
static _Atomic(void *) cf_driver_handle;
static _Atomic(cf_pfn_dlsym) cf_real_dlsym_fn;
static atomic_int cf_runtime_version;

/* A thread inside the real driver (or inside the shim's own queries) calls through untouched:
 * a driver that calls its exported entry points must not see injected faults or be counted. */
static _Thread_local unsigned char cf_guard;

static int cf_debug;

/* Published fault configuration: a C11 sequence lock (writers serialised by cf_write_lock). */
enum { CF_TARGET_ALL, CF_TARGET_PCI, CF_TARGET_ORDINAL };
static atomic_uint cf_cfg_version;
static atomic_int cf_cfg_error;
static atomic_int cf_cfg_sticky;
static atomic_int cf_cfg_target_kind;
static _Atomic(uint64_t) cf_cfg_target;
static _Atomic(int64_t) cf_cfg_t0_ns;        /* when the current fault was armed */
static _Atomic(uint64_t) cf_arm_calls;       /* calls eligible to fail since then */

/* From the environment (read once, at initialisation). */
static uint64_t cf_after_calls;              /* CUDA_FAULT_AFTER_CALLS */
static int64_t cf_after_ns;                  /* CUDA_FAULT_AFTER_SECONDS */
static char cf_control_path[PATH_MAX];       /* CUDA_FAULT_CONTROL_FILE */
static int64_t cf_load_ns;                   /* library load time: env arming counts from here */

struct cf_state {
    int source;        /* 0: environment, 1: control file */
    int armed;
    int xid;
    int error;
    int sticky;
    int target_kind;
    uint64_t target;
    long long seq;
};
static struct cf_state cf_env_state;
static struct cf_state cf_cur_state;         /* under cf_write_lock */
static int cf_have_state;                    /* under cf_write_lock */

static pthread_mutex_t cf_init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cf_write_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cf_sticky_lock = PTHREAD_MUTEX_INITIALIZER;
static int cf_watch_fd = -1;                 /* under cf_write_lock; closed in a forked child */

/* Failed contexts: append-only; readers are lock-free, writers take cf_sticky_lock. */
#define CF_STICKY_SLOTS 256
static _Atomic(uintptr_t) cf_sticky_ctx[CF_STICKY_SLOTS];
static atomic_int cf_sticky_err[CF_STICKY_SLOTS];
static atomic_int cf_sticky_count;
static atomic_int cf_sticky_overflow;        /* set table full: every context fails with this */

/* Device ordinal -> packed PCI address (bit 63: known), filled lazily from cuDeviceGetPCIBusId. */
#define CF_PCI_CACHE 64
#define CF_PCI_KNOWN (1ull << 63)
static _Atomic(uint64_t) cf_pci_cache[CF_PCI_CACHE];

static int cf_check(int kind, uintptr_t hint, int runtime);
static CUresult cf_missing_driver(void);
static void *cf_rt_slot(int idx);
static void cf_boot(void);

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

static int64_t cf_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((format(printf, 1, 2)))
static void cf_log(const char *fmt, ...)
{
    char buf[512];
    int n;
    va_list ap;

    if (!cf_debug)
        return;
    n = snprintf(buf, sizeof(buf), "cuda_fault_shim[%d]: ", (int)getpid());
    if (n < 0 || (size_t)n >= sizeof(buf))
        return;
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = (int)strlen(buf);
    buf[n++] = '\n';
    /* stderr only, and never through stdio: the host's buffers and locks stay untouched. */
    if (write(STDERR_FILENO, buf, (size_t)n) < 0)
        return;
}

static void cf_sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Strict unsigned decimal (no sign, no blanks, no overflow). */
static int cf_parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (len == 0 || len > 20)
        return -1;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (v > (max - (uint64_t)(s[i] - '0')) / 10u)
            return -1;
        v = v * 10u + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

/* Signed decimal, as Python's int() reads the seq field (an optional leading '-'). */
static int cf_parse_i64(const char *s, size_t len, long long *out)
{
    uint64_t v;
    int neg = len > 0 && s[0] == '-';

    if (cf_parse_u64(s + neg, len - (size_t)neg, (uint64_t)LLONG_MAX, &v) != 0)
        return -1;
    *out = neg ? -(long long)v : (long long)v;
    return 0;
}

/* Seconds as "N" or "N.frac", without strtod: the host may have set a locale with a decimal comma. */
static int cf_parse_seconds(const char *s, int64_t *ns_out)
{
    const char *dot = strchr(s, '.');
    size_t ilen = dot ? (size_t)(dot - s) : strlen(s);
    uint64_t whole = 0;
    int64_t frac = 0, scale = 100000000;

    if (ilen == 0 && !dot)
        return -1;
    if (ilen > 0 && cf_parse_u64(s, ilen, 1000000000ull, &whole) != 0)
        return -1;
    if (dot) {
        const char *p = dot + 1;
        if (*p == '\0' && ilen == 0)
            return -1;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return -1;
            frac += (int64_t)(*p - '0') * scale;
            scale /= 10;
        }
    }
    *ns_out = (int64_t)whole * 1000000000LL + frac;
    return 0;
}

static int cf_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int cf_hex_field(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    for (i = 0; i < len; i++) {
        int h = cf_hex(s[i]);
        if (h < 0)
            return -1;
        v = (v << 4) | (uint64_t)h;
    }
    *out = v;
    return 0;
}

/* A full PCI address dddd:bb:dd.f (domain of 4 or 8 hex digits, device <= 0x1f, function 0-7), the
 * rules of xid_catalog.parse_pci, packed as domain << 16 | bus << 8 | device << 3 | function. */
static int cf_parse_pci(const char *s, size_t len, uint64_t *out)
{
    size_t dlen;
    uint64_t domain, bus, dev;

    if (len == 12)
        dlen = 4;
    else if (len == 16)
        dlen = 8;
    else
        return -1;
    if (s[dlen] != ':' || s[dlen + 3] != ':' || s[dlen + 6] != '.')
        return -1;
    if (cf_hex_field(s, dlen, &domain) || cf_hex_field(s + dlen + 1, 2, &bus) ||
        cf_hex_field(s + dlen + 4, 2, &dev))
        return -1;
    if (dev > 0x1f || s[dlen + 7] < '0' || s[dlen + 7] > '7')
        return -1;
    *out = domain << 16 | bus << 8 | dev << 3 | (uint64_t)(s[dlen + 7] - '0');
    return 0;
}

static const struct cf_xid_entry *cf_xid_lookup(int xid)
{
    size_t i;

    for (i = 0; i < CF_XID_TABLE_LEN; i++)
        if (cf_xid_table[i].xid == xid)
            return &cf_xid_table[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Real dlsym and the real libraries
 * ------------------------------------------------------------------------------------------- */

/* The real dlsym, found with dlvsym (which the shim does not wrap), so that looking it up never
 * recurses into the shim's own dlsym. */
static CF_NO_SANITIZE cf_pfn_dlsym cf_get_real_dlsym(void)
{
    static const char *const versions[] = { "GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.4", "GLIBC_2.0" };
    cf_pfn_dlsym fn = atomic_load_explicit(&cf_real_dlsym_fn, memory_order_acquire);
    size_t i;

    if (fn != NULL)
        return fn;
    for (i = 0; fn == NULL && i < sizeof(versions) / sizeof(versions[0]); i++)
        fn = (cf_pfn_dlsym)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (fn != NULL)
        atomic_store_explicit(&cf_real_dlsym_fn, fn, memory_order_release);
    return fn;
}

/* Fill the driver slots from libcuda.so.1. Safe to run concurrently (slots are filled with CAS) and
 * called without any shim lock held, since dlopen takes the loader's lock. */
static void cf_resolve_driver(void)
{
    cf_pfn_dlsym real_dlsym = cf_get_real_dlsym();
    static const char *const names[CF_N_DRIVER] = {
#define CF_DRIVER_NAME(name, ver, kind, hint, params, args) #name,
        CF_DRIVER_API(CF_DRIVER_NAME)
        "cuGetProcAddress", "cuGetProcAddress_v2"
    };
    void *h;
    int i;

    if (real_dlsym == NULL || atomic_load(&cf_driver_handle) != NULL)
        return;
    /* The driver the application (or cudart) already loaded, else load it; never unloaded. */
    h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    if (h == NULL)
        h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NODELETE);
    if (h == NULL) {
        cf_log("libcuda.so.1 not found: covered driver calls return %d", CF_CUDA_ERROR_STUB_LIBRARY);
        return;
    }
    /* dlsym on the driver's own handle: RTLD_NEXT would miss a driver that cudart dlopens. */
    for (i = 0; i < CF_N_DRIVER; i++) {
        void *p = real_dlsym(h, names[i]);
        void *expected = NULL;
        if (p != NULL)
            atomic_compare_exchange_strong(&cf_real[i], &expected, p);
    }
    atomic_store(&cf_driver_handle, h);
}

static __attribute__((cold, noinline)) CUresult cf_missing_driver(void)
{
    return atomic_load(&cf_driver_handle) == NULL ? CF_CUDA_ERROR_STUB_LIBRARY : CF_CUDA_ERROR_NOT_FOUND;
}

struct cf_find_lib {
    char path[PATH_MAX];
    int found;
};

static int cf_find_cudart_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct cf_find_lib *f = data;
    const char *base;

    (void)size;
    if (info->dlpi_name == NULL || info->dlpi_name[0] == '\0')
        return 0;
    base = strrchr(info->dlpi_name, '/');
    base = base ? base + 1 : info->dlpi_name;
    if (strncmp(base, "libcudart.so", 12) != 0 || strlen(info->dlpi_name) >= sizeof(f->path))
        return 0;
    strcpy(f->path, info->dlpi_name);
    f->found = 1;
    return 1;
}

/* A runtime symbol: RTLD_NEXT finds a libcudart in the global scope; one that was loaded privately
 * (a Python extension's dependency, dlopen without RTLD_GLOBAL) is found by walking the loaded
 * objects and asking that object by name. */
static void *cf_rt_lookup(const char *name)
{
    cf_pfn_dlsym real_dlsym = cf_get_real_dlsym();
    struct cf_find_lib f;
    void *p, *h;

    if (real_dlsym == NULL)
        return NULL;
    p = real_dlsym(RTLD_NEXT, name);
    if (p != NULL)
        return p;
    f.found = 0;
    dl_iterate_phdr(cf_find_cudart_cb, &f);
    if (!f.found)
        return NULL;
    h = dlopen(f.path, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL)
        return NULL;
    p = real_dlsym(h, name);
    dlclose(h);
    return p;
}

static const char *const cf_rt_names[CF_N_RUNTIME] = {
#define CF_RUNTIME_NAME(name, kind, hint, params, args) #name,
    CF_RUNTIME_API(CF_RUNTIME_NAME)
    "cudaGetDriverEntryPoint", "cudaGetDriverEntryPointByVersion"
};

static __attribute__((noinline)) void *cf_rt_slot(int idx)
{
    void *p = atomic_load_explicit(&cf_rt_real[idx], memory_order_acquire);
    void *expected = NULL;

    if (p != NULL)
        return p;
    p = cf_rt_lookup(cf_rt_names[idx]);
    if (p == NULL)
        return NULL;
    if (!atomic_compare_exchange_strong(&cf_rt_real[idx], &expected, p))
        p = expected;
    return p;
}

static int cf_get_runtime_version(void)
{
    int v = atomic_load(&cf_runtime_version);
    cf_pfn_cudaRuntimeGetVersion fn;

    if (v > 0)
        return v;
    fn = (cf_pfn_cudaRuntimeGetVersion)cf_rt_lookup("cudaRuntimeGetVersion");
    if (fn == NULL || fn(&v) != 0 || v <= 0)
        v = CF_DEFAULT_RUNTIME_VERSION;
    atomic_store(&cf_runtime_version, v);
    return v;
}

/* ---------------------------------------------------------------------------------------------
 * The wrappers: every one has the same shape, generated from the table.
 * ------------------------------------------------------------------------------------------- */

/* The armed path, out of line so that the fast path needs no stack frame. cf_check() returns an
 * error (> 0) to fail the call, 0 to run the real function with the guard set, or -1 when the
 * caller already runs inside the driver (then the call goes straight through). */
#define CF_SLOW(rtype, fn, pfn, load_real, missing, kind, hint, runtime, params, args) \
    static __attribute__((noinline, cold)) rtype fn params \
    { \
        int cf_rc = cf_check((kind), (uintptr_t)(hint), (runtime)); \
        pfn cf_fn; \
        rtype cf_r; \
        if (cf_rc > 0) \
            return cf_rc; \
        cf_fn = (pfn)(load_real); \
        if (cf_fn == NULL) \
            return (missing); \
        if (cf_rc < 0) \
            return cf_fn args; \
        cf_guard = 1; \
        cf_r = cf_fn args; \
        cf_guard = 0; \
        return cf_r; \
    }

/* The fast path: one acquire load of cf_gate, one branch, then the real function by tail call. */
#define CF_FAST(pfn, slow, slot, missing, args) \
    { \
        pfn cf_fn; \
        if (CF_UNLIKELY(atomic_load_explicit(&cf_gate, memory_order_acquire) != 0u)) \
            return slow args; \
        cf_fn = (pfn)atomic_load_explicit(slot, memory_order_relaxed); \
        if (CF_UNLIKELY(cf_fn == NULL)) \
            return (missing); \
        return cf_fn args; \
    }

/* Each driver entry: the exported symbol, a twin that calls what cuGetProcAddress returned, and a
 * hidden alias so that the shim hands out its own address even if another object defines the name. */
#define CF_DRIVER_WRAPPER(name, ver, kind, hint, params, args) \
    CF_SLOW(CUresult, cf_slow_##name, cf_pfn_##name, atomic_load_explicit(&cf_real[CF_I_##name], memory_order_acquire), \
            cf_missing_driver(), kind, hint, 0, params, args) \
    CF_SLOW(CUresult, cf_gpaslow_##name, cf_pfn_##name, \
            atomic_load_explicit(&cf_gpa_real[CF_I_##name], memory_order_acquire), cf_missing_driver(), kind, hint, 0, \
            params, args) \
    CF_EXPORT CUresult name params \
    CF_FAST(cf_pfn_##name, cf_slow_##name, &cf_real[CF_I_##name], cf_missing_driver(), args) \
    static CUresult cf_gpa_##name params \
    CF_FAST(cf_pfn_##name, cf_gpaslow_##name, &cf_gpa_real[CF_I_##name], cf_missing_driver(), args) \
    extern __typeof__(name) cf_own_##name __attribute__((alias(#name), visibility("hidden")));
CF_DRIVER_API(CF_DRIVER_WRAPPER)

/* Runtime slots are filled lazily (libcudart may be loaded after the first driver call): an empty
 * slot takes the slow path, which looks the symbol up. */
#define CF_RUNTIME_WRAPPER(name, kind, hint, params, args) \
    CF_SLOW(cudaError_t, cf_slow_##name, cf_pfn_##name, cf_rt_slot(CF_R_##name), CF_CUDA_ERROR_STUB_LIBRARY, kind, \
            hint, 1, params, args) \
    CF_EXPORT cudaError_t name params \
    CF_FAST(cf_pfn_##name, cf_slow_##name, &cf_rt_real[CF_R_##name], cf_slow_##name args, args) \
    extern __typeof__(name) cf_own_##name __attribute__((alias(#name), visibility("hidden")));
CF_RUNTIME_API(CF_RUNTIME_WRAPPER)

/* ---------------------------------------------------------------------------------------------
 * Entry-point lookups: cuGetProcAddress[_v2] and cudaGetDriverEntryPoint[ByVersion]
 * ------------------------------------------------------------------------------------------- */

static CUresult cf_gpa_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
static CUresult cf_gpa_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                           CUdriverProcAddressQueryResult *symbolStatus);
CF_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
CF_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                       CUdriverProcAddressQueryResult *symbolStatus);
extern __typeof__(cuGetProcAddress) cf_own_cuGetProcAddress __attribute__((alias("cuGetProcAddress"), visibility("hidden")));
extern __typeof__(cuGetProcAddress_v2) cf_own_cuGetProcAddress_v2
    __attribute__((alias("cuGetProcAddress_v2"), visibility("hidden")));

struct cf_route {
    const char *name;
    int min_version;
    void *wrapper;       /* the exported wrapper (by its hidden alias) */
    void *gpa_wrapper;   /* the twin calling cf_gpa_real[] */
};

#define CF_ROUTE_ROW(name, ver, kind, hint, params, args) { #name, ver, (void *)cf_own_##name, (void *)cf_gpa_##name },
static const struct cf_route cf_routes[CF_N_DRIVER] = {
    CF_DRIVER_API(CF_ROUTE_ROW)
    { "cuGetProcAddress", 11030, (void *)cf_own_cuGetProcAddress, (void *)cf_gpa_cuGetProcAddress },
    { "cuGetProcAddress_v2", 12000, (void *)cf_own_cuGetProcAddress_v2, (void *)cf_gpa_cuGetProcAddress_v2 },
};

static cudaError_t cf_own_cudaGetDriverEntryPoint(const char *symbol, void **funcPtr, unsigned long long flags,
                                                  int *driverStatus);
static cudaError_t cf_own_cudaGetDriverEntryPointByVersion(const char *symbol, void **funcPtr,
                                                           unsigned int cudaVersion, unsigned long long flags,
                                                           int *driverStatus);
#define CF_RUNTIME_ROW(name, kind, hint, params, args) (void *)cf_own_##name,
static void *const cf_rt_wrappers[CF_N_RUNTIME] = {
    CF_RUNTIME_API(CF_RUNTIME_ROW)
    (void *)cf_own_cudaGetDriverEntryPoint, (void *)cf_own_cudaGetDriverEntryPointByVersion
};

/* Does a table name (cuMemcpyHtoD_v2_ptds) belong to a cuGetProcAddress base name (cuMemcpyHtoD)?
 * Exact: the rest must be empty, _v<N>, _ptds/_ptsz or both. */
static int cf_base_matches(const char *entry, const char *symbol, int *per_thread)
{
    size_t n = strlen(symbol);
    const char *rest;

    if (strncmp(entry, symbol, n) != 0)
        return 0;
    rest = entry + n;
    if (rest[0] == '_' && rest[1] == 'v' && rest[2] >= '0' && rest[2] <= '9') {
        rest += 2;
        while (*rest >= '0' && *rest <= '9')
            rest++;
    }
    *per_thread = strcmp(rest, "_ptds") == 0 || strcmp(rest, "_ptsz") == 0;
    return *rest == '\0' || *per_thread;
}

static int cf_find_driver(const char *name)
{
    int i;

    for (i = 0; i < CF_N_DRIVER; i++)
        if (strcmp(cf_routes[i].name, name) == 0)
            return i;
    return -1;
}

static int cf_find_runtime(const char *name)
{
    int i;

    for (i = 0; i < CF_N_RUNTIME; i++)
        if (strcmp(cf_rt_names[i], name) == 0)
            return i;
    return -1;
}

/* What the driver's own cuGetProcAddress answers, asked by the shim (NULL if it fails). */
static void *cf_driver_lookup(const char *symbol, int version, cuuint64_t flags)
{
    void *v2 = atomic_load(&cf_real[CF_I_cuGetProcAddress_v2]), *v1 = atomic_load(&cf_real[CF_I_cuGetProcAddress]);
    void *p = NULL;
    CUdriverProcAddressQueryResult status;
    unsigned char nested = cf_guard;
    CUresult r = CF_CUDA_ERROR_NOT_FOUND;

    cf_guard = 1;
    if (v2 != NULL)
        r = ((cf_pfn_cuGetProcAddress_v2)v2)(symbol, &p, version, flags, &status);
    else if (v1 != NULL)
        r = ((cf_pfn_cuGetProcAddress)v1)(symbol, &p, version, flags);
    cf_guard = nested;
    return r == 0 ? p : NULL;
}

/* The wrapper to hand out for what a real lookup of `symbol` returned. */
static void *cf_route(const char *symbol, void *p, int version, cuuint64_t flags)
{
    int i, best = -1, pass, want_pt = (flags & CF_GPA_PER_THREAD) != 0;
    void *expected = NULL;

    if (symbol == NULL || p == NULL)
        return p;
    for (i = 0; i < CF_N_DRIVER; i++) {
        if (p == cf_routes[i].wrapper || p == cf_routes[i].gpa_wrapper)
            return p;                                   /* already ours */
        if (p == atomic_load_explicit(&cf_real[i], memory_order_acquire))
            return cf_routes[i].wrapper;                /* the exported entry point itself */
    }
    /* An address other than the export: pick the variant the driver picks for this base name,
     * version and stream flag (the newest one not newer than the caller's version). */
    for (pass = 0; pass < 2 && best < 0; pass++) {
        for (i = 0; i < CF_N_DRIVER; i++) {
            int pt;
            if (!cf_base_matches(cf_routes[i].name, symbol, &pt) || cf_routes[i].min_version > version)
                continue;
            if (pt != (pass == 0 ? want_pt : 0))
                continue;
            if (best < 0 || cf_routes[i].min_version > cf_routes[best].min_version)
                best = i;
        }
        if (!want_pt)
            break;
    }
    if (best < 0)
        return p;
    /* Above the newest CUDA the table was checked against, the driver may know a newer variant
     * with other parameters: wrap only if it answers the same entry point at CF_API_VERSION. */
    if (version > CF_API_VERSION && cf_driver_lookup(symbol, CF_API_VERSION, flags) != p) {
        cf_log("%s at version %d: a variant newer than CUDA %d, left unwrapped", symbol, version, CF_API_VERSION);
        return p;
    }
    if (atomic_compare_exchange_strong(&cf_gpa_real[best], &expected, p) || expected == p)
        return cf_routes[best].gpa_wrapper;
    cf_log("%s: a second entry point for %s, left unwrapped", symbol, cf_routes[best].name);
    return p;
}

static void cf_boot_maybe(void)
{
    if (CF_UNLIKELY(atomic_load_explicit(&cf_gate, memory_order_acquire) & (CF_G_INIT | CF_G_WATCH)))
        cf_boot();
}

/* Lookups never fail on purpose (the real driver answers them without a GPU); they route. */
static CUresult cf_lookup(int idx, _Atomic(void *) *slots, const char *symbol, void **pfn, int cudaVersion,
                          cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus)
{
    void *f;
    unsigned char nested = cf_guard;
    CUresult r;

    cf_boot_maybe();
    f = atomic_load_explicit(&slots[idx], memory_order_acquire);
    if (f == NULL)
        return cf_missing_driver();
    cf_guard = 1;
    if (idx == CF_I_cuGetProcAddress_v2)
        r = ((cf_pfn_cuGetProcAddress_v2)f)(symbol, pfn, cudaVersion, flags, symbolStatus);
    else
        r = ((cf_pfn_cuGetProcAddress)f)(symbol, pfn, cudaVersion, flags);
    cf_guard = nested;
    if (r == 0 && !nested && pfn != NULL && *pfn != NULL)
        *pfn = cf_route(symbol, *pfn, cudaVersion, flags);
    return r;
}

CF_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    return cf_lookup(CF_I_cuGetProcAddress, cf_real, symbol, pfn, cudaVersion, flags, NULL);
}

CF_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                       CUdriverProcAddressQueryResult *symbolStatus)
{
    return cf_lookup(CF_I_cuGetProcAddress_v2, cf_real, symbol, pfn, cudaVersion, flags, symbolStatus);
}

static CUresult cf_gpa_cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    return cf_lookup(CF_I_cuGetProcAddress, cf_gpa_real, symbol, pfn, cudaVersion, flags, NULL);
}

static CUresult cf_gpa_cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                           CUdriverProcAddressQueryResult *symbolStatus)
{
    return cf_lookup(CF_I_cuGetProcAddress_v2, cf_gpa_real, symbol, pfn, cudaVersion, flags, symbolStatus);
}

/* cudaGetDriverEntryPoint: CUDA 12 signature (CUDA 11.3-11.8 took no driverStatus; forwarding the
 * extra register argument to such a runtime is harmless). */
CF_EXPORT cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **funcPtr, unsigned long long flags,
                                              int *driverStatus)
{
    cf_pfn_cudaGetDriverEntryPoint f;
    unsigned char nested = cf_guard;
    cudaError_t r;

    cf_boot_maybe();
    f = (cf_pfn_cudaGetDriverEntryPoint)cf_rt_slot(CF_R_cudaGetDriverEntryPoint);
    if (f == NULL)
        return CF_CUDA_ERROR_STUB_LIBRARY;
    cf_guard = 1;
    r = f(symbol, funcPtr, flags, driverStatus);
    cf_guard = nested;
    if (r == 0 && !nested && funcPtr != NULL && *funcPtr != NULL)
        *funcPtr = cf_route(symbol, *funcPtr, cf_get_runtime_version(), flags);
    return r;
}

CF_EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **funcPtr, unsigned int cudaVersion,
                                                       unsigned long long flags, int *driverStatus)
{
    cf_pfn_cudaGetDriverEntryPointByVersion f;
    unsigned char nested = cf_guard;
    cudaError_t r;

    cf_boot_maybe();
    f = (cf_pfn_cudaGetDriverEntryPointByVersion)cf_rt_slot(CF_R_cudaGetDriverEntryPointByVersion);
    if (f == NULL)
        return CF_CUDA_ERROR_STUB_LIBRARY;
    cf_guard = 1;
    r = f(symbol, funcPtr, cudaVersion, flags, driverStatus);
    cf_guard = nested;
    if (r == 0 && !nested && funcPtr != NULL && *funcPtr != NULL)
        *funcPtr = cf_route(symbol, *funcPtr, cudaVersion > INT_MAX ? INT_MAX : (int)cudaVersion, flags);
    return r;
}

static cudaError_t cf_own_cudaGetDriverEntryPoint(const char *symbol, void **funcPtr, unsigned long long flags,
                                                  int *driverStatus)
    __attribute__((alias("cudaGetDriverEntryPoint")));
static cudaError_t cf_own_cudaGetDriverEntryPointByVersion(const char *symbol, void **funcPtr,
                                                           unsigned int cudaVersion, unsigned long long flags,
                                                           int *driverStatus)
    __attribute__((alias("cudaGetDriverEntryPointByVersion")));

/* dlsym(handle, name) on a real handle bypasses the preload order, which is how cudart finds
 * cuGetProcAddress_v2 in the driver. For covered names the real answer is swapped for the wrapper;
 * anything else, and RTLD_DEFAULT/RTLD_NEXT (where the dynamic linker already finds the shim, and
 * where glibc needs the caller's address), goes to the real dlsym by a tail call. */
static __attribute__((noinline)) void *cf_dlsym_route(cf_pfn_dlsym real_dlsym, void *handle, const char *name)
{
    void *r = real_dlsym(handle, name);
    void *expected = NULL;
    int i;

    if (r == NULL)
        return r;
    i = cf_find_driver(name);
    if (i >= 0) {
        if (r == cf_routes[i].wrapper || r == cf_routes[i].gpa_wrapper)
            return r;
        if (atomic_compare_exchange_strong(&cf_real[i], &expected, r) || expected == r)
            return cf_routes[i].wrapper;
        cf_log("dlsym(%s): not the driver the shim wraps, left unwrapped", name);
        return r;
    }
    i = cf_find_runtime(name);
    if (i >= 0) {
        if (r == cf_rt_wrappers[i])
            return r;
        if (atomic_compare_exchange_strong(&cf_rt_real[i], &expected, r) || expected == r)
            return cf_rt_wrappers[i];
        cf_log("dlsym(%s): a second CUDA runtime, left unwrapped", name);
    }
    return r;
}

CF_EXPORT CF_NO_SANITIZE void *dlsym(void *handle, const char *name)
{
    cf_pfn_dlsym real_dlsym = cf_get_real_dlsym();

    if (CF_UNLIKELY(real_dlsym == NULL))
        return NULL;
    /* name is declared nonnull: a NULL name is the caller's bug, as with the real dlsym. */
    if (handle != RTLD_DEFAULT && handle != RTLD_NEXT && name[0] == 'c' && name[1] == 'u')
        return cf_dlsym_route(real_dlsym, handle, name);
    return real_dlsym(handle, name);
}

/* ---------------------------------------------------------------------------------------------
 * The armed path
 * ------------------------------------------------------------------------------------------- */

struct cf_cfg {
    int error, sticky, target_kind;
    uint64_t target;
    int64_t t0_ns;
};

static void cf_cfg_read(struct cf_cfg *c)
{
    for (;;) {
        unsigned v = atomic_load_explicit(&cf_cfg_version, memory_order_acquire);
        if (v & 1u) {
            sched_yield();
            continue;
        }
        c->error = atomic_load_explicit(&cf_cfg_error, memory_order_relaxed);
        c->sticky = atomic_load_explicit(&cf_cfg_sticky, memory_order_relaxed);
        c->target_kind = atomic_load_explicit(&cf_cfg_target_kind, memory_order_relaxed);
        c->target = atomic_load_explicit(&cf_cfg_target, memory_order_relaxed);
        c->t0_ns = atomic_load_explicit(&cf_cfg_t0_ns, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&cf_cfg_version, memory_order_relaxed) == v)
            return;
    }
}

static int cf_sticky_lookup(CUcontext ctx)
{
    int n, i;

    if (ctx == NULL)
        return 0;
    n = atomic_load_explicit(&cf_sticky_count, memory_order_acquire);
    for (i = 0; i < n; i++)
        if (atomic_load_explicit(&cf_sticky_ctx[i], memory_order_acquire) == (uintptr_t)ctx)
            return atomic_load_explicit(&cf_sticky_err[i], memory_order_relaxed);
    return atomic_load_explicit(&cf_sticky_overflow, memory_order_relaxed);
}

static void cf_sticky_add(CUcontext ctx, int error)
{
    int n;

    pthread_mutex_lock(&cf_sticky_lock);
    if (cf_sticky_lookup(ctx) == 0) {
        n = atomic_load_explicit(&cf_sticky_count, memory_order_relaxed);
        if (n < CF_STICKY_SLOTS) {
            atomic_store_explicit(&cf_sticky_err[n], error, memory_order_relaxed);
            atomic_store_explicit(&cf_sticky_ctx[n], (uintptr_t)ctx, memory_order_release);
            atomic_store_explicit(&cf_sticky_count, n + 1, memory_order_release);
        } else {
            /* Out of slots: from now on every context fails, which errs on the faulty side. */
            atomic_store_explicit(&cf_sticky_overflow, error, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&cf_sticky_lock);
    atomic_fetch_or_explicit(&cf_gate, CF_G_STICKY, memory_order_release);
}

static CUcontext cf_current_ctx(void)
{
    cf_pfn_cuCtxGetCurrent f = (cf_pfn_cuCtxGetCurrent)atomic_load(&cf_real[CF_I_cuCtxGetCurrent]);
    CUcontext c = NULL;

    if (f != NULL && f(&c) == 0)
        return c;
    return NULL;
}

static CUcontext cf_ctx_of(int kind, uintptr_t hint)
{
    switch (kind) {
    case CF_T_CTX:
        return (CUcontext)hint;
    case CF_T_CTX_CUR:
        return hint != 0u ? (CUcontext)hint : cf_current_ctx();
    case CF_T_STREAM:
        /* 0, CU_STREAM_LEGACY (1) and CU_STREAM_PER_THREAD (2) belong to the current context. */
        if (hint > 2u) {
            cf_pfn_cuStreamGetCtx f = (cf_pfn_cuStreamGetCtx)atomic_load(&cf_real[CF_I_cuStreamGetCtx]);
            CUcontext c = NULL;
            if (f != NULL && f((CUstream)hint, &c) == 0 && c != NULL)
                return c;
        }
        return cf_current_ctx();
    case CF_T_CUR:
        return cf_current_ctx();
    default:
        return NULL;
    }
}

/* The device of a context: asked of the current context, pushing `ctx` for a moment if needed. */
static int cf_ctx_device(CUcontext ctx)
{
    cf_pfn_cuCtxGetDevice get = (cf_pfn_cuCtxGetDevice)atomic_load(&cf_real[CF_I_cuCtxGetDevice]);
    cf_pfn_cuCtxPushCurrent_v2 push = (cf_pfn_cuCtxPushCurrent_v2)atomic_load(&cf_real[CF_I_cuCtxPushCurrent_v2]);
    cf_pfn_cuCtxPopCurrent_v2 pop = (cf_pfn_cuCtxPopCurrent_v2)atomic_load(&cf_real[CF_I_cuCtxPopCurrent_v2]);
    CUdevice d = -1;
    CUcontext popped = NULL;

    if (get == NULL)
        return -1;
    if (ctx == cf_current_ctx())
        return get(&d) == 0 ? d : -1;
    if (push == NULL || pop == NULL || push(ctx) != 0)
        return -1;
    if (get(&d) != 0)
        d = -1;
    pop(&popped);
    return d;
}

static int cf_device_of(int kind, uintptr_t hint, int runtime, CUcontext *ctx, int *have_ctx)
{
    if (kind == CF_T_NONE)
        return -1;
    if (kind == CF_T_DEV)
        return (int)(intptr_t)hint;
    if (!*have_ctx) {
        *ctx = cf_ctx_of(kind, hint);
        *have_ctx = 1;
    }
    if (*ctx != NULL)
        return cf_ctx_device(*ctx);
    if (runtime) {
        /* Before its first context the runtime only knows the device it was told to use. */
        cf_pfn_cudaGetDevice f = (cf_pfn_cudaGetDevice)cf_rt_slot(CF_R_cudaGetDevice);
        int d = -1;
        if (f != NULL && f(&d) == 0)
            return d;
    }
    return -1;
}

static int cf_device_matches(int dev, const struct cf_cfg *c)
{
    uint64_t pci;

    if (c->target_kind == CF_TARGET_ORDINAL)
        return (uint64_t)dev == c->target;
    if (dev >= 0 && dev < CF_PCI_CACHE && (pci = atomic_load(&cf_pci_cache[dev])) != 0)
        return (pci & ~CF_PCI_KNOWN) == c->target;
    {
        cf_pfn_cuDeviceGetPCIBusId f = (cf_pfn_cuDeviceGetPCIBusId)atomic_load(&cf_real[CF_I_cuDeviceGetPCIBusId]);
        char buf[32] = { 0 };
        /* Fails before cuInit: the device then does not match, and is asked again next time. */
        if (f == NULL || f(buf, (int)sizeof(buf) - 1, dev) != 0 || cf_parse_pci(buf, strlen(buf), &pci) != 0)
            return 0;
    }
    if (dev >= 0 && dev < CF_PCI_CACHE)
        atomic_store(&cf_pci_cache[dev], pci | CF_PCI_KNOWN);
    return pci == c->target;
}

static int cf_decide(int kind, uintptr_t hint, int runtime, unsigned gate)
{
    struct cf_cfg c;
    CUcontext ctx = NULL;
    int have_ctx = 0, err;
    int ctx_bound = kind != CF_T_NONE && kind != CF_T_DEV;

    if ((gate & CF_G_STICKY) && ctx_bound) {
        ctx = cf_ctx_of(kind, hint);
        have_ctx = 1;
        err = cf_sticky_lookup(ctx);
        if (err != 0)
            return err;
    }
    if (!(gate & CF_G_ARMED))
        return 0;
    cf_cfg_read(&c);
    if (c.error == 0)
        return 0;
    if (c.target_kind != CF_TARGET_ALL) {
        /* Calls that name no GPU (cuInit, cuDeviceGetCount) keep working when one GPU is targeted. */
        int dev = cf_device_of(kind, hint, runtime, &ctx, &have_ctx);
        if (dev < 0 || !cf_device_matches(dev, &c))
            return 0;
    }
    if (cf_after_ns > 0 && cf_now_ns() - c.t0_ns < cf_after_ns)
        return 0;
    if (cf_after_calls > 0 && atomic_fetch_add(&cf_arm_calls, 1) < cf_after_calls)
        return 0;
    if (c.sticky && ctx_bound) {
        if (!have_ctx)
            ctx = cf_ctx_of(kind, hint);
        if (ctx != NULL)
            cf_sticky_add(ctx, c.error);
    }
    return c.error;
}

static __attribute__((noinline)) int cf_check(int kind, uintptr_t hint, int runtime)
{
    unsigned g;
    int rc;

    if (cf_guard)
        return -1;
    g = atomic_load_explicit(&cf_gate, memory_order_acquire);
    if (g & (CF_G_INIT | CF_G_WATCH)) {
        cf_boot();
        g = atomic_load_explicit(&cf_gate, memory_order_acquire);
    }
    if (!(g & (CF_G_ARMED | CF_G_STICKY)))
        return 0;
    /* The shim's own driver queries (current context, PCI id) must not come back through here. */
    cf_guard = 1;
    rc = cf_decide(kind, hint, runtime, g);
    cf_guard = 0;
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Configuration: environment, control file, publication
 * ------------------------------------------------------------------------------------------- */

static void cf_set_fault(struct cf_state *s, int xid, int have_xid, int error, int have_error)
{
    const struct cf_xid_entry *e = have_xid ? cf_xid_lookup(xid) : NULL;

    s->xid = have_xid ? xid : -1;
    if (have_error)
        s->error = error;
    else if (e != NULL)
        s->error = e->cuda_error;
    else
        s->error = CF_CUDA_ERROR_UNKNOWN;
    s->sticky = e != NULL ? e->sticky : s->error != 0;
}

static void cf_read_env(void)
{
    const char *v;
    uint64_t n;

    memset(&cf_env_state, 0, sizeof(cf_env_state));
    cf_env_state.seq = -1;
    v = getenv("CUDA_FAULT_CONTROL_FILE");
    if (v != NULL && v[0] != '\0' && strlen(v) < sizeof(cf_control_path))
        strcpy(cf_control_path, v);
    else
        strcpy(cf_control_path, CF_DEFAULT_CONTROL);
    v = getenv("CUDA_FAULT_AFTER_CALLS");
    if (v != NULL && cf_parse_u64(v, strlen(v), UINT64_MAX, &n) == 0)
        cf_after_calls = n;
    else if (v != NULL)
        cf_log("CUDA_FAULT_AFTER_CALLS=%s ignored: not a non-negative integer", v);
    v = getenv("CUDA_FAULT_AFTER_SECONDS");
    if (v != NULL && cf_parse_seconds(v, &cf_after_ns) != 0) {
        cf_after_ns = 0;
        cf_log("CUDA_FAULT_AFTER_SECONDS=%s ignored: not a non-negative number", v);
    }
    v = getenv("CUDA_FAULT_INJECTION_ENABLED");
    if (v == NULL || strcmp(v, "1") != 0)
        return;
    v = getenv("CUDA_XID_TYPE");
    if (v == NULL || v[0] == '\0') {
        cf_set_fault(&cf_env_state, CF_DEFAULT_XID, 1, 0, 0);
    } else if (cf_parse_u64(v, strlen(v), INT_MAX, &n) == 0) {
        cf_set_fault(&cf_env_state, (int)n, 1, 0, 0);
        if (cf_xid_lookup((int)n) == NULL)
            cf_log("CUDA_XID_TYPE=%s is not in the XID catalog: returning %d", v, CF_CUDA_ERROR_UNKNOWN);
    } else {
        cf_log("CUDA_XID_TYPE=%s is not a number: not armed", v);
        return;
    }
    v = getenv("CUDA_FAULT_GPU");
    if (v != NULL && v[0] != '\0') {
        if (cf_parse_pci(v, strlen(v), &cf_env_state.target) == 0) {
            cf_env_state.target_kind = CF_TARGET_PCI;
        } else if (cf_parse_u64(v, strlen(v), INT_MAX, &n) == 0) {
            cf_env_state.target_kind = CF_TARGET_ORDINAL;
            cf_env_state.target = n;
        } else {
            cf_log("CUDA_FAULT_GPU=%s is neither a PCI address nor an ordinal: not armed", v);
            return;
        }
    }
    cf_env_state.armed = 1;
}

static int cf_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int cf_key_is(const char *k, size_t klen, const char *want)
{
    return strlen(want) == klen && memcmp(k, want, klen) == 0;
}

/* The v1 control line of shim_control.py: after trimming white space it must match
 * ^v1( [a-z]+=[0-9A-Za-z:.-]+)+$ ; numbers must be numbers, gpu a full PCI address, armed 0 or 1.
 * Unknown keys are ignored (as shim_control.parse does). Returns 0 when valid. */
static int cf_parse_control(const char *buf, size_t len, struct cf_state *s)
{
    const char *p, *end;
    int have_xid = 0, have_error = 0, nfields = 0;
    long long xid = 0, error = 0;

    while (len > 0 && cf_is_space(buf[0])) {
        buf++;
        len--;
    }
    while (len > 0 && cf_is_space(buf[len - 1]))
        len--;
    if (len < 2 || buf[0] != 'v' || buf[1] != '1')
        return -1;
    memset(s, 0, sizeof(*s));
    s->source = 1;
    p = buf + 2;
    end = buf + len;
    while (p < end) {
        const char *k, *v;
        size_t klen, vlen;

        if (*p++ != ' ')
            return -1;
        for (k = p; p < end && *p >= 'a' && *p <= 'z'; p++)
            ;
        klen = (size_t)(p - k);
        if (klen == 0 || p >= end || *p++ != '=')
            return -1;
        for (v = p; p < end && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                                *p == ':' || *p == '.' || *p == '-'); p++)
            ;
        vlen = (size_t)(p - v);
        if (vlen == 0)
            return -1;
        nfields++;
        if (cf_key_is(k, klen, "armed")) {
            if (vlen != 1 || (v[0] != '0' && v[0] != '1'))
                return -1;
            s->armed = v[0] == '1';
        } else if (cf_key_is(k, klen, "xid")) {
            if (cf_parse_i64(v, vlen, &xid) != 0 || xid < 0 || xid > INT_MAX)
                return -1;
            have_xid = 1;
        } else if (cf_key_is(k, klen, "error")) {
            if (cf_parse_i64(v, vlen, &error) != 0 || error < 0 || error > INT_MAX)
                return -1;
            have_error = 1;
        } else if (cf_key_is(k, klen, "gpu")) {
            if (cf_parse_pci(v, vlen, &s->target) != 0)
                return -1;
            s->target_kind = CF_TARGET_PCI;
        } else if (cf_key_is(k, klen, "seq")) {
            if (cf_parse_i64(v, vlen, &s->seq) != 0)
                return -1;
        }
    }
    if (nfields == 0)
        return -1;
    if (!s->armed) {
        s->target_kind = CF_TARGET_ALL;
        s->target = 0;
        s->xid = -1;
        return 0;
    }
    if (!have_xid && !have_error)
        return -1;  /* armed, but with what? */
    cf_set_fault(s, (int)xid, have_xid, (int)error, have_error);
    return 0;
}

/* 1: parsed, 0: no file, -1: unreadable or malformed (the caller keeps the previous state). */
static int cf_read_control(struct cf_state *s)
{
    char buf[1024];
    size_t len = 0;
    struct stat st;
    int fd = open(cf_control_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? 0 : -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == sizeof(buf)) {  /* a v1 line is far shorter */
            close(fd);
            return -1;
        }
    }
    close(fd);
    return cf_parse_control(buf, len, s) == 0 ? 1 : -1;
}

static int cf_same_state(const struct cf_state *a, const struct cf_state *b)
{
    return a->source == b->source && a->armed == b->armed && a->xid == b->xid && a->error == b->error &&
           a->sticky == b->sticky && a->target_kind == b->target_kind && a->target == b->target && a->seq == b->seq;
}

/* Publish a state (cf_write_lock held). Re-reading an unchanged file is a no-op, so the
 * AFTER_CALLS / AFTER_SECONDS delays count from the moment of arming, not from the last event. */
static void cf_apply_locked(const struct cf_state *s, int64_t t0_ns)
{
    unsigned v;
    int live = s->armed && s->error != 0;

    if (cf_have_state && cf_same_state(s, &cf_cur_state))
        return;
    v = atomic_load_explicit(&cf_cfg_version, memory_order_relaxed);
    atomic_store_explicit(&cf_cfg_version, v + 1u, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&cf_cfg_error, live ? s->error : 0, memory_order_relaxed);
    atomic_store_explicit(&cf_cfg_sticky, s->sticky, memory_order_relaxed);
    atomic_store_explicit(&cf_cfg_target_kind, s->target_kind, memory_order_relaxed);
    atomic_store_explicit(&cf_cfg_target, s->target, memory_order_relaxed);
    atomic_store_explicit(&cf_cfg_t0_ns, t0_ns, memory_order_relaxed);
    atomic_store_explicit(&cf_arm_calls, 0, memory_order_relaxed);
    atomic_store_explicit(&cf_cfg_version, v + 2u, memory_order_release);
    if (live)
        atomic_fetch_or_explicit(&cf_gate, CF_G_ARMED, memory_order_release);
    else
        atomic_fetch_and_explicit(&cf_gate, ~CF_G_ARMED, memory_order_release);
    cf_log("%s from the %s: xid=%d error=%d sticky=%d target=%d/%llx seq=%lld", live ? "armed" : "disarmed",
           s->source ? "control file" : "environment", s->xid, s->error, s->sticky, s->target_kind,
           (unsigned long long)s->target, s->seq);
    cf_cur_state = *s;
    cf_have_state = 1;
}

/* Re-read the control file: present and valid -> it decides; absent -> the environment decides;
 * malformed -> nothing changes (at start, when there is nothing to keep, the environment decides). */
static void cf_reload(int initial)
{
    struct cf_state s;
    int r;

    pthread_mutex_lock(&cf_write_lock);
    r = cf_read_control(&s);
    if (r > 0)
        cf_apply_locked(&s, cf_now_ns());
    else if (r == 0 || !cf_have_state)
        cf_apply_locked(&cf_env_state, initial ? cf_load_ns : cf_now_ns());
    if (r < 0)
        cf_log("%s: not a v1 control line, ignored (state unchanged)", cf_control_path);
    pthread_mutex_unlock(&cf_write_lock);
}

/* ---------------------------------------------------------------------------------------------
 * The control-file watcher thread
 * ------------------------------------------------------------------------------------------- */

static void cf_set_watch_fd(int fd)
{
    pthread_mutex_lock(&cf_write_lock);
    cf_watch_fd = fd;
    pthread_mutex_unlock(&cf_write_lock);
}

static void cf_close_watch_fd(int fd)
{
    /* Forget the descriptor before closing it, so a forked child never closes a reused number. */
    cf_set_watch_fd(-1);
    close(fd);
}

/* Without inotify (limits exhausted, seccomp): re-read the file once a second. */
static void cf_poll_forever(void)
{
    for (;;) {
        cf_sleep_ms(1000);
        cf_reload(0);
    }
}

/* Watch the directory, not the file: the agent replaces the file by rename, and the directory may
 * appear after the process starts (then its existence is polled once a second). */
static void *cf_watch_main(void *arg)
{
    char dir[PATH_MAX];
    const char *base;
    char *slash;
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF |
                          IN_MOVE_SELF | IN_ONLYDIR;
    char events[4096] __attribute__((aligned(__alignof__(struct inotify_event))));

    (void)arg;
    strcpy(dir, cf_control_path);
    slash = strrchr(dir, '/');
    if (slash == NULL) {
        strcpy(dir, ".");
        base = cf_control_path;
    } else {
        base = cf_control_path + (slash - dir) + 1;
        if (slash == dir)
            slash[1] = '\0';
        else
            *slash = '\0';
    }
    if (*base == '\0') {
        cf_log("%s: not a file path; run-time control disabled", cf_control_path);
        return NULL;
    }
    for (;;) {
        int fd = inotify_init1(IN_CLOEXEC);
        int restart = 0;

        if (fd < 0) {
            cf_log("inotify unavailable (%s): polling %s every second", strerror(errno), cf_control_path);
            cf_poll_forever();
        }
        cf_set_watch_fd(fd);
        while (inotify_add_watch(fd, dir, mask) < 0) {
            if (errno != ENOENT && errno != ENOTDIR && errno != EACCES) {
                cf_log("inotify_add_watch(%s): %s: polling every second", dir, strerror(errno));
                cf_close_watch_fd(fd);
                cf_poll_forever();
            }
            cf_reload(0);  /* no directory: no file, the environment decides */
            cf_sleep_ms(1000);
        }
        cf_reload(0);      /* the file may have been written before the watch existed */
        while (!restart) {
            ssize_t n = read(fd, events, sizeof(events));
            size_t off, len, blen = strlen(base);
            int changed = 0;

            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                restart = 1;
                break;
            }
            len = (size_t)n;
            for (off = 0; len - off >= sizeof(struct inotify_event);) {
                const struct inotify_event *ev = (const struct inotify_event *)(void *)(events + off);

                if (ev->len > len - off - sizeof(struct inotify_event))
                    break;
                if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT))
                    restart = 1;   /* the directory went away: watch for it again */
                else if (ev->mask & IN_Q_OVERFLOW)
                    changed = 1;
                else if (ev->len > blen && memcmp(ev->name, base, blen) == 0 && ev->name[blen] == '\0')
                    changed = 1;   /* the name is NUL-padded to ev->len */
                off += sizeof(struct inotify_event) + ev->len;
            }
            if (changed || restart)
                cf_reload(0);
        }
        cf_close_watch_fd(fd);
        cf_sleep_ms(100);
    }
    return NULL;
}

static void cf_start_watcher(void)
{
    pthread_attr_t attr;
    pthread_t thread;
    sigset_t all, old;
    int rc;

    if (pthread_attr_init(&attr) != 0)
        return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    /* The thread takes no signal meant for the application. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&thread, &attr, cf_watch_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0)
        cf_log("cannot start the control-file watcher (%s): run-time control disabled", strerror(rc));
    else
        pthread_setname_np(thread, "cudafault-watch");
}

/* ---------------------------------------------------------------------------------------------
 * Initialisation and fork
 * ------------------------------------------------------------------------------------------- */

/* Locks are taken around fork so that the child never inherits one held by a thread that does
 * not exist there (the sequence lock's writer included). */
static void cf_atfork_prepare(void)
{
    pthread_mutex_lock(&cf_init_lock);
    pthread_mutex_lock(&cf_write_lock);
    pthread_mutex_lock(&cf_sticky_lock);
}

static void cf_atfork_parent(void)
{
    pthread_mutex_unlock(&cf_sticky_lock);
    pthread_mutex_unlock(&cf_write_lock);
    pthread_mutex_unlock(&cf_init_lock);
}

/* The watcher thread does not survive fork: the child's first intercepted call starts its own. */
static void cf_atfork_child(void)
{
    if (cf_watch_fd >= 0) {
        close(cf_watch_fd);
        cf_watch_fd = -1;
    }
    if (!(atomic_load(&cf_gate) & CF_G_INIT))
        atomic_fetch_or(&cf_gate, CF_G_WATCH);
    pthread_mutex_unlock(&cf_sticky_lock);
    pthread_mutex_unlock(&cf_write_lock);
    pthread_mutex_unlock(&cf_init_lock);
}

/* The watcher thread and the fork handlers run this library's code: if it was dlopen()ed rather
 * than preloaded, a later dlclose() must not unmap it. */
static void cf_pin_self(void)
{
    Dl_info info;

    if (dladdr((void *)cf_pin_self, &info) != 0 && info.dli_fname != NULL)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static __attribute__((noinline)) void cf_boot(void)
{
    static int atfork_done;
    unsigned g = atomic_load_explicit(&cf_gate, memory_order_acquire);

    if (g & CF_G_INIT) {
        /* outside our locks: dlopen takes the loader's lock, and a library constructor running
         * under that lock may call into the shim */
        cf_resolve_driver();
        cf_pin_self();
        pthread_mutex_lock(&cf_init_lock);
        if (atomic_load(&cf_gate) & CF_G_INIT) {
            cf_read_env();
            if (!atfork_done && pthread_atfork(cf_atfork_prepare, cf_atfork_parent, cf_atfork_child) == 0)
                atfork_done = 1;
            cf_reload(1);
            atomic_fetch_or(&cf_gate, CF_G_WATCH);
            atomic_fetch_and_explicit(&cf_gate, ~CF_G_INIT, memory_order_release);
        }
        pthread_mutex_unlock(&cf_init_lock);
    }
    g = atomic_load_explicit(&cf_gate, memory_order_acquire);
    if ((g & CF_G_WATCH) && (atomic_fetch_and(&cf_gate, ~CF_G_WATCH) & CF_G_WATCH))
        cf_start_watcher();
}

/* Cheap on purpose: it runs in every process of a shimmed container (shells included). The rest
 * waits for the first intercepted call. */
__attribute__((constructor)) static void cf_ctor(void)
{
    const char *d = getenv("CUDA_FAULT_DEBUG");

    cf_debug = d != NULL && strcmp(d, "1") == 0;
    cf_load_ns = cf_now_ns();
    cf_get_real_dlsym();
}
