/* The model repository: DIR/<model>/config.json and DIR/<model>/<version>/model.onnx, scanned
   at start and again on a load request or a polling pass. Entries are never freed before
   shutdown, so a request keeps its model and version pointers across a reload. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "server_int.h"

static void cfg_default(srv_config *c) {
  *c = (srv_config){.default_priority = 3, .opt_level = -1, .latest_n = 1};
  c->breaker = kiln_runtime_model_opts_default();
  for (int p = 0; p < KILN_PRIORITY_COUNT; p++) c->allow_timeout_override[p] = true;
}

static int get_int(const json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   char *why, size_t cap) {
  const json_t *v = json_object_get(o, key);
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
    snprintf(why, cap, "config.json: '%s' must be an integer in [%lld, %lld]", key,
             (long long)lo, (long long)hi);
    return -1;
  }
  *out = json_integer_value(v);
  return 0;
}

static int get_real(const json_t *o, const char *key, double *out, char *why, size_t cap) {
  const json_t *v = json_object_get(o, key);
  if (!v) return 0;
  if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1) {
    snprintf(why, cap, "config.json: '%s' must be a number in [0, 1]", key);
    return -1;
  }
  *out = json_number_value(v);
  return 0;
}

static int check_keys(const json_t *o, const char *const *keys, const char *where, char *why,
                      size_t cap);

/* One ModelQueuePolicy (Triton's shape) applied to the levels in [lo, hi). */
static int parse_policy(const json_t *p, srv_config *c, int lo, int hi, const char *where,
                        char *why, size_t cap) {
  static const char *const keys[] = {"timeout_action", "default_timeout_microseconds",
                                     "allow_timeout_override", "max_queue_size", NULL};
  if (!json_is_object(p)) {
    snprintf(why, cap, "config.json: %s must be an object", where);
    return -1;
  }
  char in[96];
  snprintf(in, sizeof in, " in %s", where);
  if (check_keys(p, keys, in, why, cap)) return -1;
  const json_t *act = json_object_get(p, "timeout_action");
  if (act && (!json_is_string(act) || strcmp(json_string_value(act), "REJECT"))) {
    snprintf(why, cap, "config.json: %s: timeout_action must be \"REJECT\" (DELAY is not supported)",
             where);
    return -1;
  }
  const json_t *ov = json_object_get(p, "allow_timeout_override");
  if (ov && !json_is_boolean(ov)) {
    snprintf(why, cap, "config.json: %s: allow_timeout_override must be true or false", where);
    return -1;
  }
  int64_t t = -1, q = -1;
  if (get_int(p, "default_timeout_microseconds", 0, INT64_MAX, &t, why, cap) ||
      get_int(p, "max_queue_size", 0, 1 << 30, &q, why, cap))
    return -1;
  for (int l = lo; l < hi; l++) {
    if (t >= 0) c->level_timeout_us[l] = t;
    if (q >= 0) c->max_queue_size[l] = (size_t)q;
    if (ov) c->allow_timeout_override[l] = json_is_true(ov);
  }
  return 0;
}

static int check_keys(const json_t *o, const char *const *keys, const char *where, char *why,
                      size_t cap) {
  const char *k;
  const json_t *v;
  json_object_foreach((json_t *)o, k, v) {
    int known = 0;
    for (const char *const *p = keys; *p; p++) known |= !strcmp(*p, k);
    if (!known) {
      snprintf(why, cap, "config.json: unknown key '%s'%s", k, where);
      return -1;
    }
  }
  return 0;
}

/* Triton's "TYPE_FP32" ... names: the protocol's names behind "TYPE_", STRING for BYTES. */
static kiln_dtype triton_dtype(const char *s) {
  if (strncmp(s, "TYPE_", 5)) return KILN_DTYPE_UNDEFINED;
  return srv_dtype_parse(!strcmp(s + 5, "STRING") ? "BYTES" : s + 5);
}

/* config.json's `input` (out = 0) or `output` (out = 1) list. With max_batch_size > 0 the dims
   exclude the batch dimension, as in Triton; they are stored with it (-1) in front. */
static int parse_io(const json_t *root, int out, srv_config *c, char *why, size_t cap) {
  const char *key = out ? "output" : "input";
  static const char *const keys[] = {"name", "data_type", "dims", NULL};
  const json_t *list = json_object_get(root, key), *e;
  if (!list) return 0;
  if (!json_is_array(list) || json_array_size(list) > SRV_MAX_IO) {
    snprintf(why, cap, "config.json: '%s' must be an array of at most %d entries", key, SRV_MAX_IO);
    return -1;
  }
  size_t i;
  int batch = c->max_batch_size > 0;
  json_array_foreach(list, i, e) {
    char where[48];
    snprintf(where, sizeof where, " in %s[%zu]", key, i);
    if (!json_is_object(e)) {
      snprintf(why, cap, "config.json: %s[%zu] must be an object", key, i);
      return -1;
    }
    if (check_keys(e, keys, where, why, cap)) return -1;
    srv_io_override *o = &c->io[out][i];
    *o = (srv_io_override){.dtype = KILN_DTYPE_UNDEFINED, .rank = -1};
    const json_t *name = json_object_get(e, "name"), *dt = json_object_get(e, "data_type"),
                 *dims = json_object_get(e, "dims");
    if (!json_is_string(name) || !json_string_value(name)[0] ||
        strlen(json_string_value(name)) >= sizeof o->name) {
      snprintf(why, cap, "config.json: %s[%zu] needs a 'name'", key, i);
      return -1;
    }
    strcpy(o->name, json_string_value(name));
    for (size_t k = 0; k < i; k++)
      if (!strcmp(c->io[out][k].name, o->name)) {
        snprintf(why, cap, "config.json: %s '%s' is listed twice", key, o->name);
        return -1;
      }
    if (dt && (!json_is_string(dt) ||
               (o->dtype = triton_dtype(json_string_value(dt))) == KILN_DTYPE_UNDEFINED)) {
      snprintf(why, cap, "config.json: %s '%s': data_type must be one of TYPE_BOOL, TYPE_UINT8.."
               "TYPE_UINT64, TYPE_INT8..TYPE_INT64, TYPE_FP16, TYPE_FP32, TYPE_FP64, TYPE_STRING",
               key, o->name);
      return -1;
    }
    if (dims) {
      if (!json_is_array(dims) || json_array_size(dims) + (size_t)batch > KILN_MAX_RANK) {
        snprintf(why, cap, "config.json: %s '%s': dims must be an array of at most %d integers",
                 key, o->name, KILN_MAX_RANK - batch);
        return -1;
      }
      o->rank = batch + (int)json_array_size(dims);
      if (batch) o->dims[0] = -1;
      size_t k;
      const json_t *d;
      json_array_foreach(dims, k, d) {
        if (!json_is_integer(d) || json_integer_value(d) < -1) {
          snprintf(why, cap, "config.json: %s '%s': dims must be integers >= 0, or -1 (variable)",
                   key, o->name);
          return -1;
        }
        o->dims[batch + k] = json_integer_value(d);
      }
    }
    c->n_io[out] = i + 1;
  }
  return 0;
}

/* Checks the config's input/output entries against a loaded model: a name the model lacks, a
   different dtype or rank, or a dimension that differs from one the model fixes is an error. */
static int check_io(const srv_config *c, const kiln_model *km, char *why, size_t cap) {
  for (int out = 0; out < 2; out++) {
    const char *key = out ? "output" : "input";
    size_t n = out ? kiln_model_output_count(km) : kiln_model_input_count(km);
    for (size_t i = 0; i < c->n_io[out]; i++) {
      const srv_io_override *o = &c->io[out][i];
      kiln_io_info io = {0};
      size_t k = 0;
      for (; k < n; k++) {
        kiln_status st = out ? kiln_model_output_info(km, k, &io) : kiln_model_input_info(km, k, &io);
        if (st == KILN_OK && !strcmp(io.name, o->name)) break;
      }
      if (k == n) {
        snprintf(why, cap, "config.json: the model has no %s named '%s'", key, o->name);
        return -1;
      }
      if (o->dtype != KILN_DTYPE_UNDEFINED && o->dtype != io.dtype) {
        const char *have = srv_dtype_name(io.dtype);
        snprintf(why, cap, "config.json: %s '%s' is %s in the config, %s in the model", key,
                 o->name, srv_dtype_name(o->dtype), have ? have : "a type the protocol lacks");
        return -1;
      }
      if (o->rank < 0 || io.rank < 0) continue;
      if (o->rank != io.rank) {
        snprintf(why, cap, "config.json: %s '%s' has %d dims in the config%s, %d in the model", key,
                 o->name, o->rank, c->max_batch_size ? " (with the batch dim)" : "", io.rank);
        return -1;
      }
      for (int d = 0; d < io.rank; d++)
        if (io.dims[d] >= 0 && o->dims[d] >= 0 && o->dims[d] != io.dims[d]) {
          snprintf(why, cap, "config.json: %s '%s' dim %d is %lld in the config, %lld in the model",
                   key, o->name, d, (long long)o->dims[d], (long long)io.dims[d]);
          return -1;
        }
    }
  }
  return 0;
}

void srv_config_apply_io(const srv_config *c, int out, kiln_io_info *io) {
  for (size_t i = 0; i < c->n_io[out]; i++) {
    const srv_io_override *o = &c->io[out][i];
    if (strcmp(o->name, io->name) || o->rank != io->rank) continue;
    for (int d = 0; d < io->rank; d++)
      if (io->dims[d] < 0 && o->dims[d] >= 0) io->dims[d] = o->dims[d];
    return;
  }
}

/* Strict: an unknown key is an error, so a typo does not silently fall back to a default. */
/* `text` (a load request's parameters.config), when given, stands in for the file. */
static int parse_config(const char *path, const char *text, srv_config *c, char *why, size_t cap) {
  cfg_default(c);
  struct stat sb;
  if (!text && stat(path, &sb) != 0) return 0; /* no config: defaults */
  json_error_t jerr;
  json_t *root = text ? json_loads(text, JSON_REJECT_DUPLICATES, &jerr)
                      : json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    snprintf(why, cap, "config.json line %d: %s", jerr.line, jerr.text);
    return -1;
  }
  int rc = -1;
  int64_t v;
  static const char *const keys[] = {"max_batch_size", "dynamic_batching", "instance_count",
                                     "default_priority", "default_timeout_microseconds",
                                     "optimization_level", "backends", "version_policy",
                                     "circuit_breaker", "input", "output", NULL};
  if (!json_is_object(root)) {
    snprintf(why, cap, "config.json must be an object");
    goto out;
  }
  if (check_keys(root, keys, "", why, cap)) goto out;
  v = 0;
  if (get_int(root, "max_batch_size", 0, 1 << 20, &v, why, cap)) goto out;
  c->max_batch_size = (size_t)v;
  const json_t *db = json_object_get(root, "dynamic_batching");
  if (db) {
    if (!json_is_object(db)) {
      snprintf(why, cap, "config.json: 'dynamic_batching' must be an object");
      goto out;
    }
    static const char *const dbkeys[] = {"max_queue_delay_microseconds", "default_queue_policy",
                                         "priority_queue_policy", NULL};
    if (check_keys(db, dbkeys, " in dynamic_batching", why, cap) ||
        get_int(db, "max_queue_delay_microseconds", 0, INT64_MAX, &c->max_queue_delay_us, why, cap))
      goto out;
  }
  v = 0;
  if (get_int(root, "instance_count", 0, 1024, &v, why, cap)) goto out;
  c->instance_count = (size_t)v;
  v = c->default_priority;
  if (get_int(root, "default_priority", 1, 4, &v, why, cap)) goto out;
  c->default_priority = (int)v;
  if (get_int(root, "default_timeout_microseconds", 0, INT64_MAX, &c->default_timeout_us, why, cap))
    goto out;
  for (int l = 0; l < KILN_PRIORITY_COUNT; l++) c->level_timeout_us[l] = c->default_timeout_us;
  /* Queue policies (after the model-wide timeout, which they refine per level). */
  const json_t *dq = db ? json_object_get(db, "default_queue_policy") : NULL;
  if (dq && parse_policy(dq, c, 0, KILN_PRIORITY_COUNT, "default_queue_policy", why, cap)) goto out;
  const json_t *pq = db ? json_object_get(db, "priority_queue_policy") : NULL;
  if (pq) {
    const char *k;
    const json_t *pv;
    if (!json_is_object(pq)) {
      snprintf(why, cap, "config.json: 'priority_queue_policy' must be an object keyed by level");
      goto out;
    }
    json_object_foreach((json_t *)pq, k, pv) {
      if (strlen(k) != 1 || k[0] < '1' || k[0] > '0' + KILN_PRIORITY_COUNT) {
        snprintf(why, cap, "config.json: priority_queue_policy key '%.40s' is not a priority 1..4", k);
        goto out;
      }
      char where[48];
      snprintf(where, sizeof where, "priority_queue_policy.%c", k[0]);
      if (parse_policy(pv, c, k[0] - '1', k[0] - '0', where, why, cap)) goto out;
    }
  }
  v = c->opt_level;
  if (get_int(root, "optimization_level", -1, 3, &v, why, cap)) goto out;
  c->opt_level = (int)v;
  const json_t *be = json_object_get(root, "backends");
  if (be) {
    size_t i;
    const json_t *e;
    if (!json_is_array(be) || json_array_size(be) > 8) {
      snprintf(why, cap, "config.json: 'backends' must be an array of at most 8 names");
      goto out;
    }
    json_array_foreach(be, i, e) {
      if (!json_is_string(e) || strlen(json_string_value(e)) >= sizeof c->backends[0]) {
        snprintf(why, cap, "config.json: 'backends' holds a bad name");
        goto out;
      }
      strcpy(c->backends[c->n_backends++], json_string_value(e));
    }
  }
  const json_t *vp = json_object_get(root, "version_policy");
  if (vp) {
    const json_t *lat = json_object_get(vp, "latest"), *spec = json_object_get(vp, "specific");
    if (!json_is_object(vp) || (!!lat + !!spec + !!json_object_get(vp, "all")) != 1) {
      snprintf(why, cap, "config.json: 'version_policy' needs one of latest, specific, all");
      goto out;
    }
    if (lat) {
      v = 1;
      if (get_int(lat, "num_versions", 1, 1 << 20, &v, why, cap)) goto out;
      c->latest_n = (int)v;
    } else if (spec) {
      const json_t *vs = json_object_get(spec, "versions"), *e;
      size_t i;
      if (!json_is_array(vs) || json_array_size(vs) > 16) {
        snprintf(why, cap, "config.json: 'specific' needs 'versions', at most 16");
        goto out;
      }
      json_array_foreach(vs, i, e) {
        if (!json_is_integer(e)) {
          snprintf(why, cap, "config.json: versions must be integers");
          goto out;
        }
        c->specific[c->n_specific++] = json_integer_value(e);
      }
      c->latest_n = 0;
    } else {
      c->all_versions = 1;
      c->latest_n = 0;
    }
  }
  const json_t *cb = json_object_get(root, "circuit_breaker");
  if (cb) {
    static const char *const cbkeys[] = {"window", "min_calls", "failure_rate", "slow_rate",
                                         "slow_call_microseconds", "cooldown_microseconds",
                                         "probes", NULL};
    kiln_runtime_model_opts *b = &c->breaker;
    int64_t w = 0, mc = 0, pr = (int64_t)b->breaker_probes;
    if (!json_is_object(cb) || check_keys(cb, cbkeys, " in circuit_breaker", why, cap) ||
        get_int(cb, "window", 0, 1 << 20, &w, why, cap) ||
        get_int(cb, "min_calls", 0, 1 << 20, &mc, why, cap) ||
        get_int(cb, "probes", 0, 1 << 20, &pr, why, cap) ||
        get_real(cb, "failure_rate", &b->breaker_failure_rate, why, cap) ||
        get_real(cb, "slow_rate", &b->breaker_slow_rate, why, cap) ||
        get_int(cb, "slow_call_microseconds", 0, INT64_MAX, &b->breaker_slow_call_us, why, cap) ||
        get_int(cb, "cooldown_microseconds", 0, INT64_MAX, &b->breaker_cooldown_us, why, cap)) {
      if (!why[0]) snprintf(why, cap, "config.json: 'circuit_breaker' must be an object");
      goto out;
    }
    b->breaker_window = (size_t)w;
    b->breaker_min_calls = (size_t)mc;
    b->breaker_probes = (size_t)pr;
  }
  if (parse_io(root, 0, c, why, cap) || parse_io(root, 1, c, why, cap)) goto out;
  rc = 0;
out:
  json_decref(root);
  return rc;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static int wanted(const srv_config *c, const int64_t *all, size_t n, size_t i) {
  if (c->all_versions) return 1;
  if (c->latest_n) return i + (size_t)c->latest_n >= n;
  for (size_t k = 0; k < c->n_specific; k++)
    if (c->specific[k] == all[i]) return 1;
  return 0;
}

/* FNV-1a over a file's identity and change time: 0 when it does not exist. */
static uint64_t mix(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; i++) h = (h ^ ((v >> (8 * i)) & 0xff)) * 1099511628211ull;
  return h;
}

static uint64_t file_stamp(uint64_t h, const char *path) {
  struct stat sb;
  if (stat(path, &sb) != 0) return mix(h, 0);
  h = mix(h, (uint64_t)sb.st_ino);
  h = mix(h, (uint64_t)sb.st_size);
  h = mix(h, (uint64_t)sb.st_mtim.tv_sec);
  return mix(h, (uint64_t)sb.st_mtim.tv_nsec);
}

/* The version numbers under DIR/<name>, ascending; the count (at most cap). */
static size_t scan_versions(const char *path, int64_t *nums, size_t cap) {
  DIR *d = opendir(path);
  size_t n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) && n < cap) {
    char *end;
    errno = 0;
    long long v = strtoll(e->d_name, &end, 10);
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || *end || errno || v < 1) continue;
    nums[n++] = v;
  }
  if (d) closedir(d);
  qsort(nums, n, sizeof nums[0], cmp_i64);
  return n;
}

/* The state of DIR/<name>: config.json and every version's model.onnx. */
static uint64_t model_stamp(const char *dir, const char *name) {
  char path[4096];
  int64_t nums[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  size_t n = scan_versions(path, nums, 256);
  snprintf(path, sizeof path, "%s/%s/config.json", dir, name);
  uint64_t h = file_stamp(14695981039346656037ull, path);
  for (size_t i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/%s/%lld/model.onnx", dir, name, (long long)nums[i]);
    h = file_stamp(mix(h, (uint64_t)nums[i]), path);
  }
  return h;
}

static srv_version *keep_version(srv_model *m) {
  if (m->n_all == m->cap_all) {
    size_t cap = m->cap_all ? 2 * m->cap_all : 4;
    srv_version **p = realloc(m->all, cap * sizeof *p);
    if (!p) return NULL;
    m->all = p;
    m->cap_all = cap;
  }
  srv_version *v = calloc(1, sizeof *v);
  if (v) m->all[m->n_all++] = v;
  return v;
}

/* The version now served with this number, or NULL. */
static srv_version *served(const srv_model *m, int64_t number) {
  for (size_t i = 0; i < m->n_versions; i++)
    if (m->versions[i]->number == number) return m->versions[i];
  return NULL;
}

/* Hands the runtime models of versions no longer served to the runtime, which frees each once
   its in-flight requests complete. Under r->mu, after the table stopped pointing at them. */
static void release_unserved(srv_model *m) {
  for (size_t k = 0; k < m->n_all; k++) {
    srv_version *v = m->all[k];
    if (!v->rm || served(m, v->number) == v) continue;
    kiln_runtime_model_unload(v->rm);
    v->rm = NULL;
  }
}

static void load_model(srv_repo *r, srv_model *m, const char *config) {
  char path[4096], error[512] = "";
  uint64_t stamp = model_stamp(r->dir, m->name);
  pthread_mutex_lock(r->mu);
  m->loading = true;
  pthread_mutex_unlock(r->mu);
  snprintf(path, sizeof path, "%s/%s/config.json", r->dir, m->name);
  srv_config cfg;
  srv_version **next = NULL;
  size_t n_next = 0;
  if (parse_config(path, config, &cfg, error, sizeof error)) { /* old versions keep serving */
    pthread_mutex_lock(r->mu);
    snprintf(m->error, sizeof m->error, "%s", error);
    m->stamp = stamp;
    m->unloaded = m->loading = false;
    pthread_mutex_unlock(r->mu);
    return;
  }
  uint64_t cfg_stamp = file_stamp(14695981039346656037ull, path);
  for (const char *t = config; t && *t; t++) /* a different config text reloads every version */
    cfg_stamp = mix(cfg_stamp, (uint8_t)*t);
  snprintf(path, sizeof path, "%s/%s", r->dir, m->name);
  int64_t nums[256];
  size_t n = scan_versions(path, nums, 256);
  if (!n)
    snprintf(error, sizeof error, "no version directories (expected %.400s/<version>/model.onnx)",
             path);
  else if (!(next = calloc(n, sizeof *next)))
    snprintf(error, sizeof error, "out of memory");
  const char *backends[9] = {0};
  for (size_t i = 0; i < cfg.n_backends; i++) backends[i] = cfg.backends[i];
  kiln_runtime_model_opts o = cfg.breaker;
  o.backends = cfg.n_backends ? backends : NULL;
  o.opt_level = cfg.opt_level;
  o.max_contexts = cfg.instance_count;
  o.max_batch_size = cfg.max_batch_size;
  o.max_queue_delay_us = cfg.max_queue_delay_us;
  memcpy(o.queue_limit, cfg.max_queue_size, sizeof o.queue_limit);
  if (r->test_delay_ms && !strcmp(r->test_delay_model, m->name)) {
    struct timespec ts = {r->test_delay_ms / 1000, (long)(r->test_delay_ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
  }
  /* Compiling happens here, without r->mu. m->all and m->versions change only under the
     caller's serialisation, so reading them here needs no lock. */
  for (size_t i = 0; next && i < n; i++) {
    if (!wanted(&cfg, nums, n, i)) continue;
    snprintf(path, sizeof path, "%s/%s/%lld/model.onnx", r->dir, m->name, (long long)nums[i]);
    uint64_t vstamp = file_stamp(mix(cfg_stamp, (uint64_t)nums[i]), path);
    srv_version *v = NULL;
    for (size_t k = 0; k < m->n_all && !v; k++)
      if (m->all[k]->number == nums[i] && m->all[k]->stamp == vstamp && m->all[k]->rm &&
          served(m, nums[i]) == m->all[k])
        v = m->all[k];
    if (!v) {
      kiln_error err = {0};
      kiln_runtime_model *rm = NULL;
      char bad[400] = "";
      kiln_status st = kiln_runtime_model_load(r->rt, path, &o, &rm, &err);
      if (st == KILN_OK && check_io(&cfg, kiln_runtime_model_get(rm), bad, sizeof bad)) {
        kiln_runtime_model_unload(rm); /* never served: freed at once */
        st = KILN_INVALID_ARGUMENT;
        snprintf(err.message, sizeof err.message, "%s", bad);
      }
      if (st != KILN_OK) {
        snprintf(error, sizeof error, "version %lld: %.480s", (long long)nums[i], err.message);
        if (r->log) fprintf(r->log, "kiln serve: model '%s' %s\n", m->name, error);
        v = served(m, nums[i]); /* the old file keeps serving */
      } else if (!(v = keep_version(m))) {
        kiln_runtime_model_unload(rm);
        snprintf(error, sizeof error, "out of memory");
      } else {
        v->rm = rm;
        v->number = nums[i];
        v->stamp = vstamp;
        snprintf(v->label, sizeof v->label, "%lld", (long long)nums[i]);
        if (r->log) fprintf(r->log, "kiln serve: loaded %s version %s\n", m->name, v->label);
      }
    }
    if (v) next[n_next++] = v;
  }
  pthread_mutex_lock(r->mu);
  snprintf(m->error, sizeof m->error, "%s", error);
  m->stamp = stamp;
  m->unloaded = m->loading = false;
  if (next || !n) { /* a failed allocation keeps what serves */
    /* A version that failed keeps its old one serving, and the old config with it (request
       defaults, timeouts, input shapes), as a config that does not parse does. */
    if (!error[0] || !m->n_versions) m->cfg = cfg;
    free(m->versions);
    m->versions = next;
    m->n_versions = n_next;
    release_unserved(m);
  }
  pthread_mutex_unlock(r->mu);
}

static int cmp_model(const void *a, const void *b) {
  return strcmp((*(srv_model *const *)a)->name, (*(srv_model *const *)b)->name);
}

static srv_model **find(const srv_repo *r, const char *name) {
  srv_model key = {.name = (char *)name}, *kp = &key;
  return r->n ? bsearch(&kp, r->models, r->n, sizeof *r->models, cmp_model) : NULL;
}

/* Finds or adds the entry for DIR/<name> (not loaded yet). */
static srv_model *entry(srv_repo *r, const char *name) {
  srv_model **f = find(r, name);
  if (f) return *f;
  srv_model *m = calloc(1, sizeof *m);
  if (!m || !(m->name = strdup(name))) {
    free(m);
    return NULL;
  }
  m->loading = true; /* not ready until its first load finishes */
  pthread_mutex_lock(r->mu);
  if (r->n == r->cap) {
    size_t cap = r->cap ? 2 * r->cap : 8;
    srv_model **p = realloc(r->models, cap * sizeof *p);
    if (!p) {
      pthread_mutex_unlock(r->mu);
      free(m->name);
      free(m);
      return NULL;
    }
    r->models = p;
    r->cap = cap;
  }
  r->models[r->n++] = m;
  qsort(r->models, r->n, sizeof *r->models, cmp_model);
  pthread_mutex_unlock(r->mu);
  return m;
}

static bool is_model_dir(const srv_repo *r, const char *name) {
  char path[4096];
  struct stat sb;
  if (!name[0] || name[0] == '.' || strchr(name, '/')) return false;
  snprintf(path, sizeof path, "%s/%s", r->dir, name);
  return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int srv_repo_load_model(srv_repo *r, const char *name, const char *config, char *why, size_t cap) {
  if (!is_model_dir(r, name)) {
    snprintf(why, cap, "no directory '%.200s' in the model repository", name);
    return -1;
  }
  srv_model *m = entry(r, name);
  if (!m) {
    snprintf(why, cap, "out of memory");
    return -1;
  }
  load_model(r, m, config);
  /* Only this thread changes the entry, so reading it back needs no lock. */
  if (m->error[0] && r->log && !m->n_versions)
    fprintf(r->log, "kiln serve: model '%s' not loaded: %s\n", m->name, m->error);
  if (!m->error[0] && m->n_versions) return 0;
  snprintf(why, cap, "%s", m->error[0] ? m->error : "no version to serve");
  return -1;
}

int srv_repo_unload_model(srv_repo *r, const char *name) {
  srv_model **f = find(r, name);
  if (!f) return -1;
  pthread_mutex_lock(r->mu);
  (*f)->unloaded = true;
  (*f)->n_versions = 0;
  (*f)->error[0] = 0;
  release_unserved(*f);
  pthread_mutex_unlock(r->mu);
  if (r->log) fprintf(r->log, "kiln serve: unloaded %s\n", name);
  return 0;
}

/* Calls fn on every model directory of the repository. */
static int each_dir(srv_repo *r, void (*fn)(srv_repo *, const char *)) {
  DIR *d = opendir(r->dir);
  if (!d) return -1;
  struct dirent *e;
  while ((e = readdir(d)))
    if (is_model_dir(r, e->d_name)) fn(r, e->d_name);
  closedir(d);
  return 0;
}

static void initial(srv_repo *r, const char *name) {
  char why[512];
  srv_repo_load_model(r, name, NULL, why, sizeof why);
}

static void poll_one(srv_repo *r, const char *name) {
  srv_model **f = find(r, name);
  if (f && (*f)->stamp == model_stamp(r->dir, name)) return; /* unchanged (or unloaded on purpose) */
  initial(r, name);
}

kiln_status srv_repo_load(srv_repo *r, const char *dir, kiln_runtime *rt, pthread_mutex_t *mu,
                          FILE *log, kiln_error *err) {
  *r = (srv_repo){.dir = strdup(dir), .rt = rt, .mu = mu, .log = log};
  const char *delay = getenv("KILN_SERVE_TEST_LOAD_DELAY"); /* test-only: see server_int.h */
  const char *colon = delay ? strrchr(delay, ':') : NULL;
  if (colon && (size_t)(colon - delay) < sizeof r->test_delay_model) {
    memcpy(r->test_delay_model, delay, (size_t)(colon - delay));
    r->test_delay_ms = (unsigned)strtoul(colon + 1, NULL, 10);
    if (log) fprintf(log, "kiln serve: test-only load delay: %s loads take %u ms longer\n",
                     r->test_delay_model, r->test_delay_ms);
  }
  if (!r->dir || each_dir(r, initial) != 0) {
    if (err) {
      err->status = KILN_IO_ERROR;
      snprintf(err->message, sizeof err->message, "cannot open model repository '%s': %s", dir,
               r->dir ? strerror(errno) : "out of memory");
    }
    return KILN_IO_ERROR;
  }
  return KILN_OK;
}

void srv_repo_poll(srv_repo *r) {
  if (each_dir(r, poll_one) != 0) return; /* the repository is unreadable now: change nothing */
  for (size_t i = 0; i < r->n; i++)
    if (!r->models[i]->unloaded && !is_model_dir(r, r->models[i]->name))
      srv_repo_unload_model(r, r->models[i]->name);
}

void srv_repo_free(srv_repo *r) {
  for (size_t i = 0; i < r->n; i++) {
    srv_model *m = r->models[i];
    for (size_t k = 0; k < m->n_all; k++) free(m->all[k]);
    free(m->all);
    free(m->versions);
    free(m->name);
    free(m);
  }
  free(r->models);
  free(r->dir);
  *r = (srv_repo){0};
}

srv_model *srv_repo_find(const srv_repo *r, const char *name) {
  srv_model **f = find(r, name);
  return f ? *f : NULL;
}

srv_version *srv_model_version(const srv_model *m, const char *version) {
  if (!m->n_versions) return NULL;
  if (!version || !version[0]) return m->versions[m->n_versions - 1];
  for (size_t i = 0; i < m->n_versions; i++)
    if (!strcmp(m->versions[i]->label, version)) return m->versions[i];
  return NULL;
}
