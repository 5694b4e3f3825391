/*
 * client_symbols.c -- a CUDA application that links the driver and the runtime and calls their
 * exported symbols (directly, through dlsym(RTLD_DEFAULT) or through dlsym on a library handle).
 *
 *   cc -O2 -rdynamic -o client_symbols client_symbols.c -L<dir> -l:libcuda.so.1 -l:libcudart.so.12 -ldl
 *
 * Commands (one record per stdout line):
 *   driver direct|default|handle   every covered/uncovered driver entry point, once
 *   runtime direct|handle          every covered runtime entry point, once
 *   call NAME COUNT [DEV]          one entry point COUNT times ("RC <i> <rc>")
 *   devices                        per-device results for targeting tests ("DEV ...")
 *   loop SECONDS [stdin]           contexts A (dev 0), B (dev 2), device count N, fresh context F,
 *                                  every 2 ms; prints "STATE ..." whenever a result changes; with
 *                                  "stdin", also stops when stdin is closed
 *   forkloop SECONDS [stdin]       the same loop in a forked child of a process that used CUDA
 *   first-failure SECONDS          time of the first failing call ("FIRST ...")
 *   prefix                         names that must pass through: cudnnCreate, cuGetExportTable, ...
 */
#include "client_common.h"

#include <poll.h>
#include <sys/wait.h>

/* The linked libraries' entry points. */
extern cudaError_t cudaRuntimeGetVersion(int *v);
extern const char *cudaGetErrorString(cudaError_t error);

#define DECLARE(name, ver, kind, params, args, callargs) extern CUresult name params;
CUDA_DRIVER_COVERED(DECLARE)
CUDA_DRIVER_LOOKUP(DECLARE)
CUDA_DRIVER_EXTRA(DECLARE)
#define DECLARE_RT(name, params, args, callargs) extern cudaError_t name params;
CUDA_RUNTIME_COVERED(DECLARE_RT)

/* A library function whose name starts with "cu": the shim must not touch it. */
static unsigned long cudnn_calls;

__attribute__((visibility("default"))) int cudnnCreate(void **handle)
{
    cudnn_calls++;
    if (handle != NULL)
        *handle = &cudnn_calls;
    return 0;
}

#define DIRECT_THUNK(name, ver, kind, params, args, callargs) \
    static int direct_##name(void *unused) \
    { \
        (void)unused; \
        return name callargs; \
    }
CUDA_DRIVER_COVERED(DIRECT_THUNK)
CUDA_DRIVER_LOOKUP(DIRECT_THUNK)
CUDA_DRIVER_EXTRA(DIRECT_THUNK)
#define DIRECT_RT_THUNK(name, params, args, callargs) \
    static int direct_##name(void *unused) \
    { \
        (void)unused; \
        return name callargs; \
    }
CUDA_RUNTIME_COVERED(DIRECT_RT_THUNK)

struct direct {
    const char *name;
    int (*thunk)(void *unused);
};
#define DIRECT_ROW(name, ver, kind, params, args, callargs) { #name, direct_##name },
#define DIRECT_RT_ROW(name, params, args, callargs) { #name, direct_##name },
static const struct direct directs[] = {
    CUDA_DRIVER_COVERED(DIRECT_ROW) CUDA_DRIVER_LOOKUP(DIRECT_ROW) CUDA_DRIVER_EXTRA(DIRECT_ROW)
    CUDA_RUNTIME_COVERED(DIRECT_RT_ROW)
};

/* Calls a row by its exported name: directly (PLT), or through a pointer from dlsym. */
static int call_row(const struct row *r, const char *route, void *cuda, void *cudart, int dev)
{
    size_t i;

    if (strcmp(route, "direct") == 0) {
        struct row direct = *r;
        for (i = 0; i < sizeof(directs) / sizeof(directs[0]); i++)
            if (strcmp(directs[i].name, r->name) == 0)
                direct.thunk = directs[i].thunk;
        return report_call(route, &direct, NULL, dev, NULL);
    }
    if (strcmp(route, "default") == 0)
        return report_call(route, r, need_sym(RTLD_DEFAULT, r->name), dev, NULL);
    return report_call(route, r, need_sym(r->group == GROUP_RUNTIME ? cudart : cuda, r->name), dev, NULL);
}

static void cmd_rows(const char *route, int runtime, void *cuda, void *cudart)
{
    int i;

    H.setup(0);
    if (runtime && cudaSetDevice(0) != 0)
        printf("NOTE cudaSetDevice(0) failed\n");
    for (i = 0; i < N_ROWS; i++)
        if ((rows[i].group == GROUP_RUNTIME) == runtime)
            call_row(&rows[i], route, cuda, cudart, 0);
}

static void cmd_call(const char *name, int count, int dev)
{
    const struct row *r = find_row(name);
    size_t j;
    int i;

    if (r == NULL)
        die("unknown row");
    for (j = 0; j < sizeof(directs) / sizeof(directs[0]); j++)
        if (strcmp(directs[j].name, name) == 0)
            break;
    prepare(dev);
    for (i = 0; i < count; i++)
        printf("RC %d %d\n", i, directs[j].thunk(NULL));
}

static int alloc_in(CUcontext ctx)
{
    CUdeviceptr d;

    H.set_current(ctx);
    return cuMemAlloc_v2(&d, 64);
}

static void cmd_devices(void)
{
    CUcontext dev0 = (CUcontext)H.setup(0);
    int rt0 = cudaSetDevice(0), dev;

    printf("NOTE rtset0=%d\n", rt0);
    for (dev = 0; dev < FAKE_CUDA_DEVICES; dev++) {
        CUdevice d;
        CUcontext c, made = NULL;
        CUstream s;
        void *p;
        char name[64];
        int get, nm, create, alloc, stream, setcur, rtmalloc, rtset;

        get = cuDeviceGet(&d, dev);
        nm = cuDeviceGetName(name, (int)sizeof(name), dev);
        create = cuCtxCreate_v2(&made, 0, dev);
        alloc = alloc_in((CUcontext)H.new_ctx(dev));
        /* a stream of this device, used while a device-0 context is current */
        c = (CUcontext)H.new_ctx(dev);
        s = (CUstream)H.new_stream(c);
        H.set_current(dev0);
        stream = cuStreamQuery(s);
        /* a context of this device made current from a device-0 context */
        H.set_current(dev0);
        setcur = cuCtxSetCurrent((CUcontext)H.new_ctx(dev));
        /* the runtime on a context of this device */
        H.set_current(H.new_ctx(dev));
        rtmalloc = cudaMalloc(&p, 64);
        rtset = cudaSetDevice(dev);
        printf("DEV %d get=%d name=%d create=%d alloc=%d stream=%d setcur=%d rtmalloc=%d rtset=%d\n", dev, get, nm,
               create, alloc, stream, setcur, rtmalloc, rtset);
    }
}

/* With watch_stdin, the loop also ends when stdin reaches end of file (a clean exit on request). */
static int stdin_closed(void)
{
    struct pollfd p = { STDIN_FILENO, POLLIN, 0 };
    char c;

    return poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP)) && read(STDIN_FILENO, &c, 1) <= 0;
}

static void run_loop(double seconds, int watch_stdin)
{
    CUcontext a = (CUcontext)H.setup(0), b = (CUcontext)H.new_ctx(2);
    int last[4] = { -1, -1, -1, -1 };
    double t0 = now_ms();

    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d\n", (int)getpid());
    while (now_ms() - t0 < seconds * 1e3 && !(watch_stdin && stdin_closed())) {
        int cur[4], n;
        CUdeviceptr d;
        CUcontext f = NULL;

        cur[0] = cuCtxSetCurrent(a);
        if (cur[0] == 0)
            cur[0] = cuMemAlloc_v2(&d, 64);
        cur[1] = cuCtxSetCurrent(b);
        if (cur[1] == 0)
            cur[1] = cuMemAlloc_v2(&d, 64);
        cur[2] = cuDeviceGetCount(&n);
        cur[3] = cuCtxCreate_v2(&f, 0, 0);
        if (cur[3] == 0) {
            cur[3] = cuMemAlloc_v2(&d, 64);
            if (cuCtxDestroy_v2(f) != 0 && cur[3] == 0)
                cur[3] = -2;
        }
        if (memcmp(cur, last, sizeof(cur)) != 0) {
            printf("STATE t=%.1f A=%d B=%d N=%d F=%d\n", now_ms() - t0, cur[0], cur[1], cur[2], cur[3]);
            memcpy(last, cur, sizeof(cur));
        }
        sleep_ms(2);
    }
    printf("DONE\n");
}

static int cmd_forkloop(double seconds, int watch_stdin)
{
    int n, status;
    pid_t pid;

    H.setup(0);
    printf("PARENT count=%d\n", cuDeviceGetCount(&n));
    fflush(stdout);
    pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        run_loop(seconds, watch_stdin);
        fflush(stdout);
        _exit(0);
    }
    if (waitpid(pid, &status, 0) < 0)
        die("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 3;
}

static void cmd_first_failure(double seconds)
{
    double t0 = now_ms();
    long calls = 0;
    CUdeviceptr d;

    H.setup(0);
    while (now_ms() - t0 < seconds * 1e3) {
        int rc = cuMemAlloc_v2(&d, 64);
        calls++;
        if (rc != 0) {
            printf("FIRST ms=%.1f rc=%d calls=%ld\n", now_ms() - t0, rc, calls);
            return;
        }
        sleep_ms(5);
    }
    printf("FIRST none calls=%ld\n", calls);
}

static void cmd_prefix(void *cuda)
{
    void *h = NULL, *p;
    const void *table = NULL;
    const char *str = NULL;
    unsigned long before;
    Dl_info info;
    int rc;

    H.setup(0);
    rc = cudnnCreate(&h);
    p = dlsym(RTLD_DEFAULT, "cudnnCreate");
    printf("PREFIX cudnn rc=%d same=%d calls=%lu\n", rc, p == (void *)cudnnCreate, cudnn_calls);
    rc = ((int (*)(void **))p)(&h);
    printf("PREFIX cudnn_dlsym rc=%d calls=%lu\n", rc, cudnn_calls);

    before = H.calls("cuGetExportTable");
    rc = cuGetExportTable(&table, &S.uuid);
    printf("PREFIX export_table rc=%d sentinel=%d delta=%lu\n", rc, table == H.export_table(),
           H.calls("cuGetExportTable") - before);
    p = need_sym(cuda, "cuGetExportTable");
    printf("PREFIX export_table_dlsym in_driver=%d\n",
           dladdr(p, &info) != 0 && info.dli_fname != NULL && strstr(info.dli_fname, "libcuda.so.1") != NULL);
    p = NULL;
    rc = cuGetProcAddress_v2("cuGetExportTable", &p, 12000, 0, &S.i);
    printf("PREFIX export_table_gpa rc=%d same=%d\n", rc, p == H.lookup("cuGetExportTable", 12000, 0));
    rc = ((CUresult(*)(const void **, const CUuuid *))p)(&table, &S.uuid);
    printf("PREFIX export_table_gpa_call rc=%d sentinel=%d\n", rc, table == H.export_table());

    before = H.calls("cuGetErrorString");
    rc = cuGetErrorString(100, &str);
    printf("PREFIX error_string rc=%d delta=%lu\n", rc, H.calls("cuGetErrorString") - before);
    printf("PREFIX runtime_error_string ok=%d\n", strcmp(cudaGetErrorString(100), "no CUDA-capable device is detected") == 0);
    rc = cudaRuntimeGetVersion(&S.i);
    printf("PREFIX runtime_version rc=%d version=%d\n", rc, S.i);
    /* RTLD_NEXT from the executable finds the next definition after it: the preloaded shim's. Only
     * true if the shim's dlsym hands RTLD_NEXT to the real dlsym by a tail call. */
    printf("PREFIX rtld_next same=%d\n", dlsym(RTLD_NEXT, "cuInit") == dlsym(RTLD_DEFAULT, "cuInit"));
}

int main(int argc, char **argv)
{
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    void *cudart = dlopen("libcudart.so.12", RTLD_NOW | RTLD_NOLOAD);
    const char *cmd = argc > 1 ? argv[1] : "";

    if (cuda == NULL || cudart == NULL)
        die("the fake libraries are not loaded");
    load_helpers(cuda, cudart);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(cmd, "driver") == 0 && argc > 2)
        cmd_rows(argv[2], 0, cuda, cudart);
    else if (strcmp(cmd, "runtime") == 0 && argc > 2)
        cmd_rows(argv[2], 1, cuda, cudart);
    else if (strcmp(cmd, "call") == 0 && argc > 3)
        cmd_call(argv[2], atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 0);
    else if (strcmp(cmd, "devices") == 0)
        cmd_devices();
    else if (strcmp(cmd, "loop") == 0 && argc > 2)
        run_loop(atof(argv[2]), argc > 3 && strcmp(argv[3], "stdin") == 0);
    else if (strcmp(cmd, "forkloop") == 0 && argc > 2)
        return cmd_forkloop(atof(argv[2]), argc > 3 && strcmp(argv[3], "stdin") == 0);
    else if (strcmp(cmd, "first-failure") == 0 && argc > 2)
        cmd_first_failure(atof(argv[2]));
    else if (strcmp(cmd, "prefix") == 0)
        cmd_prefix(cuda);
    else
        die("usage: client_symbols driver|runtime|call|devices|loop|forkloop|first-failure|prefix ...");
    return 0;
}
