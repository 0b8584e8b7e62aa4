/* Status names and error messages. */
#include "core/common.h"

#include <stdio.h>

static const char *const status_names[] = {
#define KILN_X_(name, str) str,
    KILN_STATUS_LIST(KILN_X_)
#undef KILN_X_
};

const char *kiln_status_str(kiln_status st) {
  if ((unsigned)st < KILN__ARRAY_LEN(status_names)) return status_names[st];
  return "unknown status";
}

kiln_status kiln__fail(kiln_error *err, kiln_status st, const char *fmt, ...) {
  if (err) {
    err->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
  }
  return st;
}

void kiln__err_prefix(kiln_error *err, const char *fmt, ...) {
  if (!err) return;
  char prefix[256], old[sizeof err->message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, err->message, sizeof old);
  if (snprintf(err->message, sizeof err->message, "%s: %s", prefix, old) < 0) err->message[0] = 0;
}
