/* Kiln's model server: the Open Inference Protocol (KServe v2) over HTTP/1.1 on libmicrohttpd,
 * in front of the async runtime. Uses only the public headers in include/kiln.
 *
 * One object, kiln_server: it loads a model repository into its own kiln_runtime, listens, and
 * serves from libmicrohttpd's polling thread. A request's connection is suspended while the
 * runtime queues and runs it and resumed from the completion callback, so no thread waits per
 * request. See docs/SERVER.md. */
#ifndef KILN_SERVER_H
#define KILN_SERVER_H

#include <stdint.h>
#include <stdio.h>

#include "kiln/runtime.h"

typedef struct kiln_server kiln_server;

typedef struct kiln_server_opts {
  size_t struct_size; /* sizeof(kiln_server_opts), set by kiln_server_opts_default() */
  const char *model_repository; /* DIR/<model>/<version>/model.onnx + DIR/<model>/config.json */
  const char *host;             /* IPv4 address to bind; default "127.0.0.1" (loopback only) */
  uint16_t port;                /* 0 = any free port (read it back with kiln_server_port) */
  int workers, intra_threads;   /* the runtime's thread budget (0 = its defaults) */
  unsigned max_connections;     /* default 256 */
  unsigned connection_timeout_s; /* idle connections are closed after this; default 60 */
  size_t max_body_bytes;        /* default 64 MiB */
  size_t max_json_bytes;        /* default 32 MiB */
  size_t max_json_depth;        /* default 32 */
  size_t max_tensor_elements;   /* per tensor, default 16 Mi */
  FILE *log;                    /* load errors and notices; NULL = silent */
  /* The repository endpoints (index, load, unload) need `Authorization: Bearer <token>` when
     this is set (copied at create); NULL = open. */
  const char *control_token;
  unsigned poll_interval_ms;    /* > 0: rescan the repository this often (--model-control poll) */
} kiln_server_opts;

kiln_server_opts kiln_server_opts_default(void);

/* Loads the repository (a model that fails to load is reported, listed as not ready, and does
   not stop the others) and starts listening. */
kiln_status kiln_server_create(const kiln_server_opts *opts, kiln_server **out, kiln_error *err);
/* The bound TCP port. */
uint16_t kiln_server_port(const kiln_server *s);
/* Clean shutdown: stops accepting, cancels queued and running requests (their clients get 503),
   lets their answers go out (bounded wait), stops the HTTP thread, frees everything. NULL is a
   no-op. */
void kiln_server_free(kiln_server *s);

#endif
