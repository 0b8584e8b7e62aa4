/* Core-to-core round trip: two threads pinned to CPUs A and B hand one cache line back and forth
 * (store, then wait for the other's store) and the mean round trip is printed in nanoseconds.
 *
 * Why it is here: on the 2-vCPU development VM Kiln's two-thread latency is bimodal (SqueezeNet
 * 1.65 or 2.7 ms, minute by minute, bench/RESULTS.md). The slow minutes are the minutes in which
 * this round trip reads ~400 ns instead of ~90 (the host has put the two vCPUs far apart: a
 * cache line written by one thread costs the other ~200 ns), so the benchmark scripts print it
 * next to their tables. Not a test.
 *   cc -std=c11 -D_GNU_SOURCE -O2 -pthread bench/core_rtt.c -o build/core_rtt
 * usage: core_rtt [CPU_A CPU_B] [ROUND_TRIPS]   (defaults 0 1 200000; Linux only) */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct pingpong {
  _Alignas(64) atomic_long flag;
  int cpu;
  long n;
} pingpong;

static int pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  return pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *pong(void *arg) {
  pingpong *p = arg;
  if (pin(p->cpu) != 0) return NULL;
  for (long i = 0; i < p->n; i++) {
    while (atomic_load_explicit(&p->flag, memory_order_acquire) != 2 * i + 1) {
    }
    atomic_store_explicit(&p->flag, 2 * i + 2, memory_order_release);
  }
  return NULL;
}

int main(int argc, char **argv) {
  int a = argc > 2 ? atoi(argv[1]) : 0, b = argc > 2 ? atoi(argv[2]) : 1;
  long n = argc > 3 ? atol(argv[3]) : argc == 2 ? atol(argv[1]) : 200000;
  static pingpong p;
  atomic_init(&p.flag, 0);
  p.cpu = b;
  p.n = n > 0 ? n : 1;
  if (pin(a) != 0) {
    fprintf(stderr, "core_rtt: cannot pin to CPU %d\n", a);
    return 1;
  }
  pthread_t t;
  if (pthread_create(&t, NULL, pong, &p) != 0) return 1;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < p.n; i++) {
    atomic_store_explicit(&p.flag, 2 * i + 1, memory_order_release);
    while (atomic_load_explicit(&p.flag, memory_order_acquire) != 2 * i + 2) {
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  pthread_join(t, NULL);
  double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
  printf("core_rtt: CPUs %d-%d round trip %.0f ns\n", a, b, ns / (double)p.n);
  return 0;
}
