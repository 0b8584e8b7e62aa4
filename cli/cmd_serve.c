/* `kiln serve`: the Open Inference Protocol server (server/) until SIGINT or SIGTERM. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "kiln_server.h"
#include "cli.h"

static void usage(void) {
  fprintf(stderr,
          "usage: kiln serve --model-repository DIR [--host ADDR] [--port N] [--workers N] "
          "[--threads N] [--max-connections N] [--max-body-bytes N]\n"
          "       [--model-control none|poll] [--poll-interval-ms N] [--control-token TOKEN]\n"
          "  the control token may also come from the environment: KILN_CONTROL_TOKEN\n");
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (!*s || *end || s[0] == '-' || v > max) return -1;
  *out = v;
  return 0;
}

int cmd_serve(int argc, char **argv) {
  kiln_server_opts o = kiln_server_opts_default();
  o.log = stderr;
  o.control_token = getenv("KILN_CONTROL_TOKEN");
  bool poll = false;
  unsigned poll_ms = 1000;
  /* every option takes a value: step over pairs */
  for (int i = 0; i < argc; i += 2) {
    unsigned long long v = 0;
    const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (!val) {
      usage();
      return 2;
    }
    if (!strcmp(a, "--model-repository")) o.model_repository = val;
    else if (!strcmp(a, "--host")) o.host = val;
    else if (!strcmp(a, "--port") && !parse_uint(val, 65535, &v)) o.port = (uint16_t)v;
    else if (!strcmp(a, "--workers") && !parse_uint(val, 1024, &v)) o.workers = (int)v;
    else if (!strcmp(a, "--threads") && !parse_uint(val, 1024, &v)) o.intra_threads = (int)v;
    else if (!strcmp(a, "--max-connections") && !parse_uint(val, 65536, &v) && v)
      o.max_connections = (unsigned)v;
    else if (!strcmp(a, "--max-body-bytes") && !parse_uint(val, SIZE_MAX, &v) && v)
      o.max_body_bytes = (size_t)v;
    else if (!strcmp(a, "--model-control") && (!strcmp(val, "poll") || !strcmp(val, "none")))
      poll = !strcmp(val, "poll");
    else if (!strcmp(a, "--poll-interval-ms") && !parse_uint(val, 3600000, &v) && v)
      poll_ms = (unsigned)v;
    else if (!strcmp(a, "--control-token") && val[0]) o.control_token = val;
    else {
      fprintf(stderr, "kiln serve: bad option '%s %s'\n", a, val);
      usage();
      return 2;
    }
  }
  if (poll) o.poll_interval_ms = poll_ms;
  if (!o.model_repository) {
    usage();
    return 2;
  }
  /* Every thread the server starts inherits this mask, so the signals reach sigwait here. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  kiln_server *s = NULL;
  kiln_error err = {0};
  if (kiln_server_create(&o, &s, &err) != KILN_OK) return cli_fail("serve", &err);
  printf("kiln serve: listening on http://%s:%u\n", o.host, (unsigned)kiln_server_port(s));
  fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  fprintf(stderr, "kiln serve: %s, shutting down\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  kiln_server_free(s);
  return 0;
}
