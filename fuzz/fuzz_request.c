/* libFuzzer target for the server's request decoder (server/codec.c): JSON bodies and the binary
   tensor extension. The first two bytes pick Inference-Header-Content-Length (0 = JSON only). */
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  size_t header_len = (size_t)data[0] | (size_t)data[1] << 8;
  data += 2;
  size -= 2;
  srv_limits lim = srv_limits_default();
  lim.max_tensor_elements = 1u << 16; /* keep allocations small under ASan */
  srv_infer_req r;
  kiln_error err;
  if (srv_decode_infer(data, size, header_len, &lim, &r, &err) == KILN_OK) srv_infer_req_free(&r);
  return 0;
}
