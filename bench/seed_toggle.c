/*
 * seed_toggle.c -- baseline for bench/shim.py: an interposer that works like the seed CUDA
 * library's toggle, opening and reading a file on every intercepted call to decide whether to fail.
 * It wraps only the exported cuStreamQuery (the seed had no cuGetProcAddress route).
 *
 *   cc -shared -fPIC -O2 -o seed_toggle.so seed_toggle.c -ldl
 *   SEED_TOGGLE_FILE=<file containing 0 or 1> LD_PRELOAD=./seed_toggle.so shim_bench direct N
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

typedef int CUresult;
typedef struct CUstream_st *CUstream;
typedef CUresult (*query_t)(CUstream);

static _Atomic(query_t) real_query;

__attribute__((visibility("default"))) CUresult cuStreamQuery(CUstream hStream)
{
    query_t real = atomic_load(&real_query);
    const char *path = getenv("SEED_TOGGLE_FILE");
    char flag = '0';
    int fd;

    if (real == NULL) {
        real = (query_t)dlsym(RTLD_NEXT, "cuStreamQuery");
        atomic_store(&real_query, real);
    }
    fd = open(path ? path : "/tmp/cuda_fault_toggle", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &flag, 1) != 1)
            flag = '0';
        close(fd);
    }
    if (flag == '1')
        return 100;
    return real ? real(hStream) : 34;
}
