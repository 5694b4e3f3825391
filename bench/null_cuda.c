/*
 * null_cuda.c -- a libcuda.so.1 whose cuStreamQuery does nothing, for bench/shim.py: against the
 * fake driver (which counts every call with an atomic) the shim's few instructions hide in the
 * call's own cost; against this one they do not, which bounds what the shim adds.
 *
 *   cc -shared -fPIC -O2 -Wl,-soname,libcuda.so.1 -o libcuda.so.1 null_cuda.c
 */
#include <stdint.h>
#include <string.h>

typedef int CUresult;
typedef struct CUstream_st *CUstream;

__attribute__((visibility("default"))) CUresult cuStreamQuery(CUstream hStream)
{
    (void)hStream;
    return 0;
}

__attribute__((visibility("default"))) CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                                                    uint64_t flags, int *status)
{
    (void)version;
    (void)flags;
    if (symbol == NULL || pfn == NULL || strcmp(symbol, "cuStreamQuery") != 0)
        return 500;
    *pfn = (void *)cuStreamQuery;
    if (status != NULL)
        *status = 0;
    return 0;
}
