/* Reference kernels: misc ops (Einsum).
 *
 * Einsum parses its equation into labels: a-z and A-Z for the letters, then one label per
 * dimension of the broadcast ellipsis. Every operand then has a stride per label (summed when a
 * label repeats within an operand, which reads a diagonal; 0 where a size-1 dimension broadcasts),
 * and the kernel runs one generic loop: output labels outside, summed labels inside. */
#include "ir/op.h"

#define EIN_LETTERS 52
#define EIN_LABELS (EIN_LETTERS + KILN_MAX_RANK)
#define EIN_MAX_INPUTS 16
#define EIN_MAX_EQ 512

typedef struct ein {
  int n_in;
  int rank[EIN_MAX_INPUTS];
  int lab[EIN_MAX_INPUTS][KILN_MAX_RANK]; /* label of each operand dimension */
  int out_rank;
  int out_lab[KILN_MAX_RANK];
  int n_sum;
  int sum_lab[EIN_LABELS]; /* labels summed over, in first-use order */
  int64_t size[EIN_LABELS]; /* -1 for unused labels */
} ein;

static int letter_label(char ch) {
  if (ch >= 'a' && ch <= 'z') return ch - 'a';
  if (ch >= 'A' && ch <= 'Z') return 26 + (ch - 'A');
  return -1;
}

/* Parses one term (already free of spaces) into letter labels with the ellipsis position: on
   return `n` letters, `ell` is the number of letters before "..." or -1 when it has none. */
static kiln_status parse_term(const kiln__kctx *c, const char *s, size_t len, int *labs, int *n,
                              int *ell) {
  *n = 0;
  *ell = -1;
  for (size_t i = 0; i < len;) {
    if (s[i] == '.') {
      if (*ell >= 0 || i + 2 >= len || s[i + 1] != '.' || s[i + 2] != '.')
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum: malformed ellipsis in '%.*s'",
                          (int)len, s);
      *ell = *n;
      i += 3;
      continue;
    }
    int l = letter_label(s[i]);
    if (l < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum: unexpected character '%c'", s[i]);
    if (*n >= KILN_MAX_RANK)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum: term '%.*s' has too many labels",
                        (int)len, s);
    labs[(*n)++] = l;
    i++;
  }
  return KILN_OK;
}

static kiln_status ein_parse(const kiln__kctx *c, ein *e) {
  const char *eq = kiln__attr_str(c->node, "equation", NULL);
  if (!eq) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum needs attribute 'equation'");
  char buf[EIN_MAX_EQ];
  size_t len = 0;
  for (const char *p = eq; *p; p++) {
    if (*p == ' ' || *p == '\t' || *p == '\n') continue;
    if (len + 1 >= sizeof buf)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum equation is too long");
    buf[len++] = *p;
  }
  buf[len] = '\0';
  if (c->n_in > EIN_MAX_INPUTS)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "Einsum with %d inputs (at most %d)", c->n_in,
                      EIN_MAX_INPUTS);
  const char *arrow = strstr(buf, "->");
  size_t lhs_len = arrow ? (size_t)(arrow - buf) : len;

  memset(e, 0, sizeof *e);
  e->n_in = c->n_in;
  for (int l = 0; l < EIN_LABELS; l++) e->size[l] = -1;
  int letters[EIN_MAX_INPUTS][KILN_MAX_RANK], nlet[EIN_MAX_INPUTS], ell[EIN_MAX_INPUTS];
  int n_ell = 0; /* rank of the broadcast ellipsis */
  size_t start = 0;
  int term = 0;
  for (size_t i = 0; i <= lhs_len; i++) {
    if (i < lhs_len && buf[i] != ',') continue;
    if (term >= c->n_in)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum equation has more terms than the "
                        "%d inputs", c->n_in);
    kiln_status st = parse_term(c, buf + start, i - start, letters[term], &nlet[term], &ell[term]);
    if (st != KILN_OK) return st;
    const kiln_tensor *t = c->in[term];
    if (!t) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum input %d is missing", term);
    int er = t->rank - nlet[term];
    if (er < 0 || (ell[term] < 0 && er != 0))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "Einsum term %d has %d labels for an input of rank %d", term, nlet[term],
                        t->rank);
    n_ell = KILN__MAX(n_ell, er);
    term++;
    start = i + 1;
  }
  if (term != c->n_in)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum equation has %d terms for %d inputs",
                      term, c->n_in);

  /* Operand labels and label sizes; size-1 dimensions broadcast. */
  int uses[EIN_LABELS] = {0};
  for (int k = 0; k < e->n_in; k++) {
    const kiln_tensor *t = c->in[k];
    int er = t->rank - nlet[k], d = 0;
    for (int i = 0; i <= nlet[k]; i++) {
      if (i == ell[k])
        for (int j = 0; j < er; j++) e->lab[k][d++] = EIN_LETTERS + (n_ell - er + j);
      if (i < nlet[k]) e->lab[k][d++] = letters[k][i];
    }
    e->rank[k] = t->rank;
    for (int i = 0; i < t->rank; i++) {
      int l = e->lab[k][i];
      int64_t sz = t->dims[i];
      uses[l]++;
      if (e->size[l] < 0 || e->size[l] == 1) e->size[l] = sz;
      else if (sz != 1 && sz != e->size[l])
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "Einsum: a label has sizes %lld and %lld", (long long)e->size[l],
                          (long long)sz);
    }
  }

  /* Output labels: explicit, or the ellipsis then every letter used once, alphabetically. */
  bool in_out[EIN_LABELS] = {false};
  e->out_rank = 0;
  if (arrow) {
    int olet[KILN_MAX_RANK], on, oell;
    const char *rhs = arrow + 2;
    kiln_status st = parse_term(c, rhs, strlen(rhs), olet, &on, &oell);
    if (st != KILN_OK) return st;
    if (on + (oell >= 0 ? n_ell : 0) > KILN_MAX_RANK)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum output rank is too large");
    for (int i = 0; i <= on; i++) {
      if (i == oell)
        for (int j = 0; j < n_ell; j++) e->out_lab[e->out_rank++] = EIN_LETTERS + j;
      if (i == on) break;
      int l = olet[i];
      if (!uses[l])
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "Einsum output label '%c' is not in any input",
                          l < 26 ? 'a' + l : 'A' + (l - 26));
      if (in_out[l])
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum output repeats a label");
      in_out[l] = true;
      e->out_lab[e->out_rank++] = l;
    }
    for (int j = 0; j < e->out_rank; j++) in_out[e->out_lab[j]] = true;
  } else {
    for (int j = 0; j < n_ell; j++) e->out_lab[e->out_rank++] = EIN_LETTERS + j;
    for (int pass = 0; pass < 2; pass++) /* 'A'-'Z' sort before 'a'-'z' */
      for (int i = 0; i < 26; i++) {
        int l = pass == 0 ? 26 + i : i;
        if (uses[l] != 1) continue;
        if (e->out_rank >= KILN_MAX_RANK)
          return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum output rank is too large");
        e->out_lab[e->out_rank++] = l;
      }
    for (int j = 0; j < e->out_rank; j++) in_out[e->out_lab[j]] = true;
  }
  e->n_sum = 0;
  for (int k = 0; k < e->n_in; k++)
    for (int i = 0; i < e->rank[k]; i++) {
      int l = e->lab[k][i];
      if (in_out[l]) continue;
      in_out[l] = true; /* listed once */
      e->sum_lab[e->n_sum++] = l;
    }
  return KILN_OK;
}

static kiln_status infer_einsum(kiln__kctx *c) {
  kiln_dtype t = c->in[0]->dtype;
  for (int k = 0; k < c->n_in; k++)
    if (!c->in[k] || c->in[k]->dtype != t)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Einsum inputs must share one dtype");
  if (!kiln__dtype_is_float(t) && !kiln__dtype_is_signed_int(t) &&
      !kiln__dtype_is_unsigned_int(t))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "Einsum does not support %s",
                      kiln_dtype_name(t));
  ein e;
  kiln_status st = ein_parse(c, &e);
  if (st != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  for (int i = 0; i < e.out_rank; i++) dims[i] = e.size[e.out_lab[i]];
  kiln__set_shape(c->out[0], t, e.out_rank, dims);
  return KILN_OK;
}

/* One product term of the sum: the inputs at their current offsets. */
static double ein_prod_f64(const kiln__kctx *c, kiln_dtype t, const size_t *off) {
  double p = 1;
  if (t == KILN_DTYPE_FLOAT)
    for (int k = 0; k < c->n_in; k++) p *= ((const float *)c->in[k]->data)[off[k]];
  else
    for (int k = 0; k < c->n_in; k++) p *= kiln__load_f64(c->in[k]->data, t, off[k]);
  return p;
}

static uint64_t ein_prod_i64(const kiln__kctx *c, kiln_dtype t, const size_t *off) {
  uint64_t p = 1;
  for (int k = 0; k < c->n_in; k++) p *= (uint64_t)kiln__load_i64(c->in[k]->data, t, off[k]);
  return p;
}

static kiln_status run_einsum(kiln__kctx *c) {
  ein e;
  kiln_status st = ein_parse(c, &e);
  if (st != KILN_OK) return st;
  kiln_tensor *y = c->out[0];
  kiln_dtype t = y->dtype;
  bool fl = kiln__dtype_is_float(t);

  /* stride[k][l]: how far input k moves when label l steps by one. */
  size_t stride[EIN_MAX_INPUTS][EIN_LABELS];
  memset(stride, 0, sizeof stride);
  for (int k = 0; k < e.n_in; k++) {
    int64_t s[KILN_MAX_RANK];
    kiln__strides(e.rank[k], c->in[k]->dims, s);
    for (int i = 0; i < e.rank[k]; i++)
      if (c->in[k]->dims[i] != 1) stride[k][e.lab[k][i]] += (size_t)s[i];
  }
  size_t out_count = kiln_tensor_count(y), sum_count = 1;
  for (int j = 0; j < e.n_sum; j++) sum_count *= (size_t)e.size[e.sum_lab[j]];

  int64_t oidx[KILN_MAX_RANK] = {0};
  size_t base[EIN_MAX_INPUTS] = {0};
  for (size_t o = 0; o < out_count; o++) {
    double accf = 0;
    uint64_t acci = 0;
    if (sum_count > 0) {
      size_t off[EIN_MAX_INPUTS];
      int64_t sidx[EIN_LABELS] = {0};
      memcpy(off, base, sizeof off);
      for (;;) {
        if (fl) accf += ein_prod_f64(c, t, off);
        else acci += ein_prod_i64(c, t, off);
        int j = e.n_sum - 1;
        for (; j >= 0; j--) {
          int l = e.sum_lab[j];
          for (int k = 0; k < e.n_in; k++) off[k] += stride[k][l];
          if (++sidx[j] < e.size[l]) break;
          for (int k = 0; k < e.n_in; k++) off[k] -= stride[k][l] * (size_t)e.size[l];
          sidx[j] = 0;
        }
        if (j < 0) break;
      }
    }
    if (t == KILN_DTYPE_FLOAT) ((float *)y->data)[o] = (float)accf;
    else if (fl) kiln__store_f64(y->data, t, o, accf);
    else kiln__store_i64(y->data, t, o, (int64_t)acci);
    for (int i = e.out_rank - 1; i >= 0; i--) {
      int l = e.out_lab[i];
      for (int k = 0; k < e.n_in; k++) base[k] += stride[k][l];
      if (++oidx[i] < e.size[l]) break;
      for (int k = 0; k < e.n_in; k++) base[k] -= stride[k][l] * (size_t)e.size[l];
      oidx[i] = 0;
    }
  }
  return KILN_OK;
}

const kiln__op kiln__ops_misc[] = {
    {"", "Einsum", infer_einsum, run_einsum, NULL, 0, 1, -1},
    {0},
};
