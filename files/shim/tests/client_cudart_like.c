/*
 * client_cudart_like.c -- reaches the driver the way the CUDA runtime does, without linking it:
 * dlopen("libcuda.so.1"), dlsym(handle, "cuGetProcAddress_v2"), then every function by base name,
 * CUDA version and stream flag; or through the runtime's cudaGetDriverEntryPoint[ByVersion].
 *
 *   cc -O2 -o client_cudart_like client_cudart_like.c -ldl
 *
 * Commands (one record per stdout line):
 *   gpa v1|v2         every entry point by its own version (CALL), then every base name at the
 *                     newest version, default and per-thread flags (NEWEST)
 *   gdep [deepbind]   the same through libcudart.so.12's cudaGetDriverEntryPoint[ByVersion], plus
 *                     the runtime's own functions through dlsym on its handle; with deepbind the
 *                     runtime is loaded RTLD_DEEPBIND, so it binds the real driver and dlsym directly
 *   future            cuEventQuery, first at a version newer than the shim's table (the fake's
 *                     cuEventQuery_v99 answers), then at CUDA 13.5 (FUTURE)
 */
#include "client_common.h"

typedef CUresult (*gpa1_t)(const char *, void **, int, cuuint64_t);
typedef CUresult (*gpa2_t)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

static gpa1_t gpa1;
static gpa2_t gpa2;
static pfn_cudaGetDriverEntryPoint gdep;
static pfn_cudaGetDriverEntryPointByVersion gdepv;

enum { VIA_GPA1, VIA_GPA2, VIA_GDEP, VIA_GDEPV };

static int lookup(int via, const char *base, int ver, int flags, void **p)
{
    CUdriverProcAddressQueryResult st = -1;

    *p = NULL;
    switch (via) {
    case VIA_GPA1:
        return gpa1(base, p, ver, (cuuint64_t)flags);
    case VIA_GPA2:
        return gpa2(base, p, ver, (cuuint64_t)flags, &st);
    case VIA_GDEP:
        return gdep(base, p, (unsigned long long)flags, &st);
    default:
        return gdepv(base, p, (unsigned int)ver, (unsigned long long)flags, &st);
    }
}

static const char *const via_names[] = { "gpa1", "gpa2", "gdep", "gdepv" };

/* Every driver row, fetched by its base name at its own version (so each exact variant is asked
 * for), then called. wrapped=1: the pointer is not the driver's own answer. */
static void by_own_version(int via)
{
    int i;

    H.setup(0);
    for (i = 0; i < N_ROWS; i++) {
        char base[128], extra[64];
        int pt, flags, rc;
        void *p, *raw;

        if (rows[i].group == GROUP_RUNTIME)
            continue;
        cuda_api_base_name(rows[i].name, base, sizeof(base), &pt);
        flags = pt ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : CU_GET_PROC_ADDRESS_DEFAULT;
        rc = lookup(via, base, rows[i].min_version, flags, &p);
        if (rc != 0 || p == NULL) {
            printf("CALL %s %s lookup_rc=%d\n", via_names[via], rows[i].name, rc);
            continue;
        }
        raw = H.lookup(base, rows[i].min_version, (unsigned long long)flags);
        snprintf(extra, sizeof(extra), "wrapped=%d", p != raw);
        if (rows[i].group == GROUP_LOOKUP) {
            /* the returned lookup function must itself hand out wrappers */
            rc = report_call(via_names[via], &rows[i], p, 0, extra);
            printf("INNER %s %s wrapped=%d\n", via_names[via], rows[i].name,
                   rc == 0 && S.ptr != NULL && S.ptr != H.lookup("cuInit", 12000, 0));
        } else {
            report_call(via_names[via], &rows[i], p, 0, extra);
        }
    }
}

/* Every base name at a recent version: the variant the driver picks must be the one called. */
static void newest(int via, int ver)
{
    int i, j, f;

    H.setup(0);
    for (i = 0; i < N_ROWS; i++) {
        char base[128], seen[128];
        int pt, dup = 0;

        if (rows[i].group != GROUP_COVERED)
            continue;
        cuda_api_base_name(rows[i].name, base, sizeof(base), &pt);
        for (j = 0; j < i && !dup; j++) {
            cuda_api_base_name(rows[j].name, seen, sizeof(seen), &pt);
            dup = strcmp(seen, base) == 0;
        }
        if (dup)
            continue;
        for (f = 0; f <= CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM; f += CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
            const struct row *want = expected_variant(base, ver, f);
            unsigned long before;
            void *p;
            int rc;

            if (want == NULL || lookup(via, base, ver, f, &p) != 0 || p == NULL) {
                printf("NEWEST %s %s flags=%d lookup_failed\n", via_names[via], base, f);
                continue;
            }
            prepare(0);
            before = H.calls(want->name);
            rc = want->thunk(p);
            printf("NEWEST %s %s flags=%d variant=%s rc=%d delta=%lu\n", via_names[via], base, f, want->name, rc,
                   H.calls(want->name) - before);
        }
    }
}

/* A base name asked for first at a version above anything the shim was checked against (so no
 * earlier lookup has shown the shim the driver's pointers), then at CUDA 13.5. */
static void future(void)
{
    static const int versions[] = { 99000, 13050 };
    size_t k;

    H.setup(0);
    for (k = 0; k < sizeof(versions) / sizeof(versions[0]); k++) {
        const struct row *want = expected_variant("cuEventQuery", versions[k], 0);
        unsigned long before;
        void *p = NULL;
        int rc = lookup(VIA_GPA2, "cuEventQuery", versions[k], 0, &p);

        if (want == NULL || rc != 0 || p == NULL) {
            printf("FUTURE ver=%d lookup_rc=%d\n", versions[k], rc);
            continue;
        }
        prepare(0);
        before = H.calls(want->name);
        rc = want->thunk(p);
        printf("FUTURE ver=%d variant=%s wrapped=%d rc=%d delta=%lu\n", versions[k], want->name,
               p != H.lookup("cuEventQuery", versions[k], 0), rc, H.calls(want->name) - before);
    }
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    void *cudart = NULL;
    int i;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (cuda == NULL)
        die("dlopen libcuda.so.1");
    if (strcmp(cmd, "gpa") == 0 && argc > 2) {
        load_helpers(cuda, NULL);
        gpa1 = (gpa1_t)need_sym(cuda, "cuGetProcAddress");
        gpa2 = (gpa2_t)need_sym(cuda, "cuGetProcAddress_v2");
        by_own_version(strcmp(argv[2], "v1") == 0 ? VIA_GPA1 : VIA_GPA2);
        newest(strcmp(argv[2], "v1") == 0 ? VIA_GPA1 : VIA_GPA2, 13050);
        newest(strcmp(argv[2], "v1") == 0 ? VIA_GPA1 : VIA_GPA2, 12080);
        newest(strcmp(argv[2], "v1") == 0 ? VIA_GPA1 : VIA_GPA2, 12000);
    } else if (strcmp(cmd, "gdep") == 0) {
        int deep = argc > 2 && strcmp(argv[2], "deepbind") == 0;
        cudart = dlopen("libcudart.so.12", RTLD_NOW | (deep ? RTLD_DEEPBIND : 0));
        if (cudart == NULL)
            die("dlopen libcudart.so.12");
        load_helpers(cuda, cudart);
        gdep = (pfn_cudaGetDriverEntryPoint)need_sym(cudart, "cudaGetDriverEntryPoint");
        gdepv = (pfn_cudaGetDriverEntryPointByVersion)need_sym(cudart, "cudaGetDriverEntryPointByVersion");
        by_own_version(VIA_GDEPV);
        newest(VIA_GDEP, FAKE_CUDART_VERSION);
        H.setup(0);
        for (i = 0; i < N_ROWS; i++)
            if (rows[i].group == GROUP_RUNTIME)
                report_call("rtdlsym", &rows[i], need_sym(cudart, rows[i].name), 0, NULL);
    } else if (strcmp(cmd, "future") == 0) {
        load_helpers(cuda, NULL);
        gpa2 = (gpa2_t)need_sym(cuda, "cuGetProcAddress_v2");
        future();
    } else {
        die("usage: client_cudart_like gpa v1|v2 | gdep [deepbind] | future");
    }
    return 0;
}
