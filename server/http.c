/* The HTTP front end: libmicrohttpd with one internal polling thread. Every handler runs on that
   thread; inference requests are submitted to the runtime, their connection suspended, and
   resumed by the completion callback (on a runtime thread), which has already encoded the
   answer. A hang-up watcher (epoll, EPOLLRDHUP) cancels requests whose client went away while
   suspended, since libmicrohttpd does not poll suspended sockets. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "server_int.h"

struct kiln_server {
  kiln_server_opts o;
  srv_limits lim;
  kiln_runtime *rt;
  srv_repo repo;
  char *token; /* the control token, NULL when none */
  pthread_t poller;
  bool poller_started;
  pthread_cond_t poll_cv; /* with rt_mu: wakes the poller to stop */
  /* Repository changes (load, unload, polling) run one at a time under load_mu, off the HTTP
     thread: a control request's connection is suspended while a thread of its own does the
     work. Lock order: load_mu, then rt_mu. */
  pthread_mutex_t load_mu;
  size_t n_ctl;           /* control threads running (under rt_mu) */
  pthread_cond_t ctl_cv;  /* with rt_mu: n_ctl dropped */
  struct MHD_Daemon *d;
  uint16_t port;
  pthread_mutex_t rt_mu; /* orders submits against shutdown; guards the repository table */
  bool stopping;
  atomic_size_t live; /* request contexts not yet freed */
  /* The hang-up watcher: slots keyed by index + generation so a stale epoll event never
     touches a freed context. */
  int ep, wake[2];
  pthread_t watcher;
  bool watcher_started;
  pthread_mutex_t watch_mu;
  struct req_ctx **slot;
  uint32_t *slot_gen;
  size_t n_slots;
};

enum { ST_READING, ST_SUBMITTED, ST_DONE };

typedef struct req_ctx {
  kiln_server *srv;
  struct MHD_Connection *conn;
  atomic_int refs;
  srv_buf body;
  bool body_too_big;
  srv_infer_req req;
  const char **names;
  kiln_tensor *tensors;
  srv_model *model;
  srv_version *ver;
  kiln_future *fut;
  int64_t t_submit;
  atomic_llong t_start; /* first interrupt call: the run began */
  pthread_mutex_t mu;
  int state;
  bool suspended;
  int slot; /* watcher slot, -1 when none */
  /* The answer, built by whoever completes the request. */
  unsigned code;
  srv_buf resp;
  size_t header_len; /* Inference-Header-Content-Length, 0 when all JSON */
  int retry_after_s; /* > 0: send Retry-After */
} req_ctx;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void ctx_unref(req_ctx *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1) return;
  if (c->fut) kiln_future_release(c->fut);
  srv_infer_req_free(&c->req);
  free(c->names);
  free(c->tensors);
  srv_buf_free(&c->body);
  srv_buf_free(&c->resp);
  pthread_mutex_destroy(&c->mu);
  atomic_fetch_sub(&c->srv->live, 1);
  free(c);
}

/* ---- answers --------------------------------------------------------------------------------- */

static void set_error(req_ctx *c, unsigned code, const char *msg) {
  srv_buf_free(&c->resp);
  c->code = code;
  c->header_len = 0;
  srv_buf_puts(&c->resp, "{\"error\":");
  srv_buf_json_str(&c->resp, msg);
  srv_buf_puts(&c->resp, "}");
}

static enum MHD_Result send_buf(struct MHD_Connection *conn, unsigned code, srv_buf *b,
                                const char *ctype, size_t header_len, int retry_after) {
  if (b->failed) {
    srv_buf_free(b);
    srv_buf_puts(b, "{\"error\":\"out of memory\"}");
    code = MHD_HTTP_INTERNAL_SERVER_ERROR;
    header_len = 0;
  }
  struct MHD_Response *r =
      MHD_create_response_from_buffer(b->len, b->data ? b->data : (char *)"", MHD_RESPMEM_MUST_FREE);
  if (!r) return MHD_NO;
  if (b->data) *b = (srv_buf){0}; /* the response owns it now */
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
  if (header_len) {
    char n[32];
    snprintf(n, sizeof n, "%zu", header_len);
    MHD_add_response_header(r, "Inference-Header-Content-Length", n);
  }
  if (retry_after > 0) {
    char n[16];
    snprintf(n, sizeof n, "%d", retry_after);
    MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, n);
  }
  enum MHD_Result ret = MHD_queue_response(conn, code, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result send_ctx(req_ctx *c) {
  return send_buf(c->conn, c->code, &c->resp,
                  c->header_len ? "application/octet-stream" : "application/json", c->header_len,
                  c->retry_after_s);
}

static enum MHD_Result send_error(req_ctx *c, unsigned code, const char *msg) {
  set_error(c, code, msg);
  return send_ctx(c);
}

static enum MHD_Result send_json(req_ctx *c, srv_buf *b) {
  return send_buf(c->conn, MHD_HTTP_OK, b, "application/json", 0, 0);
}

/* ---- the hang-up watcher ----------------------------------------------------------------------- */

static void watch_add(kiln_server *s, req_ctx *c) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci || s->ep < 0) return;
  pthread_mutex_lock(&s->watch_mu);
  for (size_t i = 0; i < s->n_slots; i++) {
    if (s->slot[i]) continue;
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLHUP | EPOLLERR,
                             .data.u64 = (uint64_t)i | (uint64_t)++s->slot_gen[i] << 32};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, ci->connect_fd, &ev) == 0) {
      s->slot[i] = c;
      c->slot = (int)i;
      atomic_fetch_add(&c->refs, 1); /* the slot's reference */
    }
    break;
  }
  pthread_mutex_unlock(&s->watch_mu);
}

/* Returns with the slot's reference handed to the caller (or none). */
static req_ctx *watch_take(kiln_server *s, req_ctx *c, size_t idx, uint32_t gen) {
  req_ctx *got = NULL;
  pthread_mutex_lock(&s->watch_mu);
  if (c) idx = c->slot >= 0 ? (size_t)c->slot : s->n_slots;
  if (idx < s->n_slots && s->slot[idx] && (c || s->slot_gen[idx] == gen)) {
    got = s->slot[idx];
    s->slot[idx] = NULL;
    got->slot = -1;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(got->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) epoll_ctl(s->ep, EPOLL_CTL_DEL, ci->connect_fd, NULL);
  }
  pthread_mutex_unlock(&s->watch_mu);
  return got;
}

static void *watcher_main(void *arg) {
  kiln_server *s = arg;
  struct epoll_event ev[32];
  for (;;) {
    int n = epoll_wait(s->ep, ev, 32, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return NULL;
    for (int i = 0; i < n; i++) {
      if (ev[i].data.u64 == UINT64_MAX) return NULL; /* the wake pipe: shutting down */
      req_ctx *c = watch_take(s, NULL, (size_t)(uint32_t)ev[i].data.u64,
                              (uint32_t)(ev[i].data.u64 >> 32));
      if (!c) continue;
      /* The client hung up: a queued request completes (cancelled) right here, a running one
         stops at its next node. */
      kiln_future_cancel(c->fut);
      ctx_unref(c);
    }
  }
}

/* ---- inference ------------------------------------------------------------------------------- */

static kiln_status on_interrupt(void *user) {
  req_ctx *c = user;
  long long zero = 0;
  atomic_compare_exchange_strong(&c->t_start, &zero, (long long)now_ns());
  return KILN_OK;
}

static void count_failure(srv_version *v, srv_fail why, uint64_t ns) {
  atomic_fetch_add_explicit(&v->fail[why], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&v->fail_ns, ns, memory_order_relaxed);
}

static void status_answer(req_ctx *c, kiln_status st, const char *msg, uint64_t ns) {
  unsigned code = MHD_HTTP_INTERNAL_SERVER_ERROR;
  srv_fail why = SRV_FAIL_INTERNAL;
  c->retry_after_s = 0;
  switch (st) {
    case KILN_INVALID_ARGUMENT: code = MHD_HTTP_BAD_REQUEST, why = SRV_FAIL_BAD_REQUEST; break;
    case KILN_CANCELLED: code = MHD_HTTP_SERVICE_UNAVAILABLE, why = SRV_FAIL_CANCELLED; break;
    /* The protocol's error list has no 504: a request whose time ran out is refused as
       unavailable (the server was too busy to finish it in time; a retry later may work). */
    case KILN_DEADLINE_EXCEEDED:
      code = MHD_HTTP_SERVICE_UNAVAILABLE, why = SRV_FAIL_DEADLINE, c->retry_after_s = 1;
      break;
    case KILN_RESOURCE_EXHAUSTED:
    case KILN_UNAVAILABLE: {
      code = MHD_HTTP_SERVICE_UNAVAILABLE, why = SRV_FAIL_REJECTED;
      kiln_runtime_stats rs;
      memset(&rs, 0, sizeof rs);
      rs.struct_size = sizeof rs;
      kiln_runtime_model_stats(c->ver->rm, &rs);
      c->retry_after_s = rs.retry_after_us > 0 ? (int)((rs.retry_after_us + 999999) / 1000000) : 1;
      break;
    }
    default: break;
  }
  count_failure(c->ver, why, ns);
  set_error(c, code, msg);
}

static void encode_outputs(req_ctx *c, kiln_future *f) {
  const kiln_model *km = kiln_runtime_model_get(c->ver->rm);
  srv_buf *b = &c->resp;
  srv_buf bin = {0};
  srv_buf_free(b);
  srv_buf_puts(b, "{\"model_name\":");
  srv_buf_json_str(b, c->model->name);
  srv_buf_printf(b, ",\"model_version\":\"%s\"", c->ver->label);
  if (c->req.id) {
    srv_buf_puts(b, ",\"id\":");
    srv_buf_json_str(b, c->req.id);
  }
  srv_buf_puts(b, ",\"outputs\":[");
  size_t n = kiln_future_output_count(f), shown = 0;
  for (size_t i = 0; i < n; i++) {
    kiln_io_info io;
    kiln_tensor t;
    if (kiln_model_output_info(km, i, &io) != KILN_OK || kiln_future_output(f, i, &t) != KILN_OK)
      continue;
    int binary = c->req.binary_output == 1;
    if (c->req.n_outputs) {
      size_t k = 0;
      while (k < c->req.n_outputs && strcmp(c->req.outputs[k].name, io.name)) k++;
      if (k == c->req.n_outputs) continue;
      if (c->req.outputs[k].binary >= 0) binary = c->req.outputs[k].binary;
    }
    const char *dt = srv_dtype_name(t.dtype);
    if (!dt || t.dtype == KILN_DTYPE_BFLOAT16) {
      srv_buf_free(&bin);
      status_answer(c, KILN_UNSUPPORTED, "an output has a datatype the protocol cannot carry", 0);
      return;
    }
    srv_buf_printf(b, "%s{\"name\":", shown++ ? "," : "");
    srv_buf_json_str(b, io.name);
    srv_buf_printf(b, ",\"datatype\":\"%s\",\"shape\":[", dt);
    for (int d = 0; d < t.rank; d++) srv_buf_printf(b, "%s%lld", d ? "," : "", (long long)t.dims[d]);
    srv_buf_puts(b, "]");
    if (binary && t.dtype == KILN_DTYPE_STRING) { /* 4-byte little-endian length, then bytes */
      size_t before = bin.len, count = kiln_tensor_count(&t);
      for (size_t e = 0; e < count; e++) {
        const char *str = ((char *const *)t.data)[e];
        size_t len = strlen(str);
        uint8_t le[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16), (uint8_t)(len >> 24)};
        srv_buf_put(&bin, le, 4);
        srv_buf_put(&bin, str, len);
      }
      srv_buf_printf(b, ",\"parameters\":{\"binary_data_size\":%zu}}", bin.len - before);
    } else if (binary) {
      size_t nb = kiln_tensor_nbytes(&t);
      srv_buf_printf(b, ",\"parameters\":{\"binary_data_size\":%zu}}", nb);
      srv_buf_put(&bin, t.data, nb);
    } else {
      srv_buf_puts(b, ",\"data\":");
      srv_buf_json_data(b, &t);
      srv_buf_puts(b, "}");
    }
  }
  srv_buf_puts(b, "]}");
  c->code = MHD_HTTP_OK;
  c->header_len = 0;
  if (bin.len || bin.failed) {
    c->header_len = b->len;
    srv_buf_put(b, bin.data, bin.len);
    if (bin.failed) b->failed = 1;
  }
  srv_buf_free(&bin);
}

static void on_complete(kiln_future *f, void *user) {
  req_ctx *c = user;
  int64_t end = now_ns(), start = (int64_t)atomic_load(&c->t_start);
  uint64_t total = (uint64_t)(end - c->t_submit);
  kiln_error err = {0};
  kiln_status st = kiln_future_status(f, &err);
  srv_version *v = c->ver;
  if (start) {
    srv_hist_add(&v->queue, (uint64_t)(start - c->t_submit));
    srv_hist_add(&v->compute, (uint64_t)(end - start));
  } else {
    srv_hist_add(&v->queue, total);
  }
  if (st == KILN_OK) {
    encode_outputs(c, f);
    if (c->code == MHD_HTTP_OK) {
      atomic_fetch_add_explicit(&v->ok, 1, memory_order_relaxed);
      atomic_fetch_add_explicit(&v->ok_ns, total, memory_order_relaxed);
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      atomic_store_explicit(&v->last_ms, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000,
                            memory_order_relaxed);
    }
  } else {
    status_answer(c, st, err.message, total);
  }
  pthread_mutex_lock(&c->mu);
  req_ctx *w = watch_take(c->srv, c, 0, 0);
  if (w) ctx_unref(w); /* not the last reference: this callback holds one */
  c->state = ST_DONE;
  if (c->suspended) MHD_resume_connection(c->conn);
  pthread_mutex_unlock(&c->mu);
  ctx_unref(c);
}

/* Checks the decoded inputs against the model and lays them out for kiln_request. */
static int bind_inputs(req_ctx *c, char *why, size_t cap) {
  const kiln_model *km = kiln_runtime_model_get(c->ver->rm);
  size_t n = c->req.n_inputs;
  c->names = calloc(n, sizeof *c->names);
  c->tensors = calloc(n, sizeof *c->tensors);
  if (!c->names || !c->tensors) return snprintf(why, cap, "out of memory"), -1;
  for (size_t i = 0; i < n; i++) {
    const srv_input *in = &c->req.inputs[i];
    kiln_io_info io = {0};
    size_t k = 0, m = kiln_model_input_count(km);
    for (; k < m; k++)
      if (kiln_model_input_info(km, k, &io) == KILN_OK && !strcmp(io.name, in->name)) break;
    if (k == m) return snprintf(why, cap, "the model has no input named '%s'", in->name), -1;
    srv_config_apply_io(&c->model->cfg, 0, &io); /* config.json may narrow variable dims */
    if (io.dtype != in->t.dtype)
      return snprintf(why, cap, "input '%s' is %s, the model expects %s", in->name,
                      srv_dtype_name(in->t.dtype), srv_dtype_name(io.dtype) ? srv_dtype_name(io.dtype) : "?"), -1;
    if (io.rank >= 0) {
      if (io.rank != in->t.rank)
        return snprintf(why, cap, "input '%s' has rank %d, the model expects %d", in->name,
                        in->t.rank, io.rank), -1;
      for (int d = 0; d < io.rank; d++)
        if (io.dims[d] >= 0 && io.dims[d] != in->t.dims[d])
          return snprintf(why, cap, "input '%s' dimension %d is %lld, the model expects %lld",
                          in->name, d, (long long)in->t.dims[d], (long long)io.dims[d]), -1;
    }
    c->names[i] = in->name;
    c->tensors[i] = in->t;
  }
  for (size_t k = 0; k < c->req.n_outputs; k++) {
    size_t j = 0, m = kiln_model_output_count(km);
    for (; j < m; j++) {
      kiln_io_info io;
      if (kiln_model_output_info(km, j, &io) == KILN_OK && !strcmp(io.name, c->req.outputs[k].name))
        break;
    }
    if (j == m)
      return snprintf(why, cap, "the model has no output named '%s'", c->req.outputs[k].name), -1;
  }
  return 0;
}

static enum MHD_Result infer(req_ctx *c, const char *header_len_str) {
  kiln_server *s = c->srv;
  size_t header_len = 0;
  if (header_len_str) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(header_len_str, &end, 10);
    if (errno || *end || end == header_len_str || header_len_str[0] == '-' || v == 0)
      return send_error(c, MHD_HTTP_BAD_REQUEST, "bad Inference-Header-Content-Length");
    if (v > c->body.len) {
      count_failure(c->ver, SRV_FAIL_BAD_REQUEST, 0);
      return send_error(c, MHD_HTTP_BAD_REQUEST, "Inference-Header-Content-Length exceeds the body");
    }
    header_len = (size_t)v;
  }
  if (c->body_too_big) {
    count_failure(c->ver, SRV_FAIL_BAD_REQUEST, 0);
    return send_error(c, MHD_HTTP_BAD_REQUEST, "request body too large");
  }
  kiln_error err = {0};
  if (srv_decode_infer((const uint8_t *)c->body.data, c->body.len, header_len, &s->lim, &c->req,
                       &err) != KILN_OK) {
    count_failure(c->ver, SRV_FAIL_BAD_REQUEST, 0);
    return send_error(c, err.status == KILN_NO_MEMORY ? MHD_HTTP_INTERNAL_SERVER_ERROR
                                                       : MHD_HTTP_BAD_REQUEST, err.message);
  }
  srv_buf_free(&c->body);
  char why[512];
  if (bind_inputs(c, why, sizeof why)) {
    count_failure(c->ver, SRV_FAIL_BAD_REQUEST, 0);
    return send_error(c, MHD_HTTP_BAD_REQUEST, why);
  }
  kiln_request rq = kiln_request_default();
  rq.names = c->names;
  rq.inputs = c->tensors;
  rq.n_inputs = c->req.n_inputs;
  const srv_config *cfg = &c->model->cfg;
  int level = (c->req.priority ? c->req.priority : cfg->default_priority) - 1;
  rq.priority = (kiln_priority)level;
  rq.timeout_us = c->req.timeout_us && cfg->allow_timeout_override[level] ? c->req.timeout_us
                                                                          : cfg->level_timeout_us[level];
  rq.on_complete = on_complete;
  rq.interrupt = on_interrupt;
  rq.user = c;
  atomic_fetch_add(&c->refs, 1); /* the callback's reference */
  pthread_mutex_lock(&c->mu);
  c->state = ST_SUBMITTED;
  c->t_submit = now_ns();
  kiln_status st = kiln_runtime_submit(c->ver->rm, &rq, &c->fut, &err);
  if (st != KILN_OK) {
    c->state = ST_DONE;
    pthread_mutex_unlock(&c->mu);
    atomic_fetch_sub(&c->refs, 1); /* no callback will come */
    status_answer(c, st, err.message, 0);
    return send_ctx(c);
  }
  bool done = c->state == ST_DONE;
  if (!done) { /* under c->mu, so the callback sees both or neither */
    MHD_suspend_connection(c->conn);
    c->suspended = true;
    watch_add(s, c);
  }
  pthread_mutex_unlock(&c->mu);
  return done ? send_ctx(c) : MHD_YES;
}

/* ---- routes ---------------------------------------------------------------------------------- */

static void io_json(srv_buf *b, const kiln_io_info *io) {
  srv_buf_puts(b, "{\"name\":");
  srv_buf_json_str(b, io->name);
  const char *dt = srv_dtype_name(io->dtype);
  srv_buf_printf(b, ",\"datatype\":\"%s\",\"shape\":[", dt ? dt : "UNSUPPORTED");
  for (int d = 0; d < io->rank; d++)
    srv_buf_printf(b, "%s%lld", d ? "," : "", (long long)(io->dims[d] < 0 ? -1 : io->dims[d]));
  srv_buf_puts(b, "]}");
}

static enum MHD_Result model_metadata(req_ctx *c, const srv_model *m, const srv_version *v) {
  const kiln_model *km = kiln_runtime_model_get(v->rm);
  srv_buf b = {0};
  srv_buf_puts(&b, "{\"name\":");
  srv_buf_json_str(&b, m->name);
  srv_buf_puts(&b, ",\"versions\":[");
  for (size_t i = 0; i < m->n_versions; i++)
    srv_buf_printf(&b, "%s\"%s\"", i ? "," : "", m->versions[i]->label);
  srv_buf_puts(&b, "],\"platform\":\"onnx\",\"inputs\":[");
  kiln_io_info io;
  for (size_t i = 0; i < kiln_model_input_count(km); i++) {
    if (kiln_model_input_info(km, i, &io) != KILN_OK) continue;
    srv_config_apply_io(&m->cfg, 0, &io);
    if (i) srv_buf_puts(&b, ",");
    io_json(&b, &io);
  }
  srv_buf_puts(&b, "],\"outputs\":[");
  for (size_t i = 0; i < kiln_model_output_count(km); i++) {
    if (kiln_model_output_info(km, i, &io) != KILN_OK) continue;
    srv_config_apply_io(&m->cfg, 1, &io);
    if (i) srv_buf_puts(&b, ",");
    io_json(&b, &io);
  }
  srv_buf_puts(&b, "]}");
  return send_json(c, &b);
}

static enum MHD_Result send_text(req_ctx *c, unsigned code, const char *body) {
  srv_buf b = {0};
  srv_buf_puts(&b, body);
  return send_buf(c->conn, code, &b, "application/json", 0, 0);
}

/* Compares without an early exit, so the time taken does not tell how much of a guess matched. */
static bool token_ok(const char *want, const char *got) {
  size_t nw = strlen(want), ng = strlen(got);
  unsigned diff = nw != ng;
  for (size_t i = 0; i < nw; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < ng ? got[i] : 0);
  return diff == 0;
}

static void index_json(srv_buf *b, const srv_repo *r, bool ready_only) {
  srv_buf_puts(b, "[");
  bool first = true;
  for (size_t i = 0; i < r->n; i++) {
    const srv_model *m = r->models[i];
    for (size_t j = 0; j < m->n_versions; j++) {
      srv_buf_printf(b, "%s{\"name\":", first ? "" : ",");
      first = false;
      srv_buf_json_str(b, m->name);
      srv_buf_printf(b, ",\"version\":\"%s\",\"state\":\"READY\"}", m->versions[j]->label);
    }
    if (ready_only || (m->n_versions && !m->error[0])) continue;
    /* The model's own entry: why it (or one of its versions) is not serving. */
    srv_buf_printf(b, "%s{\"name\":", first ? "" : ",");
    first = false;
    srv_buf_json_str(b, m->name);
    srv_buf_printf(b, ",\"state\":\"%s\",\"reason\":",
                   m->unloaded ? "UNLOADED" : "UNAVAILABLE");
    srv_buf_json_str(b, m->unloaded ? "unloaded" : m->error[0] ? m->error : "no version to serve");
    srv_buf_puts(b, "}");
  }
  srv_buf_puts(b, "]");
}

typedef struct ctl_job {
  req_ctx *c;
  bool unload;
  char name[256];
  char *config; /* load's parameters.config, NULL when none */
} ctl_job;

/* The optional JSON body of a repository request: the index takes {"ready": bool} (only
   READY entries when true), load {"parameters": {"config": "<config.json text>"}}, unload
   nothing. Anything else is refused, so a misspelt key is not silently ignored. */
static int control_body(const srv_buf *body, bool is_index, bool is_load, bool *ready,
                        char **config, char *why, size_t cap) {
  *ready = false;
  *config = NULL;
  size_t n = body->len;
  while (n && (body->data[n - 1] == ' ' || body->data[n - 1] == '\n' || body->data[n - 1] == '\r'))
    n--;
  if (!n) return 0;
  json_error_t jerr;
  json_t *root = json_loadb(body->data, body->len, JSON_REJECT_DUPLICATES, &jerr);
  int rc = -1;
  const char *k;
  json_t *v;
  if (!root || !json_is_object(root)) {
    snprintf(why, cap, "the body must be a JSON object%s%s", root ? "" : ": ", root ? "" : jerr.text);
    goto out;
  }
  json_object_foreach(root, k, v) {
    if (is_index && !strcmp(k, "ready") && json_is_boolean(v)) {
      *ready = json_is_true(v);
    } else if (is_load && !strcmp(k, "parameters") && json_is_object(v)) {
      const char *pk;
      json_t *pv;
      json_object_foreach(v, pk, pv) {
        if (strcmp(pk, "config") || !json_is_string(pv)) {
          snprintf(why, cap, "unsupported load parameter '%.100s' (only \"config\", a JSON string)", pk);
          goto out;
        }
        if (!(*config = strdup(json_string_value(pv)))) {
          snprintf(why, cap, "out of memory");
          goto out;
        }
      }
    } else {
      snprintf(why, cap, "unexpected '%.100s' in the body (index takes \"ready\": bool, load "
               "\"parameters\": {\"config\": string})", k);
      goto out;
    }
  }
  rc = 0;
out:
  if (rc) {
    free(*config);
    *config = NULL;
  }
  json_decref(root);
  return rc;
}

/* Hands an answer built off the HTTP thread to the suspended connection (as on_complete does). */
static void finish_off_thread(req_ctx *c) {
  pthread_mutex_lock(&c->mu);
  c->state = ST_DONE;
  if (c->suspended) MHD_resume_connection(c->conn);
  pthread_mutex_unlock(&c->mu);
  ctx_unref(c);
}

/* One load or unload, on its own thread: compiling a model takes long, and the HTTP thread must
   keep serving the other models meanwhile. */
static void *ctl_main(void *arg) {
  ctl_job *j = arg;
  req_ctx *c = j->c;
  kiln_server *s = c->srv;
  pthread_mutex_lock(&s->load_mu);
  pthread_mutex_lock(&s->rt_mu);
  bool stopping = s->stopping;
  pthread_mutex_unlock(&s->rt_mu);
  char why[600];
  if (stopping) {
    c->retry_after_s = 1;
    set_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "the server is shutting down");
  } else if (j->unload) {
    if (srv_repo_unload_model(&s->repo, j->name)) set_error(c, MHD_HTTP_NOT_FOUND, "unknown model");
    else c->code = MHD_HTTP_OK, srv_buf_puts(&c->resp, "{}");
  } else if (srv_repo_load_model(&s->repo, j->name, j->config, why, sizeof why)) {
    set_error(c, srv_repo_find(&s->repo, j->name) ? MHD_HTTP_BAD_REQUEST : MHD_HTTP_NOT_FOUND, why);
  } else {
    c->code = MHD_HTTP_OK;
    srv_buf_puts(&c->resp, "{}");
  }
  pthread_mutex_unlock(&s->load_mu);
  free(j->config);
  free(j);
  finish_off_thread(c);
  pthread_mutex_lock(&s->rt_mu);
  if (--s->n_ctl == 0) pthread_cond_broadcast(&s->ctl_cv);
  pthread_mutex_unlock(&s->rt_mu);
  return NULL;
}

/* POST /v2/repository/index (answered here, under rt_mu), /v2/repository/models/{m}/load and
   /unload (handed to a control thread; the connection waits suspended). */
static enum MHD_Result repository(req_ctx *c, char **seg, size_t n, bool post) {
  kiln_server *s = c->srv;
  bool is_index = n == 1 && !strcmp(seg[0], "index");
  bool is_model = n == 3 && !strcmp(seg[0], "models") &&
                  (!strcmp(seg[2], "load") || !strcmp(seg[2], "unload"));
  if (!is_index && !is_model) return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
  if (!post) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "the repository endpoints take POST");
  if (s->token) {
    const char *auth = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
                                                   MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncmp(auth, "Bearer ", 7))
      return send_error(c, MHD_HTTP_UNAUTHORIZED, "this endpoint needs 'Authorization: Bearer <token>'");
    if (!token_ok(s->token, auth + 7)) return send_error(c, MHD_HTTP_FORBIDDEN, "wrong control token");
  }
  bool ready_only;
  char *config, why[256];
  if (control_body(&c->body, is_index, is_model && !strcmp(seg[2], "load"), &ready_only, &config,
                   why, sizeof why))
    return send_error(c, MHD_HTTP_BAD_REQUEST, why);
  if (is_index) {
    srv_buf b = {0};
    index_json(&b, &s->repo, ready_only);
    return send_json(c, &b);
  }
  ctl_job *j = calloc(1, sizeof *j);
  if (!j) {
    free(config);
    return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
  }
  j->config = config;
  if (strlen(seg[1]) >= sizeof j->name) {
    free(config);
    free(j);
    return send_error(c, MHD_HTTP_NOT_FOUND, "no such model");
  }
  strcpy(j->name, seg[1]);
  j->c = c;
  j->unload = !strcmp(seg[2], "unload");
  atomic_fetch_add(&c->refs, 1); /* the control thread's */
  pthread_mutex_lock(&c->mu);
  c->state = ST_SUBMITTED;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  s->n_ctl++; /* rt_mu is held: every handler runs under it */
  if (pthread_create(&t, &attr, ctl_main, j) != 0) {
    s->n_ctl--;
    c->state = ST_READING;
    pthread_mutex_unlock(&c->mu);
    pthread_attr_destroy(&attr);
    atomic_fetch_sub(&c->refs, 1);
    free(j->config);
    free(j);
    return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot start a control thread");
  }
  pthread_attr_destroy(&attr);
  bool done = c->state == ST_DONE;
  if (!done) {
    MHD_suspend_connection(c->conn);
    c->suspended = true;
  }
  pthread_mutex_unlock(&c->mu);
  return done ? send_ctx(c) : MHD_YES;
}

/* --model-control poll: rescans the repository every poll_interval_ms until shutdown. */
static void *poller_main(void *arg) {
  kiln_server *s = arg;
  pthread_mutex_lock(&s->rt_mu);
  while (!s->stopping) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)s->o.poll_interval_ms * 1000000;
    ts.tv_sec += (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (!s->stopping && pthread_cond_timedwait(&s->poll_cv, &s->rt_mu, &ts) == 0) {
    }
    if (s->stopping) break;
    pthread_mutex_unlock(&s->rt_mu); /* the pass takes it only to publish changes */
    pthread_mutex_lock(&s->load_mu);
    srv_repo_poll(&s->repo);
    pthread_mutex_unlock(&s->load_mu);
    pthread_mutex_lock(&s->rt_mu);
  }
  pthread_mutex_unlock(&s->rt_mu);
  return NULL;
}

/* Splits "/v2/models/m/versions/3/infer" into segments (in place). */
static size_t split(char *path, char **seg, size_t cap) {
  size_t n = 0;
  for (char *p = strtok(path, "/"); p && n < cap; p = strtok(NULL, "/")) seg[n++] = p;
  return n;
}

static enum MHD_Result route(req_ctx *c, const char *url, const char *method) {
  kiln_server *s = c->srv;
  bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
  char path[1024];
  if (strlen(url) >= sizeof path) return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
  strcpy(path, url);
  char *seg[8];
  size_t n = split(path, seg, 8);
  if (n == 1 && !strcmp(seg[0], "metrics") && get) {
    srv_buf b = {0};
    srv_metrics_write(&s->repo, &b);
    return send_buf(c->conn, MHD_HTTP_OK, &b, "text/plain; version=0.0.4; charset=utf-8", 0, 0);
  }
  if (n == 0 || strcmp(seg[0], "v2")) return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
  if (n == 1 && get)
    return send_text(c, MHD_HTTP_OK,
                     "{\"name\":\"kiln\",\"version\":\"0.1.0\",\"extensions\":[\"binary_tensor_data\","
                     "\"statistics\",\"parameters\"]}");
  if (n == 3 && !strcmp(seg[1], "health") && get) {
    if (!strcmp(seg[2], "live")) return send_text(c, MHD_HTTP_OK, "{\"live\":true}");
    if (!strcmp(seg[2], "ready")) {
      bool ready = !s->stopping;
      for (size_t i = 0; i < s->repo.n; i++)
        ready &= s->repo.models[i]->unloaded || s->repo.models[i]->n_versions > 0;
      return send_text(c, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                       ready ? "{\"ready\":true}" : "{\"ready\":false}");
    }
  }
  if (n >= 3 && !strcmp(seg[1], "repository")) return repository(c, seg + 2, n - 2, post);
  if (n < 3 || strcmp(seg[1], "models")) return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
  srv_model *m = srv_repo_find(&s->repo, seg[2]);
  if (!m) return send_error(c, MHD_HTTP_NOT_FOUND, "unknown model");
  const char *version = NULL;
  size_t k = 3;
  if (n >= 5 && !strcmp(seg[3], "versions")) version = seg[4], k = 5;
  const char *action = n > k ? seg[k] : NULL;
  if (n > k + 1) return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
  srv_version *v = srv_model_version(m, version);
  if (!v && m->loading && !m->n_versions)
    return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "model is loading");
  if (!v) {
    if (action && !strcmp(action, "ready") && get && m->error[0] && !version)
      return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, m->error);
    if (!m->n_versions && !version)
      return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                        m->unloaded ? "model is unloaded" : m->error[0] ? m->error : "model not loaded");
    return send_error(c, MHD_HTTP_NOT_FOUND, "unknown model version");
  }
  c->model = m;
  c->ver = v;
  if (!action && get) return model_metadata(c, m, v);
  if (action && !strcmp(action, "ready") && get) return send_text(c, MHD_HTTP_OK, "{\"ready\":true}");
  if (action && !strcmp(action, "stats") && get) {
    srv_buf b = {0};
    srv_stats_write(m, version ? v : NULL, &b);
    return send_json(c, &b);
  }
  if (action && !strcmp(action, "infer")) {
    if (!post) return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "infer takes POST");
    return infer(c, MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
                                                "Inference-Header-Content-Length"));
  }
  return send_error(c, MHD_HTTP_NOT_FOUND, "no such path");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
  kiln_server *s = cls;
  req_ctx *c = *con_cls;
  if (!c) { /* headers are in; the body (if any) comes in the next calls */
    c = calloc(1, sizeof *c);
    if (!c) return MHD_NO;
    c->srv = s;
    c->conn = conn;
    c->slot = -1;
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->mu, NULL);
    atomic_fetch_add(&s->live, 1);
    *con_cls = c;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > s->lim.max_body_bytes)
      return send_error(c, MHD_HTTP_BAD_REQUEST, "request body too large");
    return MHD_YES;
  }
  if (c->state == ST_DONE) return send_ctx(c); /* resumed: the callback built the answer */
  if (c->state != ST_READING) return MHD_YES;
  if (*upload_data_size) {
    if (c->body.len + *upload_data_size > s->lim.max_body_bytes) c->body_too_big = true;
    else srv_buf_put(&c->body, upload_data, *upload_data_size);
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (c->body.failed) return send_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
  /* Held while a handler may touch the runtime's models, which shutdown frees. */
  pthread_mutex_lock(&s->rt_mu);
  enum MHD_Result r;
  if (s->stopping) {
    c->retry_after_s = 1;
    r = send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "the server is shutting down");
  } else {
    r = route(c, url, method);
  }
  pthread_mutex_unlock(&s->rt_mu);
  return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  req_ctx *c = *con_cls;
  if (!c) return;
  *con_cls = NULL;
  if (c->fut && c->state != ST_DONE) kiln_future_cancel(c->fut);
  ctx_unref(c);
}

/* ---- life cycle ------------------------------------------------------------------------------ */

kiln_server_opts kiln_server_opts_default(void) {
  srv_limits l = srv_limits_default();
  return (kiln_server_opts){.struct_size = sizeof(kiln_server_opts),
                            .host = "127.0.0.1",
                            .port = 8000,
                            .max_connections = 256,
                            .connection_timeout_s = 60,
                            .max_body_bytes = l.max_body_bytes,
                            .max_json_bytes = l.max_json_bytes,
                            .max_json_depth = l.max_json_depth,
                            .max_tensor_elements = l.max_tensor_elements};
}

static kiln_status fail(kiln_error *err, kiln_status st, const char *msg, const char *arg) {
  if (err) {
    err->status = st;
    snprintf(err->message, sizeof err->message, "%s%s", msg, arg ? arg : "");
  }
  return st;
}

kiln_status kiln_server_create(const kiln_server_opts *opts, kiln_server **out, kiln_error *err) {
  *out = NULL;
  kiln_server_opts o = kiln_server_opts_default();
  if (opts) memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
  if (!o.model_repository) return fail(err, KILN_INVALID_ARGUMENT, "no model repository", NULL);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(o.port)};
  if (inet_pton(AF_INET, o.host ? o.host : "127.0.0.1", &addr.sin_addr) != 1)
    return fail(err, KILN_INVALID_ARGUMENT, "not an IPv4 address: ", o.host);
  kiln_server *s = calloc(1, sizeof *s);
  if (!s) return fail(err, KILN_NO_MEMORY, "out of memory", NULL);
  s->o = o;
  s->lim = (srv_limits){.max_body_bytes = o.max_body_bytes, .max_json_bytes = o.max_json_bytes,
                        .max_json_depth = o.max_json_depth,
                        .max_tensor_elements = o.max_tensor_elements, .max_tensors = 64};
  s->ep = -1;
  s->wake[0] = s->wake[1] = -1;
  pthread_mutex_init(&s->rt_mu, NULL);
  pthread_mutex_init(&s->load_mu, NULL);
  pthread_mutex_init(&s->watch_mu, NULL);
  pthread_cond_init(&s->poll_cv, NULL);
  pthread_cond_init(&s->ctl_cv, NULL);
  s->o.control_token = NULL; /* points at the caller's string: keep a copy instead */
  kiln_runtime_opts ro = kiln_runtime_opts_default();
  ro.workers = o.workers;
  ro.intra_threads = o.intra_threads;
  kiln_status st = KILN_OK;
  if (o.control_token && o.control_token[0] && !(s->token = strdup(o.control_token))) {
    st = fail(err, KILN_NO_MEMORY, "out of memory", NULL);
    goto fail;
  }
  if ((st = kiln_runtime_create(&ro, &s->rt, err)) != KILN_OK) goto fail;
  if ((st = srv_repo_load(&s->repo, o.model_repository, s->rt, &s->rt_mu, o.log, err)) != KILN_OK)
    goto fail;
  s->n_slots = o.max_connections;
  s->slot = calloc(s->n_slots, sizeof *s->slot);
  s->slot_gen = calloc(s->n_slots, sizeof *s->slot_gen);
  if (!s->slot || !s->slot_gen) {
    st = fail(err, KILN_NO_MEMORY, "out of memory", NULL);
    goto fail;
  }
  s->ep = epoll_create1(EPOLL_CLOEXEC);
  if (s->ep < 0 || pipe(s->wake) != 0) {
    st = fail(err, KILN_INTERNAL, "epoll: ", strerror(errno));
    goto fail;
  }
  struct epoll_event wev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
  epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake[0], &wev);
  if (pthread_create(&s->watcher, NULL, watcher_main, s) != 0) {
    st = fail(err, KILN_INTERNAL, "cannot start the hang-up watcher", NULL);
    goto fail;
  }
  s->watcher_started = true;
  s->d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME,
      0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)o.max_connections,
      MHD_OPTION_CONNECTION_TIMEOUT, o.connection_timeout_s,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 << 10), MHD_OPTION_END);
  if (!s->d) {
    st = fail(err, KILN_IO_ERROR, "cannot listen on ", o.host);
    goto fail;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
  s->port = di ? di->port : o.port;
  if (o.poll_interval_ms) {
    if (pthread_create(&s->poller, NULL, poller_main, s) != 0) {
      st = fail(err, KILN_INTERNAL, "cannot start the repository poller", NULL);
      goto fail;
    }
    s->poller_started = true;
  }
  *out = s;
  return KILN_OK;
fail:
  kiln_server_free(s);
  return st;
}

uint16_t kiln_server_port(const kiln_server *s) { return s->port; }

void kiln_server_free(kiln_server *s) {
  if (!s) return;
  MHD_socket lfd = s->d ? MHD_quiesce_daemon(s->d) : MHD_INVALID_SOCKET;
  pthread_mutex_lock(&s->rt_mu);
  s->stopping = true;
  pthread_cond_broadcast(&s->poll_cv);
  /* Control threads load into the runtime: let them finish (a load in progress completes). */
  while (s->n_ctl) pthread_cond_wait(&s->ctl_cv, &s->rt_mu);
  pthread_mutex_unlock(&s->rt_mu);
  if (s->poller_started) pthread_join(s->poller, NULL); /* before the runtime it loads into goes */
  /* Cancels what is queued or running; each callback resumes its connection with a 503. */
  kiln_runtime_free(s->rt);
  s->rt = NULL;
  /* Let those answers go out, bounded: 2 s. */
  for (int i = 0; s->d && i < 200 && atomic_load(&s->live) > 0; i++) {
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
  if (s->d) MHD_stop_daemon(s->d);
  if (lfd != MHD_INVALID_SOCKET) close(lfd);
  if (s->watcher_started) {
    ssize_t w = write(s->wake[1], "x", 1);
    (void)w;
    pthread_join(s->watcher, NULL);
  }
  if (s->ep >= 0) close(s->ep);
  if (s->wake[0] >= 0) close(s->wake[0]);
  if (s->wake[1] >= 0) close(s->wake[1]);
  srv_repo_free(&s->repo);
  free(s->slot);
  free(s->slot_gen);
  pthread_mutex_destroy(&s->rt_mu);
  pthread_mutex_destroy(&s->load_mu);
  pthread_mutex_destroy(&s->watch_mu);
  pthread_cond_destroy(&s->poll_cv);
  pthread_cond_destroy(&s->ctl_cv);
  free(s->token);
  free(s);
}
