#include "shim.h"
#include "_cgo_export.h"

#ifdef LIBNBD_HAVE_NBD_BLOCK_STATUS_64
static int extent64(void *user_data, const char *metacontext, uint64_t offset,
                    nbd_extent *entries, size_t nr_entries, int *error) {
  // nbd_extent is { uint64_t length; uint64_t flags; }: pairs of uint64.
  return qcdpExtent64((uintptr_t)user_data, (char *)metacontext, offset,
                      (uint64_t *)entries, nr_entries, error);
}

int qcdp_block_status(struct nbd_handle *h, uint64_t count, uint64_t offset,
                      uintptr_t handle, uint32_t flags) {
  nbd_extent64_callback cb = {
      .callback = extent64, .user_data = (void *)handle, .free = NULL};
  return nbd_block_status_64(h, count, offset, cb, flags);
}
#else
static int extent32(void *user_data, const char *metacontext, uint64_t offset,
                    uint32_t *entries, size_t nr_entries, int *error) {
  return qcdpExtent32((uintptr_t)user_data, (char *)metacontext, offset,
                      entries, nr_entries, error);
}

int qcdp_block_status(struct nbd_handle *h, uint64_t count, uint64_t offset,
                      uintptr_t handle, uint32_t flags) {
  nbd_extent_callback cb = {
      .callback = extent32, .user_data = (void *)handle, .free = NULL};
  return nbd_block_status(h, count, offset, cb, flags);
}
#endif
