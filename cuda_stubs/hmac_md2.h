/* MD2 (RFC 1319) and HMAC-MD2 (RFC 2104): 16-byte block, 16-byte digest. */
#ifndef CUVISOR_HMAC_MD2_H
#define CUVISOR_HMAC_MD2_H

#include <stddef.h>

void fg_md2(const unsigned char *msg, size_t len, unsigned char out[16]);
void fg_hmac_md2(const unsigned char *key, size_t key_len, const unsigned char *msg, size_t len, unsigned char out[16]);

#endif /* CUVISOR_HMAC_MD2_H */
