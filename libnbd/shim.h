#ifndef QCDP_LIBNBD_SHIM_H
#define QCDP_LIBNBD_SHIM_H

#include <stdint.h>
#include <stdlib.h>
#include <libnbd.h>

// qcdp_block_status runs a block status request whose extents go to the Go
// callback registered under handle (a cgo.Handle).
int qcdp_block_status(struct nbd_handle *h, uint64_t count, uint64_t offset,
                      uintptr_t handle, uint32_t flags);

#endif
