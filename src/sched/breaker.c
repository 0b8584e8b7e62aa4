/* The per-model circuit breaker: a count-based sliding window of the last calls that reached the
   model, judged on failure and slow-call rates. The state is also kept in atomics so statistics
   read it without the lock. */
#include "sched/sched.h"

static void set_state(kiln__breaker *b, kiln_breaker_state s, int64_t now) {
  atomic_store_explicit(&b->state, (int)s, memory_order_relaxed);
  /* Each state starts with a clean window: old calls must not re-open it at once. */
  memset(b->window, 0, b->window_cap);
  b->head = b->count = b->failures = b->slows = 0;
  b->probes_admitted = b->probes_ok = 0;
  switch (s) {
    case KILN_BREAKER_OPEN:
      atomic_store_explicit(&b->open_until, now + b->cooldown_ns, memory_order_relaxed);
      kiln__count(&b->opened, 1);
      break;
    case KILN_BREAKER_HALF_OPEN: kiln__count(&b->half_opened, 1); break;
    case KILN_BREAKER_CLOSED: kiln__count(&b->closed, 1); break;
  }
}

kiln_status kiln__breaker_init(kiln__breaker *b, const kiln__breaker_cfg *c, kiln_error *err) {
  memset(b, 0, sizeof *b);
  if (c->window == 0) return KILN_OK;
  if (c->failure_rate < 0 || c->failure_rate > 1 || c->slow_rate < 0 || c->slow_rate > 1 ||
      c->cooldown_us < 0 || c->slow_call_us < 0)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "breaker rates must be in [0, 1] and times not negative");
  b->window_cap = c->window;
  b->min_calls = c->min_calls ? KILN__MIN(c->min_calls, b->window_cap) : 1;
  b->probes = c->probes ? c->probes : 1;
  b->failure_rate = c->failure_rate;
  b->slow_rate = c->slow_rate;
  b->slow_ns = c->slow_call_us * 1000;
  b->cooldown_ns = c->cooldown_us * 1000;
  b->window = kiln__calloc(b->window_cap, 1);
  if (!b->window) return kiln__fail(err, KILN_NO_MEMORY, "out of memory for a breaker window");
  pthread_mutex_init(&b->mu, NULL);
  b->on = true;
  return KILN_OK;
}

void kiln__breaker_destroy(kiln__breaker *b) {
  if (!b->on) return;
  pthread_mutex_destroy(&b->mu);
  kiln__free(b->window);
}

bool kiln__breaker_admit(kiln__breaker *b, int64_t now, bool *probe, int64_t *retry_ns) {
  *probe = false;
  *retry_ns = 0;
  if (!b->on) return true;
  /* The common case needs no lock. */
  if (atomic_load_explicit(&b->state, memory_order_relaxed) == KILN_BREAKER_CLOSED) return true;
  bool ok = true;
  pthread_mutex_lock(&b->mu);
  int s = atomic_load_explicit(&b->state, memory_order_relaxed);
  if (s == KILN_BREAKER_OPEN) {
    int64_t until = atomic_load_explicit(&b->open_until, memory_order_relaxed);
    if (now < until) {
      ok = false;
      *retry_ns = until - now;
    } else {
      set_state(b, KILN_BREAKER_HALF_OPEN, now);
      s = KILN_BREAKER_HALF_OPEN;
    }
  }
  if (s == KILN_BREAKER_HALF_OPEN) {
    if (b->probes_admitted < b->probes) {
      b->probes_admitted++;
      *probe = true;
    } else {
      /* The probes decide soon; a caller should come back after about one cool-down. */
      ok = false;
      *retry_ns = b->cooldown_ns > 0 ? b->cooldown_ns : 1000;
    }
  }
  pthread_mutex_unlock(&b->mu);
  return ok;
}

void kiln__breaker_forget_probe(kiln__breaker *b) {
  if (!b->on) return;
  pthread_mutex_lock(&b->mu);
  if (atomic_load_explicit(&b->state, memory_order_relaxed) == KILN_BREAKER_HALF_OPEN &&
      b->probes_admitted > 0)
    b->probes_admitted--;
  pthread_mutex_unlock(&b->mu);
}

void kiln__breaker_record(kiln__breaker *b, bool probe, bool failed, int64_t latency_ns,
                          int64_t now) {
  if (!b->on) return;
  bool slow = b->slow_rate > 0 && latency_ns > b->slow_ns;
  kiln__count(failed ? &b->n_failed : &b->n_ok, 1);
  pthread_mutex_lock(&b->mu);
  int s = atomic_load_explicit(&b->state, memory_order_relaxed);
  if (s == KILN_BREAKER_HALF_OPEN) {
    /* Only the probes of this half-open period count; stragglers admitted earlier do not. */
    if (probe) {
      if (failed || slow) set_state(b, KILN_BREAKER_OPEN, now);
      else if (++b->probes_ok >= b->probes) set_state(b, KILN_BREAKER_CLOSED, now);
    }
  } else if (s == KILN_BREAKER_CLOSED) {
    if (b->count == b->window_cap) {
      uint8_t old = b->window[b->head];
      b->failures -= old & 1;
      b->slows -= (old >> 1) & 1;
    } else {
      b->count++;
    }
    b->window[b->head] = (uint8_t)((failed ? 1 : 0) | (slow ? 2 : 0));
    b->head = (b->head + 1) % b->window_cap;
    b->failures += failed;
    b->slows += slow;
    if (b->count >= b->min_calls) {
      double n = (double)b->count;
      if ((b->failure_rate > 0 && (double)b->failures / n >= b->failure_rate) ||
          (b->slow_rate > 0 && (double)b->slows / n >= b->slow_rate))
        set_state(b, KILN_BREAKER_OPEN, now);
    }
  }
  pthread_mutex_unlock(&b->mu);
}
