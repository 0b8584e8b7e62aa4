/* Reference kernels: the recurrent ops RNN, GRU and LSTM.
 *
 * The three share one driver. For each direction, the input projection of every time step
 * (X * W^T plus the biases that do not depend on the state) is one GEMM over all seq * batch rows;
 * each step then adds the recurrent projection H * R^T (one GEMM over the batch) and applies the
 * cell. The state, gate buffers and the projection live in scratch. Inputs of another float type
 * (double, float16, bfloat16) are converted to float32 scratch copies first, and the outputs back.
 *
 * sequence_lens: batch entry b runs seq_lens[b] steps; Y is zero past its end, and Y_h / Y_c hold
 * its last valid state. The reverse direction starts at t = seq_lens[b] - 1. */
#include <math.h>
#include <stdio.h>

#include "ir/op.h"
#include "kernels/ref/gemm.h"

typedef enum cell_kind { CELL_RNN = 0, CELL_GRU, CELL_LSTM } cell_kind;

typedef enum act_kind {
  ACT_RELU = 0,
  ACT_TANH,
  ACT_SIGMOID,
  ACT_AFFINE,
  ACT_LEAKYRELU,
  ACT_THRESHOLDEDRELU,
  ACT_SCALEDTANH,
  ACT_HARDSIGMOID,
  ACT_ELU,
  ACT_SOFTSIGN,
  ACT_SOFTPLUS,
} act_kind;

typedef struct act_fn {
  act_kind kind;
  float alpha, beta;
} act_fn;

/* name, whether it takes alpha / beta, and their defaults (used when the lists run out). */
static const struct {
  const char *name;
  act_kind kind;
  bool has_alpha, has_beta;
  float alpha, beta;
} act_table[] = {
    {"Relu", ACT_RELU, false, false, 0.0f, 0.0f},
    {"Tanh", ACT_TANH, false, false, 0.0f, 0.0f},
    {"Sigmoid", ACT_SIGMOID, false, false, 0.0f, 0.0f},
    {"Affine", ACT_AFFINE, true, true, 1.0f, 0.0f},
    {"LeakyRelu", ACT_LEAKYRELU, true, false, 0.01f, 0.0f},
    {"ThresholdedRelu", ACT_THRESHOLDEDRELU, true, false, 1.0f, 0.0f},
    {"ScaledTanh", ACT_SCALEDTANH, true, true, 1.0f, 1.0f},
    {"HardSigmoid", ACT_HARDSIGMOID, true, true, 0.2f, 0.5f},
    {"Elu", ACT_ELU, true, false, 1.0f, 0.0f},
    {"Softsign", ACT_SOFTSIGN, false, false, 0.0f, 0.0f},
    {"Softplus", ACT_SOFTPLUS, false, false, 0.0f, 0.0f},
};

enum { MAX_ACTS = 3 }; /* per direction */

typedef struct rnn_cfg {
  cell_kind kind;
  kiln_dtype dtype;
  int gates;   /* gate blocks in W / R: 1, 3 or 4 */
  int n_acts;  /* activations per direction: 1, 2 or 3 */
  int dirs;    /* 1 or 2 */
  bool reverse; /* the single direction runs backwards */
  int layout;  /* 0: [seq, batch, ...]; 1: [batch, seq, ...] */
  size_t seq, batch, input, hidden;
  bool has_clip;
  float clip;
  bool lbr;          /* GRU linear_before_reset */
  bool input_forget; /* LSTM */
  act_fn acts[2 * MAX_ACTS];
} rnn_cfg;

/* Scratch layout, in floats from the start of c->scratch. */
typedef struct rnn_mem {
  size_t xw, gates, h, c, tmp, lens;      /* always (lens: int64 per batch entry) */
  size_t x, w, r, b, p, h0, c0, y, yh, yc; /* dtype conversion copies (non-float32 only) */
  size_t total;
} rnn_mem;

static const kiln_tensor *in_at(const kiln__kctx *c, int i) {
  return i < c->n_in ? c->in[i] : NULL;
}

static kiln_tensor *out_at(const kiln__kctx *c, int i) {
  return i < c->n_out ? c->out[i] : NULL;
}

static bool dtype_ok(kiln_dtype t) {
  return t == KILN_DTYPE_FLOAT || t == KILN_DTYPE_DOUBLE || t == KILN_DTYPE_FLOAT16 ||
         t == KILN_DTYPE_BFLOAT16;
}

static bool ieq(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
    char y = *b >= 'A' && *b <= 'Z' ? (char)(*b + 32) : *b;
    if (x != y) return false;
  }
  return *a == *b;
}

static void shape_str(char *buf, size_t cap, int rank, const int64_t *dims) {
  size_t len = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < rank && len + 24 < cap; i++)
    len += (size_t)snprintf(buf + len, cap - len, i ? ", %lld" : "%lld", (long long)dims[i]);
  snprintf(buf + len, cap - len, "]");
}

static kiln_status check_shape(const kiln__kctx *c, const kiln_tensor *t, const char *what,
                               int rank, const int64_t *dims, kiln_dtype dtype) {
  if (t->dtype != dtype)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s has type %s, expected %s", what,
                      kiln_dtype_name(t->dtype), kiln_dtype_name(dtype));
  bool ok = t->rank == rank;
  for (int i = 0; ok && i < rank; i++) ok = t->dims[i] == dims[i];
  if (!ok) {
    char want[128], got[128];
    shape_str(want, sizeof want, rank, dims);
    shape_str(got, sizeof got, t->rank, t->dims);
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s has shape %s, expected %s", what, got,
                      want);
  }
  return KILN_OK;
}

/* Reads attributes and checks every input's shape. */
static kiln_status parse_cfg(const kiln__kctx *c, cell_kind kind, rnn_cfg *g) {
  const kiln__node *n = c->node;
  memset(g, 0, sizeof *g);
  g->kind = kind;
  g->gates = kind == CELL_RNN ? 1 : kind == CELL_GRU ? 3 : 4;
  g->n_acts = kind == CELL_RNN ? 1 : kind == CELL_GRU ? 2 : 3;

  const kiln_tensor *x = in_at(c, 0), *w = in_at(c, 1), *r = in_at(c, 2);
  if (!x || !w || !r)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "X, W and R are required");
  g->dtype = x->dtype;
  if (!dtype_ok(g->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "unsupported input type %s",
                      kiln_dtype_name(g->dtype));

  const char *dir = kiln__attr_str(n, "direction", "forward");
  if (!strcmp(dir, "forward")) g->dirs = 1;
  else if (!strcmp(dir, "reverse")) g->dirs = 1, g->reverse = true;
  else if (!strcmp(dir, "bidirectional")) g->dirs = 2;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown direction '%s'", dir);

  int64_t layout = kiln__attr_int(n, "layout", 0);
  if (layout != 0 && layout != 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "layout must be 0 or 1, got %lld",
                      (long long)layout);
  g->layout = (int)layout;

  if (x->rank != 3)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "X must have rank 3, got %d", x->rank);
  for (int i = 0; i < 3; i++)
    if (x->dims[i] < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "X has a negative dimension");
  g->seq = (size_t)x->dims[g->layout ? 1 : 0];
  g->batch = (size_t)x->dims[g->layout ? 0 : 1];
  g->input = (size_t)x->dims[2];

  if (r->rank != 3 || r->dims[2] < 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "R must have rank 3");
  int64_t hidden = kiln__attr_int(n, "hidden_size", r->dims[2]);
  if (hidden < 0 || hidden != r->dims[2])
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "hidden_size %lld does not match R's last dimension %lld",
                      (long long)hidden, (long long)r->dims[2]);
  g->hidden = (size_t)hidden;
  size_t tmp;
  if (g->hidden > ((size_t)1 << 28) || g->input > ((size_t)1 << 40) ||
      !kiln__mul_ok(g->seq, g->batch, &tmp) || !kiln__mul_ok(tmp, g->hidden * 8, &tmp))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "sizes overflow");

  int64_t D = g->dirs, B = (int64_t)g->batch, H = hidden, G = g->gates;
  kiln_status st;
  int64_t wd[3] = {D, G * H, (int64_t)g->input};
  if ((st = check_shape(c, w, "W", 3, wd, g->dtype))) return st;
  int64_t rd[3] = {D, G * H, H};
  if ((st = check_shape(c, r, "R", 3, rd, g->dtype))) return st;
  const kiln_tensor *b = in_at(c, 3), *sl = in_at(c, 4), *h0 = in_at(c, 5);
  if (b) {
    int64_t bd[2] = {D, 2 * G * H};
    if ((st = check_shape(c, b, "B", 2, bd, g->dtype))) return st;
  }
  if (sl) {
    if (sl->dtype != KILN_DTYPE_INT32 && sl->dtype != KILN_DTYPE_INT64)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "sequence_lens must be int32 or int64");
    if (sl->rank != 1 || sl->dims[0] != B)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "sequence_lens must have shape [%lld]",
                        (long long)B);
  }
  int64_t hd[3] = {D, B, H};
  if (g->layout) hd[0] = B, hd[1] = D;
  if (h0 && (st = check_shape(c, h0, "initial_h", 3, hd, g->dtype))) return st;
  if (kind == CELL_LSTM) {
    const kiln_tensor *c0 = in_at(c, 6), *p = in_at(c, 7);
    if (c0 && (st = check_shape(c, c0, "initial_c", 3, hd, g->dtype))) return st;
    int64_t pd[2] = {D, 3 * H};
    if (p && (st = check_shape(c, p, "P", 2, pd, g->dtype))) return st;
    g->input_forget = kiln__attr_int(n, "input_forget", 0) != 0;
  }
  if (kind == CELL_GRU) g->lbr = kiln__attr_int(n, "linear_before_reset", 0) != 0;

  const kiln__attr *clip = kiln__attr_find(n, "clip");
  if (clip) {
    g->has_clip = true;
    g->clip = clip->f;
    if (!(g->clip >= 0.0f))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "clip must be non-negative");
  }

  /* Activations: defaults, or the attribute's list (one set, or one per direction). */
  static const act_kind defaults[3][MAX_ACTS] = {
      {ACT_TANH}, {ACT_SIGMOID, ACT_TANH}, {ACT_SIGMOID, ACT_TANH, ACT_TANH}};
  for (int d = 0; d < g->dirs; d++)
    for (int i = 0; i < g->n_acts; i++) g->acts[d * g->n_acts + i].kind = defaults[kind][i];
  const kiln__attr *acts = kiln__attr_find(n, "activations");
  if (acts && acts->n) {
    size_t want = (size_t)(g->n_acts * g->dirs);
    if (acts->n != want && acts->n != (size_t)g->n_acts)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "expected %zu activations, got %zu",
                        want, acts->n);
    const float *alpha = NULL, *beta = NULL;
    size_t n_alpha = kiln__attr_floats(n, "activation_alpha", &alpha);
    size_t n_beta = kiln__attr_floats(n, "activation_beta", &beta);
    size_t ia = 0, ib = 0;
    for (size_t i = 0; i < want; i++) {
      const char *name = acts->strings[i % acts->n];
      size_t k = 0;
      while (k < KILN__ARRAY_LEN(act_table) && !ieq(act_table[k].name, name)) k++;
      if (k == KILN__ARRAY_LEN(act_table))
        return kiln__fail(c->err, KILN_UNSUPPORTED, "unknown activation '%s'", name);
      act_fn *f = &g->acts[i];
      f->kind = act_table[k].kind;
      f->alpha = act_table[k].alpha;
      f->beta = act_table[k].beta;
      /* The alpha / beta lists hold values only for the activations that take them. When one
         set of activations serves both directions, its values are reused for the second. */
      if (i == (size_t)g->n_acts && acts->n == (size_t)g->n_acts) ia = ib = 0;
      if (act_table[k].has_alpha && ia < n_alpha) f->alpha = alpha[ia++];
      if (act_table[k].has_beta && ib < n_beta) f->beta = beta[ib++];
    }
  }
  return KILN_OK;
}

static kiln_status infer_common(kiln__kctx *c, cell_kind kind) {
  rnn_cfg g;
  kiln_status st = parse_cfg(c, kind, &g);
  if (st) return st;
  int64_t S = (int64_t)g.seq, B = (int64_t)g.batch, H = (int64_t)g.hidden, D = g.dirs;
  kiln_tensor *y = out_at(c, 0), *yh = out_at(c, 1), *yc = out_at(c, 2);
  if (y) {
    int64_t d0[4] = {S, D, B, H}, d1[4] = {B, S, D, H};
    kiln__set_shape(y, g.dtype, 4, g.layout ? d1 : d0);
  }
  int64_t s0[3] = {D, B, H}, s1[3] = {B, D, H};
  if (yh) kiln__set_shape(yh, g.dtype, 3, g.layout ? s1 : s0);
  if (yc) {
    if (kind != CELL_LSTM)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "too many outputs");
    kiln__set_shape(yc, g.dtype, 3, g.layout ? s1 : s0);
  }
  return KILN_OK;
}

/* Rounds a float count up to a whole 64-byte line so every buffer stays aligned. */
static size_t take(size_t *off, size_t floats) {
  size_t at = *off;
  *off += (floats + 15) & ~(size_t)15;
  return at;
}

static void plan_mem(const kiln__kctx *c, const rnn_cfg *g, rnn_mem *m) {
  size_t off = 0, GH = (size_t)g->gates * g->hidden, BH = g->batch * g->hidden;
  memset(m, 0, sizeof *m);
  m->xw = take(&off, g->seq * g->batch * GH);
  m->gates = take(&off, g->batch * GH);
  m->h = take(&off, BH);
  m->c = take(&off, BH);
  m->tmp = take(&off, BH);
  m->lens = take(&off, 2 * g->batch);
  if (g->dtype != KILN_DTYPE_FLOAT) {
    size_t D = (size_t)g->dirs;
    m->x = take(&off, g->seq * g->batch * g->input);
    m->w = take(&off, D * GH * g->input);
    m->r = take(&off, D * GH * g->hidden);
    if (in_at(c, 3)) m->b = take(&off, D * 2 * GH);
    if (g->kind == CELL_LSTM && in_at(c, 7)) m->p = take(&off, D * 3 * g->hidden);
    if (in_at(c, 5)) m->h0 = take(&off, D * BH);
    if (g->kind == CELL_LSTM && in_at(c, 6)) m->c0 = take(&off, D * BH);
    if (out_at(c, 0)) m->y = take(&off, g->seq * D * BH);
    if (out_at(c, 1)) m->yh = take(&off, D * BH);
    if (out_at(c, 2)) m->yc = take(&off, D * BH);
  }
  m->total = off;
}

static size_t scratch_common(const kiln__kctx *c, cell_kind kind) {
  rnn_cfg g;
  kiln_error scratch_err;
  kiln__kctx cc = *c;
  cc.err = &scratch_err;
  if (parse_cfg(&cc, kind, &g)) return 0; /* run() reports the error */
  rnn_mem m;
  plan_mem(c, &g, &m);
  return m.total * sizeof(float);
}

static inline float clipf(float v, const rnn_cfg *g) {
  if (!g->has_clip) return v;
  return v < -g->clip ? -g->clip : v > g->clip ? g->clip : v;
}

static inline float act(const act_fn *f, float x) {
  switch (f->kind) {
    case ACT_RELU: return x > 0.0f ? x : 0.0f;
    case ACT_TANH: return tanhf(x);
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case ACT_AFFINE: return f->alpha * x + f->beta;
    case ACT_LEAKYRELU: return x >= 0.0f ? x : f->alpha * x;
    case ACT_THRESHOLDEDRELU: return x > f->alpha ? x : 0.0f;
    case ACT_SCALEDTANH: return f->alpha * tanhf(f->beta * x);
    case ACT_HARDSIGMOID: {
      float v = f->alpha * x + f->beta;
      return v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
    }
    case ACT_ELU: return x >= 0.0f ? x : f->alpha * (expf(x) - 1.0f);
    case ACT_SOFTSIGN: return x / (1.0f + fabsf(x));
    case ACT_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
  }
  return x;
}

/* Float32 views of every operand (the tensors' own data, or converted scratch copies). */
typedef struct rnn_io {
  const float *x, *w, *r, *b, *p, *h0, *c0;
  float *y, *yh, *yc;
} rnn_io;

static const float *as_f32(const kiln_tensor *t, float *conv) {
  if (!t) return NULL;
  if (t->dtype == KILN_DTYPE_FLOAT) return (const float *)t->data;
  size_t n = kiln_tensor_count(t);
  for (size_t i = 0; i < n; i++) conv[i] = (float)kiln__load_f64(t->data, t->dtype, i);
  return conv;
}

/* Row of xw for time t of batch entry b. */
static inline size_t x_row(const rnn_cfg *g, size_t t, size_t b) {
  return g->layout ? b * g->seq + t : t * g->batch + b;
}

/* Offset of Y[t, d, b, :]. */
static inline size_t y_off(const rnn_cfg *g, size_t t, size_t d, size_t b) {
  size_t D = (size_t)g->dirs;
  return (g->layout ? (b * g->seq + t) * D + d : (t * D + d) * g->batch + b) * g->hidden;
}

/* Offset of Y_h[d, b, :] (also initial_h, initial_c, Y_c). */
static inline size_t s_off(const rnn_cfg *g, size_t d, size_t b) {
  return (g->layout ? b * (size_t)g->dirs + d : d * g->batch + b) * g->hidden;
}

/* One direction over the whole sequence. */
static void run_direction(const kiln__kctx *c, const rnn_cfg *g, const rnn_io *io,
                          const int64_t *lens, size_t d, bool reverse, float *base,
                          const rnn_mem *m) {
  const size_t H = g->hidden, I = g->input, B = g->batch, S = g->seq;
  const size_t GH = (size_t)g->gates * H;
  const float *W = io->w + d * GH * I, *R = io->r + d * GH * H;
  const float *bias = io->b ? io->b + d * 2 * GH : NULL;
  const float *P = io->p ? io->p + d * 3 * H : NULL;
  const act_fn *af = &g->acts[d * (size_t)g->n_acts];
  float *xw = base + m->xw, *gates = base + m->gates, *h = base + m->h, *cs = base + m->c,
        *tmp = base + m->tmp;

  /* Input projection of every step, plus the state-independent biases. */
  kiln__sgemm(c->pool, false, true, S * B, GH, I, 1.0f, io->x, I, W, I, 0.0f, xw, GH);
  if (bias) {
    /* Wb for every gate; Rb too, except GRU's hidden gate whose Rbh may be scaled by r. */
    size_t rb_end = g->kind == CELL_GRU ? 2 * H : GH;
    for (size_t row = 0; row < S * B; row++) {
      float *xr = xw + row * GH;
      for (size_t j = 0; j < GH; j++) xr[j] += bias[j];
      for (size_t j = 0; j < rb_end; j++) xr[j] += bias[GH + j];
    }
  }
  const float *rbh = bias && g->kind == CELL_GRU ? bias + GH + 2 * H : NULL;

  for (size_t b = 0; b < B; b++) {
    if (io->h0) memcpy(h + b * H, io->h0 + s_off(g, d, b), H * sizeof(float));
    else memset(h + b * H, 0, H * sizeof(float));
    if (g->kind == CELL_LSTM) {
      if (io->c0) memcpy(cs + b * H, io->c0 + s_off(g, d, b), H * sizeof(float));
      else memset(cs + b * H, 0, H * sizeof(float));
    }
  }

  for (size_t s = 0; s < S; s++) {
    /* Recurrent projection. GRU without linear_before_reset needs r first for its third gate. */
    size_t n_rec = g->kind == CELL_GRU && !g->lbr ? 2 * H : GH;
    kiln__sgemm(c->pool, false, true, B, n_rec, H, 1.0f, h, H, R, H, 0.0f, gates, GH);
    for (size_t b = 0; b < B; b++) {
      size_t len = lens ? (size_t)lens[b] : S;
      if (s >= len) continue;
      size_t t = reverse ? len - 1 - s : s;
      const float *xg = xw + x_row(g, t, b) * GH;
      float *hg = gates + b * GH, *hb = h + b * H;
      if (g->kind == CELL_RNN) {
        for (size_t j = 0; j < H; j++) hb[j] = act(&af[0], clipf(xg[j] + hg[j], g));
      } else if (g->kind == CELL_GRU) {
        /* z and r, kept in the gate buffer. */
        for (size_t j = 0; j < 2 * H; j++) hg[j] = act(&af[0], clipf(xg[j] + hg[j], g));
        if (g->lbr) {
          const float *z = hg, *r = hg + H, *rh_ = hg + 2 * H, *xh = xg + 2 * H;
          for (size_t j = 0; j < H; j++) {
            float hh = act(&af[1], clipf(xh[j] + r[j] * (rh_[j] + (rbh ? rbh[j] : 0.0f)), g));
            hb[j] = (1.0f - z[j]) * hh + z[j] * hb[j];
          }
        } else {
          for (size_t j = 0; j < H; j++) tmp[b * H + j] = hg[H + j] * hb[j];
        }
      } else {
        const float *pi = P, *po = P ? P + H : NULL, *pf = P ? P + 2 * H : NULL;
        float *cb = cs + b * H;
        for (size_t j = 0; j < H; j++) {
          float gi = xg[j] + hg[j], go = xg[H + j] + hg[H + j];
          float gf = xg[2 * H + j] + hg[2 * H + j], gc = xg[3 * H + j] + hg[3 * H + j];
          float c_prev = cb[j];
          float i_ = act(&af[0], clipf(gi + (pi ? pi[j] * c_prev : 0.0f), g));
          float f_ = g->input_forget ? 1.0f - i_
                                     : act(&af[0], clipf(gf + (pf ? pf[j] * c_prev : 0.0f), g));
          float c_ = act(&af[1], clipf(gc, g));
          float c_new = f_ * c_prev + i_ * c_;
          float o_ = act(&af[0], clipf(go + (po ? po[j] * c_new : 0.0f), g));
          cb[j] = c_new;
          hb[j] = o_ * act(&af[2], c_new);
        }
      }
    }
    if (g->kind == CELL_GRU && !g->lbr) {
      /* Hidden gate: R_h (r . h), for the batch entries still running. */
      for (size_t b = 0; b < B; b++)
        if (lens && s >= (size_t)lens[b]) memset(tmp + b * H, 0, H * sizeof(float));
      kiln__sgemm(c->pool, false, true, B, H, H, 1.0f, tmp, H, R + 2 * H * H, H, 0.0f,
                  gates + 2 * H, GH);
      for (size_t b = 0; b < B; b++) {
        size_t len = lens ? (size_t)lens[b] : S;
        if (s >= len) continue;
        size_t t = reverse ? len - 1 - s : s;
        const float *xh = xw + x_row(g, t, b) * GH + 2 * H;
        const float *hg = gates + b * GH, *z = hg;
        float *hb = h + b * H;
        for (size_t j = 0; j < H; j++) {
          float hh = act(&af[1], clipf(xh[j] + hg[2 * H + j] + (rbh ? rbh[j] : 0.0f), g));
          hb[j] = (1.0f - z[j]) * hh + z[j] * hb[j];
        }
      }
    }
    if (io->y) {
      for (size_t b = 0; b < B; b++) {
        size_t len = lens ? (size_t)lens[b] : S;
        if (s >= len) continue;
        size_t t = reverse ? len - 1 - s : s;
        memcpy(io->y + y_off(g, t, d, b), h + b * H, H * sizeof(float));
      }
    }
  }

  for (size_t b = 0; b < B; b++) {
    size_t len = lens ? (size_t)lens[b] : S;
    if (io->y)
      for (size_t t = len; t < S; t++) memset(io->y + y_off(g, t, d, b), 0, H * sizeof(float));
    if (io->yh) memcpy(io->yh + s_off(g, d, b), h + b * H, H * sizeof(float));
    if (io->yc) memcpy(io->yc + s_off(g, d, b), cs + b * H, H * sizeof(float));
  }
}

static void store_out(kiln_tensor *t, const float *src) {
  if (!t || t->dtype == KILN_DTYPE_FLOAT) return;
  size_t n = kiln_tensor_count(t);
  for (size_t i = 0; i < n; i++) kiln__store_f64(t->data, t->dtype, i, (double)src[i]);
}

static kiln_status run_common(kiln__kctx *c, cell_kind kind) {
  rnn_cfg g;
  kiln_status st = parse_cfg(c, kind, &g);
  if (st) return st;
  rnn_mem m;
  plan_mem(c, &g, &m);
  if (c->scratch_bytes < m.total * sizeof(float) || (m.total && !c->scratch))
    return kiln__fail(c->err, KILN_INTERNAL, "scratch too small");
  float *base = (float *)c->scratch;

  const kiln_tensor *sl = in_at(c, 4);
  int64_t *lens = NULL;
  if (sl) {
    lens = (int64_t *)(base + m.lens);
    for (size_t b = 0; b < g.batch; b++) {
      int64_t v = kiln__load_i64(sl->data, sl->dtype, b);
      if (v < 0 || (uint64_t)v > g.seq)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "sequence_lens[%zu] = %lld is outside [0, %zu]", b, (long long)v,
                          g.seq);
      lens[b] = v;
    }
  }

  rnn_io io;
  memset(&io, 0, sizeof io);
  bool conv = g.dtype != KILN_DTYPE_FLOAT;
  io.x = as_f32(in_at(c, 0), base + m.x);
  io.w = as_f32(in_at(c, 1), base + m.w);
  io.r = as_f32(in_at(c, 2), base + m.r);
  io.b = as_f32(in_at(c, 3), base + m.b);
  io.h0 = as_f32(in_at(c, 5), base + m.h0);
  if (kind == CELL_LSTM) {
    io.c0 = as_f32(in_at(c, 6), base + m.c0);
    io.p = as_f32(in_at(c, 7), base + m.p);
  }
  kiln_tensor *y = out_at(c, 0), *yh = out_at(c, 1), *yc = out_at(c, 2);
  if (y) io.y = conv ? base + m.y : (float *)y->data;
  if (yh) io.yh = conv ? base + m.yh : (float *)yh->data;
  if (yc) io.yc = conv ? base + m.yc : (float *)yc->data;

  for (int d = 0; d < g.dirs; d++)
    run_direction(c, &g, &io, lens, (size_t)d, g.reverse || d == 1, base, &m);

  if (conv) {
    store_out(y, io.y);
    store_out(yh, io.yh);
    store_out(yc, io.yc);
  }
  return KILN_OK;
}

static kiln_status infer_rnn(kiln__kctx *c) { return infer_common(c, CELL_RNN); }
static kiln_status infer_gru(kiln__kctx *c) { return infer_common(c, CELL_GRU); }
static kiln_status infer_lstm(kiln__kctx *c) { return infer_common(c, CELL_LSTM); }
static size_t scratch_rnn(const kiln__kctx *c) { return scratch_common(c, CELL_RNN); }
static size_t scratch_gru(const kiln__kctx *c) { return scratch_common(c, CELL_GRU); }
static size_t scratch_lstm(const kiln__kctx *c) { return scratch_common(c, CELL_LSTM); }
static kiln_status run_rnn(kiln__kctx *c) { return run_common(c, CELL_RNN); }
static kiln_status run_gru(kiln__kctx *c) { return run_common(c, CELL_GRU); }
static kiln_status run_lstm(kiln__kctx *c) { return run_common(c, CELL_LSTM); }

const kiln__op kiln__ops_rnn[] = {
    {"", "RNN", infer_rnn, run_rnn, scratch_rnn, 0, 3, 6},
    {"", "GRU", infer_gru, run_gru, scratch_gru, 0, 3, 6},
    {"", "LSTM", infer_lstm, run_lstm, scratch_lstm, 0, 3, 8},
    {0},
};
