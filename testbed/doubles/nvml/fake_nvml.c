/*
 * TEST DOUBLE: a fake NVIDIA Management Library (libnvidia-ml.so.1).
 *
 * The real nvidia-ml-py (pynvml) dlopens "libnvidia-ml.so.1" and resolves each function
 * by name, so this library only has to export the symbols our GPU probe reaches, with
 * NVML's C signatures and struct layouts. It describes GPUs from a text file
 * ($FAKE_NVML_CONFIG, default /etc/fake-nvml.conf), read at nvmlInit time:
 *
 *   driver_version = 595.45.04          cuda_driver_version = 13020
 *   nvml_version = 13.595.45.04         init_error = 9   (nvmlInit fails with this code)
 *   not_supported = nvmlDeviceGetEccMode nvmlDeviceGetPersistenceMode   (all GPUs)
 *   fail.nvmlDeviceGetName = 15         (any function, any NVML return code)
 *   gpu.0.name = ...   gpu.0.uuid = ...   gpu.0.cc = 12.0
 *   gpu.0.mem_total = <bytes>   gpu.0.mem_free = <bytes>
 *   gpu.0.persistence = 1       gpu.0.ecc = <current> <pending>
 *   gpu.0.pcie = <gen> <max gen> <width> <max width>
 *   gpu.0.pci_bus = 00000000:01:00.0
 *   gpu.0.proc = <pid> <used bytes>               (repeat for more processes)
 *   gpu.0.not_supported = nvmlDeviceGetEccMode    (this GPU only)
 *   p2p.0.1 = <read> <write> <nvlink> <topology>  (NVML_P2P_STATUS_* codes, topology level)
 *
 * A missing config file makes nvmlInit fail with NVML_ERROR_DRIVER_NOT_LOADED, which is
 * what a host with the user-space library but no kernel module looks like.
 * Build: gcc -shared -fPIC -O2 -o libnvidia-ml.so.1 fake_nvml.c
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_NO_PERMISSION = 4, NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7, NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15, NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25, NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 16
#define MAX_PROCS 16
#define MAX_FAILS 32
#define LIST_LEN 1024
#define NVML_MEMORY_V2 0x02000028u /* sizeof(nvmlMemory_v2_t) | 2 << 24, as in nvml.h */

/* Layouts match nvml.h (and pynvml's ctypes mirrors of it). */
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct { unsigned int pid; unsigned long long used; } proc_t;

typedef struct gpu {
    int index;
    char name[96], uuid[96], pci_bus[32];
    int cc_major, cc_minor;
    unsigned long long mem_total, mem_free;
    unsigned int persistence, ecc_current, ecc_pending;
    unsigned int pcie_gen, pcie_gen_max, pcie_width, pcie_width_max;
    int nprocs;
    proc_t procs[MAX_PROCS];
    char not_supported[LIST_LEN];
} gpu_t;
typedef gpu_t *nvmlDevice_t;

static struct {
    int initialized;
    char driver[80], nvml[80];
    int cuda_driver;
    int ngpus;
    gpu_t gpus[MAX_GPUS];
    int p2p[MAX_GPUS][MAX_GPUS][4]; /* read, write, nvlink, topology */
    char not_supported[LIST_LEN];
    int nfails;
    struct { char fn[96]; int code; } fails[MAX_FAILS];
} S;

/* ---- config ------------------------------------------------------------------------- */

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
    return s;
}

static void copy(char *dst, size_t n, const char *src) { snprintf(dst, n, "%s", src); }

static void reset_defaults(void) {
    memset(&S, 0, sizeof S);
    copy(S.driver, sizeof S.driver, "595.45.04");
    copy(S.nvml, sizeof S.nvml, "13.595.45.04");
    S.cuda_driver = 13020;
    for (int a = 0; a < MAX_GPUS; a++)
        for (int b = 0; b < MAX_GPUS; b++) {
            S.p2p[a][b][0] = S.p2p[a][b][1] = 0; /* OK */
            S.p2p[a][b][2] = 5;                  /* NVML_P2P_STATUS_NOT_SUPPORTED: no NVLink */
            S.p2p[a][b][3] = 30;                 /* NVML_TOPOLOGY_HOSTBRIDGE */
        }
    for (int i = 0; i < MAX_GPUS; i++) {
        gpu_t *g = &S.gpus[i];
        g->index = i;
        snprintf(g->name, sizeof g->name, "Fake GPU");
        snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-0000-0000-0000-%012d", i);
        snprintf(g->pci_bus, sizeof g->pci_bus, "00000000:%02X:00.0", i + 1);
        g->cc_major = 12;
        g->persistence = 1;
        g->pcie_gen = g->pcie_gen_max = 5;
        g->pcie_width = g->pcie_width_max = 16;
    }
}

static void set_gpu(gpu_t *g, const char *field, const char *v) {
    if (!strcmp(field, "name")) copy(g->name, sizeof g->name, v);
    else if (!strcmp(field, "uuid")) copy(g->uuid, sizeof g->uuid, v);
    else if (!strcmp(field, "pci_bus")) copy(g->pci_bus, sizeof g->pci_bus, v);
    else if (!strcmp(field, "cc")) sscanf(v, "%d.%d", &g->cc_major, &g->cc_minor);
    else if (!strcmp(field, "mem_total")) g->mem_total = strtoull(v, NULL, 10);
    else if (!strcmp(field, "mem_free")) g->mem_free = strtoull(v, NULL, 10);
    else if (!strcmp(field, "persistence")) g->persistence = (unsigned)atoi(v);
    else if (!strcmp(field, "ecc")) sscanf(v, "%u %u", &g->ecc_current, &g->ecc_pending);
    else if (!strcmp(field, "pcie"))
        sscanf(v, "%u %u %u %u", &g->pcie_gen, &g->pcie_gen_max, &g->pcie_width, &g->pcie_width_max);
    else if (!strcmp(field, "not_supported")) copy(g->not_supported, sizeof g->not_supported, v);
    else if (!strcmp(field, "proc") && g->nprocs < MAX_PROCS) {
        proc_t *p = &g->procs[g->nprocs];
        if (sscanf(v, "%u %llu", &p->pid, &p->used) == 2) g->nprocs++;
    }
}

static int load_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    FILE *f = fopen(path && *path ? path : "/etc/fake-nvml.conf", "r");
    reset_defaults();
    if (!f) return NVML_ERROR_DRIVER_NOT_LOADED;
    char line[2048];
    int init_error = NVML_SUCCESS, max_index = -1;
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        char *k = trim(line), *v = trim(eq + 1);
        int a, b, n = 0;
        if (!strcmp(k, "driver_version")) copy(S.driver, sizeof S.driver, v);
        else if (!strcmp(k, "nvml_version")) copy(S.nvml, sizeof S.nvml, v);
        else if (!strcmp(k, "cuda_driver_version")) S.cuda_driver = atoi(v);
        else if (!strcmp(k, "init_error")) init_error = atoi(v);
        else if (!strcmp(k, "not_supported")) copy(S.not_supported, sizeof S.not_supported, v);
        else if (!strncmp(k, "fail.", 5) && S.nfails < MAX_FAILS) {
            copy(S.fails[S.nfails].fn, sizeof S.fails[0].fn, k + 5);
            S.fails[S.nfails++].code = atoi(v);
        } else if (sscanf(k, "gpu.%d.%n", &a, &n) == 1 && n > 0 && a >= 0 && a < MAX_GPUS) {
            set_gpu(&S.gpus[a], k + n, v);
            if (a > max_index) max_index = a;
        } else if (sscanf(k, "p2p.%d.%d", &a, &b) == 2 && a >= 0 && b >= 0 && a < MAX_GPUS &&
                   b < MAX_GPUS) {
            int *s = S.p2p[a][b];
            sscanf(v, "%d %d %d %d", &s[0], &s[1], &s[2], &s[3]);
            memcpy(S.p2p[b][a], s, sizeof S.p2p[a][b]); /* P2P status is symmetric */
        }
    }
    fclose(f);
    S.ngpus = max_index + 1;
    return init_error;
}

/* Does the space/comma separated list contain this exact function name? */
static int listed(const char *list, const char *fn) {
    size_t n = strlen(fn);
    for (const char *p = strstr(list, fn); p; p = strstr(p + 1, fn)) {
        int starts = p == list || p[-1] == ' ' || p[-1] == ',' || p[-1] == '\t';
        int ends = p[n] == 0 || p[n] == ' ' || p[n] == ',' || p[n] == '\t';
        if (starts && ends) return 1;
    }
    return 0;
}

/* The configured failure for this call, or NVML_SUCCESS. */
static int fault(const char *fn, const gpu_t *g) {
    if (!S.initialized) return NVML_ERROR_UNINITIALIZED;
    for (int i = 0; i < S.nfails; i++)
        if (!strcmp(S.fails[i].fn, fn)) return S.fails[i].code;
    if (listed(S.not_supported, fn) || (g && listed(g->not_supported, fn)))
        return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

static int valid(nvmlDevice_t d) {
    return d >= &S.gpus[0] && d < &S.gpus[S.ngpus];
}

static int put_string(char *buf, unsigned int len, const char *s) {
    if (!buf) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, s);
    return NVML_SUCCESS;
}

/* Boilerplate every device call shares: configured fault, then handle check. */
#define DEVICE_CALL(fn, dev)                        \
    int rc_ = fault(fn, valid(dev) ? (dev) : NULL); \
    if (rc_) return rc_;                            \
    if (!valid(dev)) return NVML_ERROR_INVALID_ARGUMENT

/* ---- init, errors, system --------------------------------------------------------- */

EXPORT int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    if (S.initialized) { S.initialized++; return NVML_SUCCESS; }
    int rc = load_config();
    if (rc) return rc;
    S.initialized = 1;
    return NVML_SUCCESS;
}
EXPORT int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT int nvmlInit(void) { return nvmlInitWithFlags(0); }

EXPORT int nvmlShutdown(void) {
    if (!S.initialized) return NVML_ERROR_UNINITIALIZED;
    S.initialized--;
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

EXPORT int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    int rc = fault("nvmlSystemGetDriverVersion", NULL);
    return rc ? rc : put_string(version, length, S.driver);
}

EXPORT int nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    int rc = fault("nvmlSystemGetNVMLVersion", NULL);
    return rc ? rc : put_string(version, length, S.nvml);
}

static int cuda_version(const char *fn, int *v) {
    int rc = fault(fn, NULL);
    if (rc) return rc;
    if (!v) return NVML_ERROR_INVALID_ARGUMENT;
    *v = S.cuda_driver;
    return NVML_SUCCESS;
}
EXPORT int nvmlSystemGetCudaDriverVersion(int *v) { return cuda_version("nvmlSystemGetCudaDriverVersion", v); }
EXPORT int nvmlSystemGetCudaDriverVersion_v2(int *v) { return cuda_version("nvmlSystemGetCudaDriverVersion_v2", v); }

/* ---- device enumeration ------------------------------------------------------------- */

static int device_count(const char *fn, unsigned int *count) {
    int rc = fault(fn, NULL);
    if (rc) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned)S.ngpus;
    return NVML_SUCCESS;
}
EXPORT int nvmlDeviceGetCount_v2(unsigned int *c) { return device_count("nvmlDeviceGetCount_v2", c); }
EXPORT int nvmlDeviceGetCount(unsigned int *c) { return device_count("nvmlDeviceGetCount", c); }

static int handle_by_index(const char *fn, unsigned int index, nvmlDevice_t *device) {
    int rc = fault(fn, index < (unsigned)S.ngpus ? &S.gpus[index] : NULL);
    if (rc) return rc;
    if (!device || index >= (unsigned)S.ngpus) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &S.gpus[index];
    return NVML_SUCCESS;
}
EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) { return handle_by_index("nvmlDeviceGetHandleByIndex_v2", i, d); }
EXPORT int nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) { return handle_by_index("nvmlDeviceGetHandleByIndex", i, d); }

EXPORT int nvmlDeviceGetIndex(nvmlDevice_t dev, unsigned int *index) {
    DEVICE_CALL("nvmlDeviceGetIndex", dev);
    if (!index) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned)dev->index;
    return NVML_SUCCESS;
}

/* ---- per-device properties ---------------------------------------------------------- */

EXPORT int nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length) {
    DEVICE_CALL("nvmlDeviceGetName", dev);
    return put_string(name, length, dev->name);
}

EXPORT int nvmlDeviceGetUUID(nvmlDevice_t dev, char *uuid, unsigned int length) {
    DEVICE_CALL("nvmlDeviceGetUUID", dev);
    return put_string(uuid, length, dev->uuid);
}

EXPORT int nvmlDeviceGetCudaComputeCapability(nvmlDevice_t dev, int *major, int *minor) {
    DEVICE_CALL("nvmlDeviceGetCudaComputeCapability", dev);
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = dev->cc_major;
    *minor = dev->cc_minor;
    return NVML_SUCCESS;
}

static unsigned long long used_bytes(const gpu_t *g) {
    return g->mem_total > g->mem_free ? g->mem_total - g->mem_free : 0;
}

EXPORT int nvmlDeviceGetMemoryInfo(nvmlDevice_t dev, nvmlMemory_t *mem) {
    DEVICE_CALL("nvmlDeviceGetMemoryInfo", dev);
    if (!mem) return NVML_ERROR_INVALID_ARGUMENT;
    mem->total = dev->mem_total;
    mem->free = dev->mem_free;
    mem->used = used_bytes(dev);
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t dev, nvmlMemory_v2_t *mem) {
    DEVICE_CALL("nvmlDeviceGetMemoryInfo_v2", dev);
    if (!mem) return NVML_ERROR_INVALID_ARGUMENT;
    if (mem->version != NVML_MEMORY_V2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    mem->total = dev->mem_total;
    mem->reserved = 0;
    mem->free = dev->mem_free;
    mem->used = used_bytes(dev);
    return NVML_SUCCESS;
}

static int get_uint(const char *fn, nvmlDevice_t dev, unsigned int *out, unsigned int value) {
    DEVICE_CALL(fn, dev);
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    *out = value;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetPersistenceMode(nvmlDevice_t dev, unsigned int *mode) {
    return get_uint("nvmlDeviceGetPersistenceMode", dev, mode, valid(dev) ? dev->persistence : 0);
}
EXPORT int nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t dev, unsigned int *v) {
    return get_uint("nvmlDeviceGetCurrPcieLinkGeneration", dev, v, valid(dev) ? dev->pcie_gen : 0);
}
EXPORT int nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t dev, unsigned int *v) {
    return get_uint("nvmlDeviceGetMaxPcieLinkGeneration", dev, v, valid(dev) ? dev->pcie_gen_max : 0);
}
EXPORT int nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t dev, unsigned int *v) {
    return get_uint("nvmlDeviceGetCurrPcieLinkWidth", dev, v, valid(dev) ? dev->pcie_width : 0);
}
EXPORT int nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t dev, unsigned int *v) {
    return get_uint("nvmlDeviceGetMaxPcieLinkWidth", dev, v, valid(dev) ? dev->pcie_width_max : 0);
}

EXPORT int nvmlDeviceGetEccMode(nvmlDevice_t dev, unsigned int *current, unsigned int *pending) {
    DEVICE_CALL("nvmlDeviceGetEccMode", dev);
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    *current = dev->ecc_current;
    *pending = dev->ecc_pending;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetPciInfo_v3(nvmlDevice_t dev, nvmlPciInfo_t *pci) {
    DEVICE_CALL("nvmlDeviceGetPciInfo_v3", dev);
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    copy(pci->busId, sizeof pci->busId, dev->pci_bus);
    unsigned int function = 0;
    sscanf(dev->pci_bus, "%x:%x:%x.%x", &pci->domain, &pci->bus, &pci->device, &function);
    /* The legacy field holds the short form, "0000:01:00.0". */
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.%x", pci->domain & 0xffff,
             pci->bus & 0xff, pci->device & 0x1f, function & 0x7);
    pci->pciDeviceId = 0x2bb510de; /* NVIDIA vendor id in the low half */
    return NVML_SUCCESS;
}

/* NVML's two-call protocol: ask with too small a buffer, get the count and
 * NVML_ERROR_INSUFFICIENT_SIZE, then call again with room for it. */
EXPORT int nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t dev, unsigned int *count,
                                                   nvmlProcessInfo_t *infos) {
    DEVICE_CALL("nvmlDeviceGetComputeRunningProcesses_v3", dev);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int room = *count;
    *count = (unsigned)dev->nprocs;
    if (dev->nprocs == 0) return NVML_SUCCESS;
    if (!infos || room < (unsigned)dev->nprocs) return NVML_ERROR_INSUFFICIENT_SIZE;
    for (int i = 0; i < dev->nprocs; i++) {
        infos[i].pid = dev->procs[i].pid;
        infos[i].usedGpuMemory = dev->procs[i].used;
        infos[i].gpuInstanceId = infos[i].computeInstanceId = 0xFFFFFFFFu; /* no MIG */
    }
    return NVML_SUCCESS;
}

/* ---- pairs of devices --------------------------------------------------------------- */

EXPORT int nvmlDeviceGetP2PStatus(nvmlDevice_t a, nvmlDevice_t b, int index, int *status) {
    int rc = fault("nvmlDeviceGetP2PStatus", NULL);
    if (rc) return rc;
    if (!valid(a) || !valid(b) || !status) return NVML_ERROR_INVALID_ARGUMENT;
    if (index < 0 || index > 5) return NVML_ERROR_INVALID_ARGUMENT;
    *status = index <= 2 ? S.p2p[a->index][b->index][index] : 5 /* NOT_SUPPORTED */;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t a, nvmlDevice_t b, int *level) {
    int rc = fault("nvmlDeviceGetTopologyCommonAncestor", NULL);
    if (rc) return rc;
    if (!valid(a) || !valid(b) || !level) return NVML_ERROR_INVALID_ARGUMENT;
    *level = a == b ? 0 : S.p2p[a->index][b->index][3];
    return NVML_SUCCESS;
}
