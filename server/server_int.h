/* Internals shared by the server's files: the repository's models and their counters. */
#ifndef KILN_SERVER_INT_H
#define KILN_SERVER_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "codec.h"
#include "kiln_server.h"

/* Latency histogram bounds in seconds (Prometheus convention), plus +Inf. */
#define SRV_HIST_N 16
extern const double srv_hist_bounds[SRV_HIST_N];

typedef struct srv_hist {
  atomic_uint_least64_t bucket[SRV_HIST_N + 1]; /* non-cumulative; the last is +Inf */
  atomic_uint_least64_t count, sum_ns;
} srv_hist;

void srv_hist_add(srv_hist *h, uint64_t ns);

/* Why a request failed, for the failure counters. */
typedef enum srv_fail {
  SRV_FAIL_BAD_REQUEST,
  SRV_FAIL_REJECTED,   /* queue full or breaker open */
  SRV_FAIL_CANCELLED,  /* client gone or shutdown */
  SRV_FAIL_DEADLINE,
  SRV_FAIL_INTERNAL,
  SRV_FAIL_COUNT
} srv_fail;
extern const char *const srv_fail_names[SRV_FAIL_COUNT];

typedef struct srv_version {
  int64_t number;
  char label[24]; /* the number as text */
  kiln_runtime_model *rm; /* owned by the runtime; NULL once unloaded */
  uint64_t stamp; /* model.onnx and config.json as they were loaded, to tell a changed file */
  atomic_uint_least64_t ok, ok_ns, fail_ns, last_ms;
  atomic_uint_least64_t fail[SRV_FAIL_COUNT];
  srv_hist queue, compute;
} srv_version;

/* One entry of config.json's `input` or `output` list (Triton's ModelInput / ModelOutput): it may
   only restate or narrow what the model says, never contradict it. */
#define SRV_MAX_IO 32
typedef struct srv_io_override {
  char name[128];
  kiln_dtype dtype; /* KILN_DTYPE_UNDEFINED when not given */
  int rank;         /* -1 when dims are not given, else the full rank (batch dim included) */
  int64_t dims[KILN_MAX_RANK]; /* -1 = variable; with max_batch_size > 0, dims[0] is the batch */
} srv_io_override;

typedef struct srv_config {
  size_t max_batch_size;
  int64_t max_queue_delay_us;
  size_t instance_count;    /* contexts; 0 = one per worker */
  int default_priority;     /* 1..4 */
  int64_t default_timeout_us; /* 0 = the runtime's default */
  /* Triton's queue policy per priority level (index 0 = priority 1): queued requests allowed
     (0 = no limit of the model's own), timeout when the request sets none, whether a request's
     own timeout counts. */
  size_t max_queue_size[KILN_PRIORITY_COUNT];
  int64_t level_timeout_us[KILN_PRIORITY_COUNT];
  bool allow_timeout_override[KILN_PRIORITY_COUNT];
  int opt_level;
  char backends[8][16];
  size_t n_backends;
  int latest_n;             /* version policy: newest N (0 = use `specific`) */
  int64_t specific[16];
  size_t n_specific;
  int all_versions;
  kiln_runtime_model_opts breaker; /* only its breaker_* fields */
  srv_io_override io[2][SRV_MAX_IO]; /* [0] inputs, [1] outputs */
  size_t n_io[2];
} srv_config;

/* The model's own description of input (out = 0) or output (out = 1) `io`, with the config's
   narrowing applied: a dimension the model leaves variable and the config fixes reads fixed. */
void srv_config_apply_io(const srv_config *c, int out, kiln_io_info *io);

/* Models and versions are allocated one by one and kept until shutdown, even when unloaded:
   in-flight requests hold pointers to them. They are small: an unloaded or replaced version's
   runtime model (weights, sessions) is handed to kiln_runtime_model_unload, which frees it once
   its in-flight requests complete, and its `rm` is cleared. */
typedef struct srv_model {
  char *name;
  srv_config cfg;
  char error[512]; /* why the model (or a version) is not ready; "" when all loaded */
  bool unloaded;   /* by request, or its directory went away */
  bool loading;    /* a load is compiling it now (off the HTTP thread) */
  uint64_t stamp;  /* the directory's state at the last load (for polling) */
  size_t n_versions;
  srv_version **versions; /* served ones, ascending by number */
  size_t n_all, cap_all;
  srv_version **all; /* every version ever loaded (owned) */
} srv_model;

typedef struct srv_repo {
  char *dir;
  kiln_runtime *rt;
  pthread_mutex_t *mu; /* the server's rt_mu: readers of the table hold it */
  FILE *log;
  size_t n, cap;
  srv_model **models; /* sorted by name */
  /* Test-only: KILN_SERVE_TEST_LOAD_DELAY=MODEL:MS makes every load of MODEL take MS longer (a
     sleep where it compiles, with the same locks held), so a test can hold a load in progress
     deterministically. Not for production use. */
  char test_delay_model[128];
  unsigned test_delay_ms;
} srv_repo;

/* The table changes only through the calls below, which the caller serialises among themselves
   (the server's load_mu; one control operation at a time) and calls without `mu`: they take it
   only to publish a change, and compile models without it, so the HTTP thread keeps serving the
   other models while one loads. */

/* Scans and loads `dir` into `rt`. Fails only when the directory cannot be read; a bad model
   is kept with its error. */
kiln_status srv_repo_load(srv_repo *r, const char *dir, kiln_runtime *rt, pthread_mutex_t *mu,
                          FILE *log, kiln_error *err);
/* (Re)loads DIR/<name> by its current files: versions whose files did not change are kept,
   changed ones loaded anew (a failed reload keeps the old one serving). `config`, when not
   NULL, is JSON used instead of DIR/<name>/config.json (Triton's parameters.config on load).
   Returns 0 when the model serves with no error, else -1 with the reason in `why`. */
int srv_repo_load_model(srv_repo *r, const char *name, const char *config, char *why, size_t cap);
/* Stops routing to the model; -1 when the repository never had it. */
int srv_repo_unload_model(srv_repo *r, const char *name);
/* One polling pass: loads new and changed models, unloads those whose directory is gone. */
void srv_repo_poll(srv_repo *r);
void srv_repo_free(srv_repo *r);
srv_model *srv_repo_find(const srv_repo *r, const char *name);
/* The version asked for (NULL or "" = the newest loaded); NULL when not loaded. */
srv_version *srv_model_version(const srv_model *m, const char *version);

/* GET /metrics and GET /v2/models/{m}/stats bodies. */
void srv_metrics_write(const srv_repo *r, srv_buf *b);
void srv_stats_write(const srv_model *m, const srv_version *only, srv_buf *b);

#endif
