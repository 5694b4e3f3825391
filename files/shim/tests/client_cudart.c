/*
 * client_cudart.c -- an application of NVIDIA's own CUDA runtime: linked to the libcudart.so.12 or
 * .13 of a pinned NVIDIA wheel (nvidia-cuda-runtime-cu12 or nvidia-cuda-runtime, requirements.txt),
 * the way PyTorch links it. With the shim preloaded, the runtime functions the shim covers bind to
 * its wrappers; the others run in NVIDIA's cudart, which reaches the driver through dlopen and
 * cuGetProcAddress (the shim's other routes). The few declarations it needs are below: the runtime
 * wheels ship cuda_runtime_api.h without the crt/ headers it includes.
 *
 *   cc -O2 -o client_cudart client_cudart.c -L <wheel>/lib -l:libcudart.so.13 -Wl,-rpath,<wheel>/lib
 *
 * Commands (one record per stdout line):
 *   calls [DEV]   each call below once ("RT <name> rc=<n>"), then cudaGetLastError ("LAST rc=<n>"),
 *                 the driver version cudart saw ("DRIVER version=<n>") and NVIDIA's name of every
 *                 error seen ("ERRNAME <n> <name>")
 *   loop [DEV]    the calls again for every line read on stdin, one "STATE name=rc ..." line each,
 *                 until end of input
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cuda_runtime_api.h and driver_types.h (identical in CUDA 12 and 13 for these) */
typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
#define cudaStreamNonBlocking 0x01u
#define cudaDevAttrMultiProcessorCount 16
extern cudaError_t cudaRuntimeGetVersion(int *runtimeVersion);
extern cudaError_t cudaDriverGetVersion(int *driverVersion);
extern cudaError_t cudaGetDeviceCount(int *count);
extern cudaError_t cudaSetDevice(int device);
extern cudaError_t cudaInitDevice(int device, unsigned int deviceFlags, unsigned int flags);
extern cudaError_t cudaFree(void *devPtr);
extern cudaError_t cudaMalloc(void **devPtr, size_t size);
extern cudaError_t cudaMemGetInfo(size_t *free, size_t *total);
extern cudaError_t cudaStreamCreateWithPriority(cudaStream_t *pStream, unsigned int flags, int priority);
extern cudaError_t cudaDeviceGetAttribute(int *value, int attr, int device);
extern cudaError_t cudaDeviceSynchronize(void);
extern cudaError_t cudaGetLastError(void);
extern const char *cudaGetErrorName(cudaError_t error);

static int dev;
static void *mem;
static size_t free_bytes, total_bytes;
static cudaStream_t stream;
static int value, driver_version;

/* In cudart's order of first use: version queries, enumeration, device and context set-up,
 * memory, streams, synchronisation. */
static cudaError_t call_runtime_version(void) { return cudaRuntimeGetVersion(&value); }
static cudaError_t call_driver_version(void) { return cudaDriverGetVersion(&driver_version); }
static cudaError_t call_device_count(void) { return cudaGetDeviceCount(&value); }
static cudaError_t call_set_device(void) { return cudaSetDevice(dev); }
static cudaError_t call_init_device(void) { return cudaInitDevice(dev, 0, 0); }
static cudaError_t call_free_null(void) { return cudaFree(NULL); }
static cudaError_t call_malloc(void) { return cudaMalloc(&mem, 256); }
static cudaError_t call_mem_info(void) { return cudaMemGetInfo(&free_bytes, &total_bytes); }
static cudaError_t call_stream_priority(void) { return cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking, 0); }
static cudaError_t call_device_attribute(void) { return cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, dev); }
static cudaError_t call_synchronize(void) { return cudaDeviceSynchronize(); }

static const struct {
    const char *name;
    cudaError_t (*call)(void);
} calls[] = {
    { "cudaRuntimeGetVersion", call_runtime_version },
    { "cudaDriverGetVersion", call_driver_version },
    { "cudaGetDeviceCount", call_device_count },
    { "cudaSetDevice", call_set_device },
    { "cudaInitDevice", call_init_device },
    { "cudaFree", call_free_null },
    { "cudaMalloc", call_malloc },
    { "cudaMemGetInfo", call_mem_info },
    { "cudaStreamCreateWithPriority", call_stream_priority },
    { "cudaDeviceGetAttribute", call_device_attribute },
    { "cudaDeviceSynchronize", call_synchronize },
};
#define N_CALLS (sizeof(calls) / sizeof(calls[0]))

static void run_calls(int rc[N_CALLS])
{
    size_t i;

    for (i = 0; i < N_CALLS; i++)
        rc[i] = (int)calls[i].call();
}

static void cmd_calls(void)
{
    int rc[N_CALLS], seen[N_CALLS + 1], n_seen = 0, last, j;
    size_t i;

    run_calls(rc);
    for (i = 0; i < N_CALLS; i++)
        printf("RT %s rc=%d\n", calls[i].name, rc[i]);
    last = (int)cudaGetLastError();
    printf("LAST rc=%d\n", last);
    printf("DRIVER version=%d\n", driver_version);
    for (i = 0; i <= N_CALLS; i++) {
        int code = i < N_CALLS ? rc[i] : last;
        for (j = 0; j < n_seen && seen[j] != code; j++)
            ;
        if (code != 0 && j == n_seen) {
            seen[n_seen++] = code;
            printf("ERRNAME %d %s\n", code, cudaGetErrorName((cudaError_t)code));
        }
    }
}

static void cmd_loop(void)
{
    char line[64];
    int rc[N_CALLS];
    size_t i;

    printf("READY\n");
    while (fgets(line, sizeof(line), stdin) != NULL) {
        run_calls(rc);
        printf("STATE");
        for (i = 0; i < N_CALLS; i++)
            printf(" %s=%d", calls[i].name, rc[i]);
        printf("\n");
    }
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";

    setvbuf(stdout, NULL, _IOLBF, 0);
    dev = argc > 2 ? atoi(argv[2]) : 0;
    if (strcmp(cmd, "calls") == 0) {
        cmd_calls();
    } else if (strcmp(cmd, "loop") == 0) {
        cmd_loop();
    } else {
        fprintf(stderr, "usage: client_cudart calls|loop [DEV]\n");
        return 2;
    }
    return 0;
}
