/* Streaming batch-submit: many requests in one call, each result handed to one callback in
   completion order. Completions may happen on several threads at once; they append their index
   to a list and whichever thread finds no delivery in progress delivers the list, so the
   callback is never run twice at once, never nested (a callback that cancels the stream only
   appends), and sees the order in which requests completed. */
#include <time.h>

#include "sched/sched.h"

struct kiln_stream {
  atomic_int refs; /* the caller's, and the runtime's until every result is delivered */
  size_t n;
  kiln_future **items;
  size_t *pending; /* completed, in order; [head, tail) not delivered yet */
  size_t head, tail, delivered;
  bool delivering;
  kiln_stream_fn fn;
  void *user;
  pthread_mutex_t mu;
  pthread_cond_t cv;
};

static void stream_unref(kiln_stream *s) {
  if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
  for (size_t i = 0; i < s->n; i++) kiln__future_unref(s->items[i]);
  kiln__free(s->items);
  kiln__free(s->pending);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  kiln__free(s);
}

void kiln__stream_item_done(kiln_future *f) {
  kiln_stream *s = f->stream;
  pthread_mutex_lock(&s->mu);
  s->pending[s->tail++] = f->index;
  if (s->delivering) {
    pthread_mutex_unlock(&s->mu);
    return;
  }
  s->delivering = true;
  while (s->head < s->tail) {
    size_t i = s->pending[s->head++];
    pthread_mutex_unlock(&s->mu);
    s->fn(i, s->items[i], s->user);
    pthread_mutex_lock(&s->mu);
    s->delivered++;
  }
  s->delivering = false;
  bool all = s->delivered == s->n;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (all) stream_unref(s);
}

/* Undoes a stream none of whose requests was queued. */
static void stream_abort(kiln_stream *s) {
  for (size_t i = 0; s->items && i < s->n; i++) kiln__future_unref(s->items[i]);
  stream_unref(s);
  stream_unref(s);
}

kiln_status kiln_runtime_submit_stream(kiln_runtime_model *m, const kiln_request *reqs, size_t n,
                                       kiln_stream_fn fn, void *user, kiln_stream **out,
                                       kiln_error *err) {
  *out = NULL;
  if (!m || (n && !reqs) || !fn)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "NULL model, requests or callback");
  kiln_stream *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating a stream");
  s->n = n;
  s->fn = fn;
  s->user = user;
  atomic_init(&s->refs, 2);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->items = kiln__calloc(n + 1, sizeof *s->items);
  s->pending = kiln__calloc(n + 1, sizeof *s->pending);
  bool ok = s->items && s->pending;
  /* Every future exists before the first is queued: a fast completion may read any of them. */
  for (size_t i = 0; ok && i < n; i++) {
    kiln_request r = kiln_request_default();
    size_t sz = reqs[i].struct_size;
    if (sz < 2 * sizeof(size_t) || sz > sizeof r) {
      s->n = i;
      stream_abort(s);
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "kiln_request %zu: struct_size is wrong", i);
    }
    memcpy(&r, &reqs[i], sz);
    r.struct_size = sizeof r;
    r.on_complete = NULL;
    s->items[i] = kiln__future_new(m, &r);
    if (!s->items[i]) {
      ok = false;
      s->n = i;
      break;
    }
    atomic_store_explicit(&s->items[i]->refs, 2, memory_order_relaxed); /* runtime + stream */
    s->items[i]->stream = s;
    s->items[i]->index = i;
  }
  if (!ok) {
    if (!s->items) s->n = 0;
    stream_abort(s);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating a stream");
  }
  *out = s;
  if (n == 0) {
    stream_unref(s); /* nothing to deliver */
    return KILN_OK;
  }
  for (size_t i = 0; i < n; i++) {
    kiln_future *f = s->items[i];
    kiln_error e = {0};
    kiln_status st = kiln__submit(m, f, &e);
    if (st != KILN_OK) {
      kiln__future_reject(f, st, &e);
      kiln__stream_item_done(f);
      kiln__future_unref(f); /* the runtime's share: it never had the request */
    }
  }
  return KILN_OK;
}

void kiln_stream_cancel(kiln_stream *s) {
  for (size_t i = 0; i < s->n; i++) kiln_future_cancel(s->items[i]);
}

bool kiln_stream_wait(kiln_stream *s, int64_t timeout_us) {
  int64_t until = timeout_us < 0 ? 0 : kiln__now_ns() + timeout_us * 1000;
  pthread_mutex_lock(&s->mu);
  while (s->delivered < s->n) {
    if (until) {
      int64_t now = kiln__now_ns();
      if (now >= until) break;
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      int64_t abs = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + (until - now);
      ts.tv_sec = (time_t)(abs / 1000000000);
      ts.tv_nsec = (long)(abs % 1000000000);
      pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    } else {
      pthread_cond_wait(&s->cv, &s->mu);
    }
  }
  bool all = s->delivered == s->n;
  pthread_mutex_unlock(&s->mu);
  return all;
}

void kiln_stream_release(kiln_stream *s) {
  if (s) stream_unref(s);
}
