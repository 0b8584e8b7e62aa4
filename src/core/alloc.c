/* The allocator every part of Kiln uses: counts allocations (the zero-allocation test reads the
   count) and can fail the n-th one (fault injection in tests). */
/* madvise(MADV_HUGEPAGE) is a Linux extension beyond POSIX. */
#define _DEFAULT_SOURCE
#include "core/common.h"

#include <stdatomic.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

static _Atomic uint64_t alloc_count;
static _Atomic uint64_t fail_at; /* 0 = never; else the alloc_count value that fails */

uint64_t kiln_alloc_count(void) { return atomic_load_explicit(&alloc_count, memory_order_relaxed); }

void kiln__alloc_fail_after(uint64_t n) {
  atomic_store(&fail_at, n ? atomic_load(&alloc_count) + n : 0);
}

static bool count_one(void) {
  uint64_t c = atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed) + 1;
  uint64_t f = atomic_load_explicit(&fail_at, memory_order_relaxed);
  return !(f && c == f);
}

void *kiln__malloc(size_t n) { return count_one() ? malloc(n ? n : 1) : NULL; }

void *kiln__calloc(size_t n, size_t size) {
  return count_one() ? calloc(n ? n : 1, size ? size : 1) : NULL;
}

void *kiln__realloc(void *p, size_t n) { return count_one() ? realloc(p, n ? n : 1) : NULL; }

void kiln__free(void *p) { free(p); }

/* Blocks of 2 MiB or more (packed weights, the arena) start on a 2 MiB boundary and ask Linux
   for transparent huge pages (its default policy, "madvise", gives none unless asked): a
   model's weights then cost a few TLB entries instead of thousands, which matters most in a VM,
   where every TLB miss walks two page tables. Only whole huge pages are advised, so the tail
   of a block costs no more memory than before. */
#define HUGE_PAGE ((size_t)2 << 20)

void *kiln__aligned_alloc(size_t n) {
  if (!count_one()) return NULL;
  size_t rounded = (n + KILN__ALIGN - 1) / KILN__ALIGN * KILN__ALIGN;
  if (rounded < n) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (rounded >= HUGE_PAGE) {
    void *p = NULL; /* posix_memalign: C11's aligned_alloc wants size a multiple of 2 MiB */
    if (posix_memalign(&p, HUGE_PAGE, rounded) != 0) return NULL;
    (void)madvise(p, rounded / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE); /* a hint */
    return p;
  }
#endif
  return aligned_alloc(KILN__ALIGN, rounded ? rounded : KILN__ALIGN);
}

void kiln__aligned_free(void *p) { free(p); }

char *kiln__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = kiln__malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}
